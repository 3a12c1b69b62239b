"""Every Prometheus metric the server exposes, in one place; `/metrics` serves them.

Each replica exposes its own counts; Prometheus sums them across replicas.
Label values are a small fixed set (kinds, outcomes, route names), never user
input or raw paths, so the number of series stays bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Intake runs in batches of up to a few hundred messages, stored with bulk writes:
# tens of milliseconds normally, seconds when MongoDB is slow or a retry was needed.
INTAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

INTAKE_LATENCY = Histogram(
    "balcao_intake_latency_seconds",
    "From an inbound message entering JetStream (the bot relayed it) to it being stored "
    "and its reply published; redeliveries count from the first publish",
    buckets=INTAKE_BUCKETS,
)
MESSAGES_STORED = Counter(
    "balcao_messages_stored_total",
    "Inbound messages stored; a redelivered message already stored is not counted again",
)
INTAKE_RETRIES = Counter(
    "balcao_intake_retries_total",
    "Inbound messages handed back to JetStream for redelivery, by cause",
    ["cause"],  # mongodb, nats, error
)
OUTBOUND_PUBLISHED = Counter(
    "balcao_outbound_published_total",
    "Messages JetStream accepted on the outbound stream, by kind; duplicates it dropped "
    "(same Nats-Msg-Id) are not counted",
    ["kind"],  # reply, goodbye, announcement...
)
IMPORT_RECORDS = Counter(
    "balcao_import_records_total",
    "Session records read by imports, by outcome",
    # created, updated, unchanged, rejected: one increment per record read, so the
    # outcomes add up to the records in the files.
    ["outcome"],
)
HTTP_REQUEST_DURATION = Histogram(
    "balcao_http_request_duration_seconds",
    "HTTP request latency by method, route (its name or pattern, never the raw path) and status",
    ["method", "route", "status"],
    buckets=HTTP_BUCKETS,
)
STREAM_BYTES = Gauge(
    "balcao_stream_bytes",
    "Bytes a JetStream stream holds, read from stream info every STREAM_WATCH_INTERVAL",
    ["stream"],
)
STREAM_MESSAGES = Gauge(
    "balcao_stream_messages",
    "Messages a JetStream stream holds",
    ["stream"],
)
STREAM_FILL_RATIO = Gauge(
    "balcao_stream_fill_ratio",
    "Bytes held over the stream's max_bytes (0 to 1); absent for a stream without a cap. "
    "A full work queue refuses new messages: alert well before 1",
    ["stream"],
)

HTTP_REFUSED = Counter(
    "balcao_http_refused_total",
    "Connections and requests refused before any handler ran, by reason",
    # runtime.httpserver.REFUSAL_REASONS, each present from the start (server.handlers.metrics):
    # this module stays free of Tornado, for the import machinery that counts here too.
    ["reason"],
)
READINESS_PINGS = Counter(
    "balcao_readiness_pings_total",
    "MongoDB pings made to answer /ready; callers within a second share one",
)

for cause in ("mongodb", "nats", "error"):
    INTAKE_RETRIES.labels(cause=cause)
OUTBOUND_PUBLISHED.labels(kind="reply")

# The live event stream (GET /v1/events).
EVENTS_PUBLISHED = Counter(
    "balcao_events_published_total",
    "Events this replica stored in BALCAO_EVENTS, by type; duplicates JetStream dropped are not counted",
    ["type"],
)
EVENT_CLIENTS = Gauge(
    "balcao_event_clients",
    "Clients connected to the event stream on this replica, by transport",
    ["transport"],  # websocket, sse
)
EVENTS_REFUSED = Counter(
    "balcao_events_refused_total",
    "Stored events this replica sent to no client: unreadable, of another type than their "
    "subject's, or a message.sent not as the bot publishes it (one count per replica and reading)",
)
EVENTS_SENT = Counter(
    "balcao_events_sent_total",
    "Events written to connected clients (one per event and client)",
)
# Handing one event to every client is a loop of non-blocking writes: well
# under a millisecond for a hundred clients unless the event loop is starved.
EVENT_FANOUT_SECONDS = Histogram(
    "balcao_event_fanout_seconds",
    "Time to hand one event from this replica's live subscription to every connected client",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
EVENT_CLIENTS_DROPPED = Counter(
    "balcao_event_clients_dropped_total",
    "Event-stream clients this replica closed, by reason",
    ["reason"],  # slow, gone (resume point no longer kept)
)
EVENT_CATCH_UPS = Counter(
    "balcao_event_catch_ups_total",
    "Connections resumed with `since` that finished catching up, by outcome: joined this "
    "replica's live subscription, or stayed on their own consumer (events kept arriving "
    "faster than the catch-up ended)",
    ["outcome"],  # live, own-consumer
)
for transport in ("websocket", "sse"):
    EVENT_CLIENTS.labels(transport=transport)
for outcome in ("live", "own-consumer"):
    EVENT_CATCH_UPS.labels(outcome=outcome)
for reason in ("slow", "gone"):
    EVENT_CLIENTS_DROPPED.labels(reason=reason)
