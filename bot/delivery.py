"""Delivering the outbound stream to Telegram within its limits.

Messages for one chat go out in order; different chats go out concurrently, and
PTB's AIORateLimiter keeps the whole within Telegram's flood limits (about 30
messages per second overall, 20 per minute per group or channel) and waits out
`retry_after`. A message Telegram will never accept (bot blocked, chat not found)
is parked with a log line instead of being retried forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from enum import Enum

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from telegram import Bot
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.metrics import OUTBOUND_FAILURES, OUTBOUND_PARKED, OUTBOUND_SENT
from bot.relay import retry_seconds
from contract import jetstream
from contract.messaging import (
    DELIVERED_BUCKET,
    OUTBOUND_CONSUMER,
    OUTBOUND_STREAM,
    OUTBOUND_SUBJECT,
    PARKED_SUBJECT,
    OutboundMessage,
    PayloadError,
)

log = logging.getLogger(__name__)

ACK_WAIT = 120.0  # long enough for a rate-limited chat's queue to drain
NETWORK_RETRY_DELAY = 2.0
# A message is retried in place for this long before going back to the stream,
# where its redelivery order relative to the chat's other messages is not kept.
MAX_WAIT_IN_PLACE = 60.0
DELIVERED_TTL = 7 * 24 * 3600


class Outcome(Enum):
    DONE = "done"
    LATER = "later"


class Delivery:
    def __init__(self, bot: Bot, js: JetStreamContext, batch_size: int = 100, *,
                 replicas: int = 1) -> None:
        self._bot = bot
        self._replicas = replicas
        self._js = js
        self._batch_size = batch_size
        self._delivered: KeyValue | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self._delivered = await delivered_bucket(self._js, self._replicas)
        await jetstream.consume(
            self._js, stream=OUTBOUND_STREAM, subject=OUTBOUND_SUBJECT, durable=OUTBOUND_CONSUMER,
            batch_size=self._batch_size, ack_wait=ACK_WAIT, handle=self.deliver_batch,
            stopping=self._stopping, what="delivery")

    def stop(self) -> None:
        self._stopping.set()

    async def deliver_batch(self, messages: list[Msg]) -> None:
        by_chat: dict[str, list[tuple[Msg, OutboundMessage]]] = defaultdict(list)
        for msg in messages:
            try:
                outbound = OutboundMessage.from_bytes(msg.data)
            except PayloadError as exc:
                log.error("outbound message dropped, %s", exc)
                await msg.term()
                continue
            by_chat[outbound.chat_id].append((msg, outbound))
        await asyncio.gather(*(self._deliver_in_order(queue) for queue in by_chat.values()))

    async def _deliver_in_order(self, queue: list[tuple[Msg, OutboundMessage]]) -> None:
        for index, (msg, outbound) in enumerate(queue):
            if self._stopping.is_set():
                # Only sends already in flight finish at shutdown; the rest go back
                # now, rather than after ACK_WAIT, to whichever bot runs next.
                for later, _ in queue[index:]:
                    await later.nak()
                return
            delay = await self._deliver_patiently(msg, outbound)
            if delay is not None:
                for later, _ in queue[index:]:
                    await later.nak(delay=delay)
                return

    async def _deliver_patiently(self, msg: Msg, outbound: OutboundMessage) -> float | None:
        """Retry in place, so the chat's later messages (in this batch and the next) stay
        behind this one; give the message back only after waiting too long in all."""
        waited = 0.0
        while True:
            delay = await self._deliver(msg, outbound)
            if delay is None:
                return None
            if waited + delay > MAX_WAIT_IN_PLACE or self._stopping.is_set():
                return delay
            await msg.in_progress()  # JetStream must not hand it to another bot meanwhile
            await asyncio.sleep(delay)
            waited += delay

    async def _deliver(self, msg: Msg, outbound: OutboundMessage) -> float | None:
        """Send one message; the delay before another try, or None when done with it."""
        marker = delivered_key(outbound.key)
        # Only a redelivery can have been sent before (by a bot that died before
        # acknowledging); first deliveries skip the look-up.
        if msg.metadata.num_delivered > 1 and await self._was_delivered(marker):
            await msg.ack()
            return None
        try:
            await self._bot.send_message(chat_id=chat_ref(outbound.chat_id), text=outbound.text)
        except RetryAfter as exc:
            OUTBOUND_FAILURES.labels(reason="retry_after").inc()
            log.warning("telegram asks to wait %s s before chat %s", exc.retry_after, outbound.chat_id)
            return retry_seconds(exc)
        except (Forbidden, BadRequest) as exc:
            OUTBOUND_FAILURES.labels(reason="forbidden" if isinstance(exc, Forbidden) else "bad_request").inc()
            await self._park(outbound, str(exc))
            await msg.ack()
            return None
        except NetworkError as exc:
            OUTBOUND_FAILURES.labels(reason="network").inc()
            log.warning("sending to chat %s failed, will retry: %s", outbound.chat_id, exc)
            return NETWORK_RETRY_DELAY
        except TelegramError as exc:  # chat migrated, endpoint gone...: not this message's fault
            OUTBOUND_FAILURES.labels(reason="other").inc()
            log.warning("sending to chat %s failed, will retry: %r", outbound.chat_id, exc)
            return NETWORK_RETRY_DELAY
        OUTBOUND_SENT.labels(kind=outbound.kind).inc()
        await self._remember(marker)
        await msg.ack()
        return None

    async def _was_delivered(self, marker: str) -> bool:
        try:
            await self._delivered.get(marker)
            return True
        except KeyNotFoundError:
            return False

    async def _remember(self, marker: str) -> None:
        try:
            await self._delivered.put(marker, b"1")
        except (NatsError, asyncio.TimeoutError) as exc:
            # Sent already; at worst a redelivery repeats it. Never resend on purpose.
            log.warning("delivery marker not saved: %s", exc)

    async def _park(self, outbound: OutboundMessage, reason: str) -> None:
        log.warning("outbound %s to chat %s parked, telegram refused it: %s",
                    outbound.kind, outbound.chat_id, reason)
        parked = OutboundMessage(key=outbound.key, chat_id=outbound.chat_id, text=outbound.text,
                                 kind=outbound.kind, meta={**outbound.meta, "reason": reason})
        await self._js.publish(PARKED_SUBJECT, parked.to_bytes(), headers={"Nats-Msg-Id": outbound.key})
        OUTBOUND_PARKED.labels(kind=outbound.kind).inc()


async def delivered_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The delivered-key store, kept on `replicas` servers like the streams (NATS_REPLICAS)."""
    try:
        bucket = await js.key_value(DELIVERED_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=DELIVERED_BUCKET, ttl=DELIVERED_TTL, replicas=replicas)
    # A key-value bucket is the stream KV_<bucket>; its copies change like any stream's.
    await jetstream.ensure_replicas(js, f"KV_{DELIVERED_BUCKET}", replicas)
    return bucket


def delivered_key(key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; outbound keys hold ':' and more.
    return hashlib.sha256(key.encode()).hexdigest()


def chat_ref(chat_id: str) -> int | str:
    """User and channel ids are integers for Telegram; `@channel` names stay text."""
    try:
        return int(chat_id)
    except ValueError:
        return chat_id
