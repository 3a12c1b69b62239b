"""What the Balcão processes agree on: NATS subjects, stream names and payloads.

Dependency-free on purpose: the bot, the server and the tools all import it, and
none of them may drag another's dependencies in.
"""
