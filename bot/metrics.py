"""Every Prometheus metric the bot exposes, in one place.

Served on BOT_METRICS_PORT when it is set: in polling mode the bot has no HTTP
server of its own, so prometheus_client's small threaded one serves /metrics.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, start_http_server

log = logging.getLogger(__name__)

INBOUND_RELAYED = Counter(
    "balcao_bot_inbound_relayed_total",
    "Contacts' text messages JetStream acknowledged (redelivered updates count again)",
)
INBOUND_RELAY_FAILURES = Counter(
    "balcao_bot_inbound_relay_failures_total",
    "Updates not relayed because JetStream did not acknowledge; Telegram delivers them again",
)
OUTBOUND_SENT = Counter(
    "balcao_bot_outbound_sent_total",
    "Outbound messages Telegram accepted, by kind",
    ["kind"],  # reply, goodbye, announcement...
)
OUTBOUND_FAILURES = Counter(
    "balcao_bot_outbound_failures_total",
    "Failed sendMessage calls, by reason; forbidden and bad_request are parked, chat_migrated sent "
    "again to the new chat, the others retried",
    ["reason"],
)
OUTBOUND_PARKED = Counter(
    "balcao_bot_outbound_parked_total",
    "Outbound messages Telegram will never accept, moved to the parked stream, by kind",
    ["kind"],
)
WEBHOOK_REFUSED = Counter(
    "balcao_bot_webhook_refused_total",
    "Webhook calls and connections refused before an update was read, by reason",
    # wrong-secret, and the guarded HTTP server's reasons (too-many-connections, body-too-large...)
    ["reason"],
)

for reason in ("retry_after", "network", "forbidden", "bad_request", "chat_migrated", "file_gone", "other"):
    OUTBOUND_FAILURES.labels(reason=reason)
OUTBOUND_SENT.labels(kind="reply")
OUTBOUND_PARKED.labels(kind="reply")


def serve(port: int) -> None:
    """Serve /metrics on `port`, on every interface (a scraper runs elsewhere)."""
    start_http_server(port)
    log.info("metrics on port %d", port)
