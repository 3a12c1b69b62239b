"""Everything the server says on Telegram goes out through the outbound stream.

Replies to inbound messages are published directly: the inbound message stays
unacknowledged until its reply is published, so JetStream itself redelivers on a
failure. Messages with nothing upstream to redeliver them (goodbyes, agent
replies, import announcements) pass through the MongoDB outbox first; so do
the live events with nothing upstream (a session or an import finished), which
the same relay rounds publish (`server/eventpublishing.py`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bson import ObjectId
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from pymongo.errors import PyMongoError

from contract import clock
from contract.messaging import OUTBOUND_SUBJECT, OutboundMessage
from runtime import jetstream
from runtime.failpoints import failpoint
from runtime.retry import RetryPolicy
from server import eventpublishing
from server.database import Database
from server.metrics import OUTBOUND_PUBLISHED
from server.models.outbox import OutboxEntry

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0
# While MongoDB is away each round already waits out pymongo's server selection;
# this caps the extra pause between rounds.
MAX_RELAY_BACKOFF = 30.0


class Outbound:
    def __init__(self, js: JetStreamContext, db: Database, relay_interval: float = 1.0) -> None:
        self._js = js
        self._db = db
        self._relay_interval = relay_interval
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def js(self) -> JetStreamContext:
        return self._js

    async def publish(self, message: OutboundMessage) -> None:
        """Publish and wait for JetStream's acknowledgement (raises on failure)."""
        ack = await jetstream.publish_through_election(
            self._js,
            OUTBOUND_SUBJECT,
            message.to_bytes(),
            timeout=PUBLISH_TIMEOUT,
            headers={"Nats-Msg-Id": message.key},
        )
        if not ack.duplicate:
            OUTBOUND_PUBLISHED.labels(kind=message.kind).inc()

    async def promise(self, message: OutboundMessage) -> None:
        """Keep the message in the outbox, then try to hand it to JetStream now."""
        await self._db.run(_keep, message)
        self._wake.set()

    async def promise_event(
        self,
        body: dict[str, Any],
        key: str,
        *,
        after_session_gone: ObjectId | None = None,
        chat_id: str | None = None,
        files: list[str] | None = None,
    ) -> None:
        """Keep a live event (`server/eventpublishing.py`), then wake the relay to publish it."""
        await self._db.run(eventpublishing.promise, body, key, after_session_gone, chat_id, files)
        self._wake.set()

    def wake(self) -> None:
        """Relay now: a promise may have become ready (the session it waited for is gone)."""
        self._wake.set()

    async def relay_forever(self) -> None:
        """Publish outbox entries until `stop()`; entries leave only once published.

        The round in hand is finished before returning, and one more round runs
        after `stop()`, for what the requests drained at shutdown promised.
        """
        # Each round MongoDB failed in a row doubles the pause, from twice the interval.
        backoff = RetryPolicy(first=2 * self._relay_interval, cap=MAX_RELAY_BACKOFF)
        failed = 0
        while True:
            stopping = self._stopping
            try:
                await self.relay_once()
                failed = 0
            except PyMongoError as exc:
                log.warning("outbox relay paused, MongoDB unavailable: %s", exc)
                if self._stopping:
                    return  # a last round would only wait out server selection again
                failed += 1
            except Exception:  # keep relaying whatever one round hit
                log.exception("outbox relay round failed")
            if stopping:
                return
            pause = backoff.delay(failed) if failed else self._relay_interval
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

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
            failpoint("outbox.after_publish_before_forget")
            await self._db.run(_forget, published)
        return len(published) + await eventpublishing.relay_promised(self._js, self._db, limit)


def _keep(message: OutboundMessage) -> None:
    OutboxEntry.keep(message, clock.now())


def _pending(limit: int) -> list[OutboundMessage]:
    return OutboxEntry.objects.pending(limit)


def _forget(keys: list[str]) -> None:
    OutboxEntry.objects.forget(keys)
