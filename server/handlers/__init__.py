"""HTTP handlers; each module ends with its own routing table, `default_handlers`."""
