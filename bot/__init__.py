"""Balcão bot: relays contacts' Telegram messages to JetStream and delivers outbound ones."""
