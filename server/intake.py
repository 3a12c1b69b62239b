"""The JetStream consumer that turns contacts' messages into stored, answered messages.

A durable pull consumer shared by every server replica: JetStream hands each
message to one of them, and an unacknowledged message goes to another after
the ack wait (`INTAKE_ACK_WAIT`, by default `ACK_WAIT`). A message is
acknowledged only after it is stored and its reply published, so a crash
anywhere in between means redelivery, never loss; storage is idempotent, so
redelivery never means a duplicate.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from pymongo.errors import PyMongoError

from contract import clock
from contract.messaging import (
    INBOUND_CONSUMER,
    INBOUND_STREAM,
    INBOUND_SUBJECT,
    InboundMessage,
    OutboundMessage,
)
from runtime import jetstream
from runtime.failpoints import failpoint
from runtime.jetstream import Received
from runtime.retry import RetryPolicy
from server import conversations, eventpublishing
from server.database import Database
from server.metrics import INTAKE_LATENCY, INTAKE_RETRIES, MESSAGES_STORED
from server.outbound import Outbound

log = logging.getLogger(__name__)

ACK_WAIT = 30.0
RETRY_DELAY = 1.0
# A batch that failed is offered again after RETRY_DELAY, doubling with each
# delivery up to this, so a long MongoDB outage costs a few attempts a minute,
# not a hot loop, and intake resumes within this long after MongoDB returns.
MAX_RETRY_DELAY = 15.0


class Intake:
    def __init__(
        self,
        js: JetStreamContext,
        db: Database,
        outbound: Outbound,
        reply_text: str,
        batch_size: int = 1000,
        ack_wait: float = ACK_WAIT,
    ) -> None:
        self._js = js
        # Threads of its own: slow API requests never hold a contact's message up.
        self._db = db.intake
        self._outbound = outbound
        self._reply_text = reply_text
        self._batch_size = batch_size
        self._ack_wait = ack_wait
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until `stop()`; the batch in hand is finished before returning."""
        await jetstream.consume(
            self._js,
            stream=INBOUND_STREAM,
            subject=INBOUND_SUBJECT,
            durable=INBOUND_CONSUMER,
            batch_size=self._batch_size,
            ack_wait=self._ack_wait,
            handle=self.handle,
            stopping=self._stopping,
            what="intake",
        )

    def stop(self) -> None:
        self._stopping.set()

    async def handle(self, batch: list[Received[InboundMessage]]) -> None:
        """Store a batch the consume loop read (the undecodable it dead-lettered), answer, acknowledge."""
        try:
            stored = await self._db.run(
                conversations.store_inbound, [inbound for _, inbound in batch if not inbound.is_edit]
            )
            MESSAGES_STORED.inc(sum(item.inserted for item in stored.messages))
            await self._publish(stored)
            # Edits after the batch's new messages, which they may edit; never answered.
            edits = [inbound for _, inbound in batch if inbound.is_edit]
            if edits:
                edited = await self._db.run(conversations.apply_edits, edits)
                await eventpublishing.publish_edited(self._js, edited)
        except Exception as exc:  # nothing unstored is acknowledged, whatever failed
            await self._retry_later(batch, exc)
            return
        failpoint("server.intake.before_ack")
        for msg, _ in batch:
            await msg.ack()
        now = clock.now()
        for msg, _ in batch:
            # The stream's own timestamp: when the bot's publish was stored.
            INTAKE_LATENCY.observe(max((now - msg.metadata.timestamp).total_seconds(), 0.0))

    async def _retry_later(self, batch: list[Received[InboundMessage]], exc: Exception) -> None:
        if isinstance(exc, PyMongoError):
            cause = "mongodb"
            log.warning("inbound batch of %d left for redelivery, MongoDB: %s", len(batch), exc)
        elif isinstance(exc, (NatsError, asyncio.TimeoutError)):
            cause = "nats"
            log.warning("inbound batch of %d left for redelivery, NATS: %r", len(batch), exc)
        else:
            cause = "error"
            log.error("inbound batch of %d left for redelivery", len(batch), exc_info=exc)
        INTAKE_RETRIES.labels(cause=cause).inc(len(batch))
        for msg, _ in batch:
            await msg.nak(delay=retry_delay(msg.metadata.num_delivered))

    async def _publish(self, stored: conversations.StoredBatch) -> None:
        """The batch's events, then its replies, each kind issued at once; raises if one failed.

        The replies wait for every event to be stored: the bot reports a reply
        it sent as `message.sent`, which must never reach an agent before the
        `message.received` it answers. Issuing both kinds together would keep
        that order only while no publish is retried; one retried through a
        stream leader election would land after the replies. The cost is one
        round trip to JetStream per batch, not per message.
        """
        events = [
            asyncio.ensure_future(eventpublishing.publish(self._js, body, key))
            for body, key in eventpublishing.received(stored)
        ]
        replies: list[asyncio.Future[None]] = []
        try:
            await asyncio.gather(*events)
            failpoint("server.events.after_published")
            failpoint("server.intake.after_events_published")
            replies = [asyncio.ensure_future(self._outbound.publish(self._reply_to(item))) for item in stored.messages]
            await asyncio.gather(*replies)
        finally:
            # After a failure the rest is not waited for: the batch is tried again whole.
            for task in (*events, *replies):
                task.cancel()
            await asyncio.gather(*events, *replies, return_exceptions=True)

    def _reply_to(self, item: conversations.StoredInbound) -> OutboundMessage:
        return OutboundMessage(
            key=f"reply:{item.key}",
            chat_id=str(item.message.chat_id),
            text=self._reply_text,
            kind="reply",
            meta={
                "session_id": str(item.session_id),
                "platform": item.message.platform,
                "contact_identifier": item.message.contact_identifier,
            },
        )


REDELIVERY = RetryPolicy(first=RETRY_DELAY, cap=MAX_RETRY_DELAY)


def retry_delay(deliveries: int) -> float:
    """Seconds before another try of a message already delivered `deliveries` times."""
    return REDELIVERY.delay(deliveries)
