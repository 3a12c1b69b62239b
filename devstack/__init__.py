"""Development and test stack: the real servers Balcão runs against locally, and a fake Telegram."""
