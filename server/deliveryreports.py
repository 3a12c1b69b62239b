"""What the bot learnt from Telegram that the server keeps: blocked contacts and moved channels.

Only the bot sees Telegram's answers, and it reports these two as events on
BALCAO_EVENTS (`bot/reports.py`): `contact.blocked` when a message to a
session's contact met "bot was blocked by the user", `channel.moved` when a
message to a group went to the supergroup the group became. A durable consumer
shared by every replica reads them back and keeps them in MongoDB: the
session's contact is marked blocked (agent replies are then a 409 until the
contact writes again), and an import whose announcement followed a move says
so in its report (`channel_moved_to`).

Each event is acknowledged once kept, so a crash before means redelivery; both
writes are idempotent. The bot is trusted less than the server, so an event is
checked field by field (`eventstream.bot_event_checked`), and a blocked mark
applies only to a session reached at the chat the event names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from bson import ObjectId
from nats.js import JetStreamContext

from contract import clock, eventstream
from runtime import jetstream
from runtime.jetstream import Received
from server.database import Database
from server.models.imports import ImportJob
from server.models.sessions import Session

log = logging.getLogger(__name__)

DELIVERY_REPORTS_CONSUMER = "server-delivery-reports"
ACK_WAIT = 30.0
BATCH = 100


class DeliveryReports:
    def __init__(self, js: JetStreamContext, db: Database, ack_wait: float = ACK_WAIT) -> None:
        self._js = js
        self._db = db
        self._ack_wait = ack_wait
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until `stop()`; the batch in hand is finished before returning."""
        await jetstream.consume(
            self._js,
            stream=eventstream.EVENTS_STREAM,
            subject=eventstream.filter_subject(eventstream.CONTACT_BLOCKED),
            also=(eventstream.filter_subject(eventstream.CHANNEL_MOVED),),
            durable=DELIVERY_REPORTS_CONSUMER,
            batch_size=BATCH,
            ack_wait=self._ack_wait,
            handle=self.handle,
            stopping=self._stopping,
            what="delivery reports",
        )

    def stop(self) -> None:
        self._stopping.set()

    async def handle(self, batch: list[Received[None]]) -> None:
        """Keep what each report says, then acknowledge it; a failure leaves the rest for redelivery."""
        for msg, _ in batch:
            event = _checked(msg.data)
            if event is None:
                log.warning("a delivery report on %s is not one the bot publishes; ignored", msg.subject)
            else:
                await self._db.run(keep, event)
            await msg.ack()


def _checked(data: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return eventstream.bot_event_checked(body) if isinstance(body, dict) else None


def keep(event: dict[str, Any]) -> None:
    """Mark the blocked contact, or note the move in the import's report."""
    at = clock.parse(event["at"], clock.now())
    if event["type"] == eventstream.CONTACT_BLOCKED:
        marked = Session.mark_contact_blocked(ObjectId(event["session_id"]), event["contact"]["identifier"], at)
        log.info(
            "session %s: contact blocked the bot%s",
            event["session_id"],
            "" if marked else " (not marked: the session is gone, or the contact wrote since)",
        )
    elif event["type"] == eventstream.CHANNEL_MOVED and event.get("import"):
        ImportJob.objects(id=ObjectId(event["import"]["id"]), channel=event["channel"]).update_one(
            set__channel_moved_to=event["moved_to"]
        )
        log.info("import %s: channel %s moved to %s", event["import"]["id"], event["channel"], event["moved_to"])
