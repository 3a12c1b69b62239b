"""What Balcão's processes and tools agree on: NATS subjects, stream names, payloads, the import file format.

`messaging` holds the work streams (inbound messages, outbound replies, parked and
dead letters) and their payloads; `eventstream` the live event stream; `importformat`
the session files (JSON, NDJSON, CSV) and the CLI's chunk envelope, read alike by
the server and the CLI, with CSV's layouts and their reader in `csvlayouts`, the
writers of every format in `importwriter`, and the rules for single values (a
channel, an ObjectId as text, a whole number) in `values`; `clock` the one way
times are taken and written. Standard
library only, on purpose: the bot, the server and the tools all import it, and
none of them may drag another's dependencies in (a test checks it). How a process
connects, declares these streams, logs and stops is in `runtime`.
"""
