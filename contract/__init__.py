"""What the Balcão processes say to each other on the wire: NATS subjects, stream names and payloads.

`messaging` holds the work streams (inbound messages, outbound replies, parked and
dead letters) and their payloads; `events` the live event stream. Standard library
only, on purpose: the bot, the server and the tools all import it, and none of them
may drag another's dependencies in (a test checks it). How a process connects,
declares these streams, logs and stops is in `runtime`.
"""
