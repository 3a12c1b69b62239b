"""Reporting deliveries to the live event stream (`message.sent`).

Only the bot knows whether Telegram accepted a reply or refused it for good, so
the bot publishes that event itself, through the dependency-free contract, to
BALCAO_EVENTS: no extra hop through the server, and the server's replicas serve
it to their clients like any other event. Its Nats-Msg-Id is the outbound key's,
so a redelivered outbound message reports once. A report that fails is logged
and not retried: the message itself was delivered, and holding up Telegram
deliveries for a live view would be the wrong trade.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from contract import eventstream
from contract.messaging import PLATFORM_TELEGRAM, OutboundMessage

log = logging.getLogger(__name__)

REPORTED_KINDS = ("reply", "agent")
REPORT_TIMEOUT = 2.0


async def report_delivery(js: JetStreamContext, outbound: OutboundMessage, delivery: str) -> None:
    """Publish `message.sent` for a reply to a session's contact; other kinds have no session."""
    session_id = outbound.meta.get("session_id")
    if outbound.kind not in REPORTED_KINDS or not session_id:
        return
    platform = outbound.meta.get("platform") or PLATFORM_TELEGRAM
    body = eventstream.message_sent(
        platform=platform,
        session_id=session_id,
        contact_identifier=outbound.meta.get("contact_identifier") or outbound.chat_id,
        key=outbound.key,
        text=outbound.text,
        kind=outbound.kind,
        delivery=delivery,
    )
    try:
        await js.publish(
            eventstream.subject(eventstream.MESSAGE_SENT, platform, session_id),
            eventstream.to_bytes(body),
            timeout=REPORT_TIMEOUT,
            headers={"Nats-Msg-Id": eventstream.dedup_id(eventstream.MESSAGE_SENT, outbound.key)},
        )
    except (NatsError, asyncio.TimeoutError) as exc:
        log.warning("delivery of %s not reported to the event stream: %r", outbound.kind, exc)
