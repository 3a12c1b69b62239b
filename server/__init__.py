"""Balcão server: Tornado REST API and the JetStream intake, on MongoDB."""
