"""Balcão command line: import files, list, search and finish sessions over the REST API."""
