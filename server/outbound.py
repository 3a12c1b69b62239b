"""Everything the server says on Telegram goes out through the outbound stream.

Replies to inbound messages are published directly: the inbound message stays
unacknowledged until its reply is published, so JetStream itself redelivers on a
failure. Messages with nothing upstream to redeliver them (goodbyes, agent
replies, import announcements) pass through the MongoDB outbox first.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from contract.messaging import OUTBOUND_SUBJECT, OutboundMessage
from server.conversations import utcnow
from server.database import Database
from server.models import OutboxEntry

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0


class Outbound:
    def __init__(self, js: JetStreamContext, db: Database, relay_interval: float = 1.0) -> None:
        self._js = js
        self._db = db
        self._relay_interval = relay_interval
        self._wake = asyncio.Event()

    async def publish(self, message: OutboundMessage) -> None:
        """Publish and wait for JetStream's acknowledgement (raises on failure)."""
        await self._js.publish(
            OUTBOUND_SUBJECT,
            message.to_bytes(),
            timeout=PUBLISH_TIMEOUT,
            headers={"Nats-Msg-Id": message.key},
        )

    async def promise(self, message: OutboundMessage) -> None:
        """Keep the message in the outbox, then try to hand it to JetStream now."""
        await self._db.run(_keep, message)
        self._wake.set()

    async def relay_forever(self) -> None:
        """Publish outbox entries until cancelled; entries leave only once published."""
        while True:
            try:
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep relaying whatever one round hit
                log.exception("outbox relay round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self._relay_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def relay_once(self, limit: int = 500) -> int:
        entries = await self._db.run(_pending, limit)
        published = []
        for entry in entries:
            try:
                await self.publish(entry)
            except (NatsError, asyncio.TimeoutError) as exc:
                log.warning("outbox relay paused, NATS unavailable: %s", exc)
                break
            published.append(entry.key)
        if published:
            await self._db.run(_forget, published)
        return len(published)


def _keep(message: OutboundMessage) -> None:
    OutboxEntry._get_collection().update_one(
        {"key": message.key},
        {"$setOnInsert": {"chat_id": message.chat_id, "text": message.text, "kind": message.kind,
                          "details": message.meta, "created_at": utcnow()}},
        upsert=True,
    )


def _pending(limit: int) -> list[OutboundMessage]:
    found = OutboxEntry._get_collection().find().sort("created_at", 1).limit(limit)
    return [
        OutboundMessage(key=doc["key"], chat_id=doc["chat_id"], text=doc["text"],
                        kind=doc["kind"], meta=doc.get("details") or {})
        for doc in found
    ]


def _forget(keys: list[str]) -> None:
    OutboxEntry._get_collection().delete_many({"key": {"$in": keys}})
