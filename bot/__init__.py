"""Balcão bot: relays contacts' Telegram messages to JetStream and delivers outbound ones."""

import os

# PTB 22 warns on every RetryAfter unless durations are opted in as timedelta,
# which is what bot.relay.retry_seconds expects anyway.
os.environ.setdefault("PTB_TIMEDELTA", "1")
