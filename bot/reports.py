"""Reporting deliveries to the live event stream (`message.sent`, `contact.blocked`, `channel.moved`).

Only the bot knows whether Telegram accepted a reply or refused it for good, so
the bot publishes that event itself, through the dependency-free contract, to
BALCAO_EVENTS: no extra hop through the server, and the server's replicas serve
it to their clients like any other event. Its Nats-Msg-Id is the outbound key's,
so a redelivered outbound message reports once. A `message.sent` that fails is
logged and not retried: the message itself was delivered, and holding up
Telegram deliveries for a live view would be the wrong trade.

`contact.blocked` and `channel.moved` are more than a live view: the server
marks the session's contact blocked, and notes the move in the import's report,
from them. So they raise when JetStream does not take them, before the message
is parked or sent, and the message is tried again later (Telegram refuses it
again, or it goes to the new chat), reporting again under the same id.
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
        await _publish(js, body, eventstream.MESSAGE_SENT, outbound.key)
    except (NatsError, asyncio.TimeoutError) as exc:
        log.warning("delivery of %s not reported to the event stream: %r", outbound.kind, exc)


async def report_blocked(js: JetStreamContext, outbound: OutboundMessage, reason: str) -> None:
    """Publish `contact.blocked` when a reply to a session's contact met "bot was blocked by the user".

    Not for a goodbye: its session is finished, with its events erased.
    """
    session_id = outbound.meta.get("session_id")
    if outbound.kind not in REPORTED_KINDS or not session_id:
        return
    body = eventstream.contact_blocked(
        platform=outbound.meta.get("platform") or PLATFORM_TELEGRAM,
        session_id=session_id,
        contact_identifier=outbound.chat_id,
        key=outbound.key,
        reason=reason,
    )
    await _publish(js, body, eventstream.CONTACT_BLOCKED, outbound.key)


async def report_moved(js: JetStreamContext, outbound: OutboundMessage, moved_to: str) -> None:
    """Publish `channel.moved`: the message to a group went to the supergroup it became."""
    body = eventstream.channel_moved(
        platform=outbound.meta.get("platform") or PLATFORM_TELEGRAM,
        channel=outbound.chat_id,
        moved_to=moved_to,
        import_id=outbound.meta.get("import_id"),
    )
    await _publish(js, body, eventstream.CHANNEL_MOVED, outbound.key)


async def _publish(js: JetStreamContext, body: dict, kind: str, key: str) -> None:
    await js.publish(
        eventstream.subject(kind, body.get("platform"), body.get("session_id")),
        eventstream.to_bytes(body),
        timeout=REPORT_TIMEOUT,
        headers={"Nats-Msg-Id": eventstream.dedup_id(kind, key)},
    )
