"""Connecting to NATS and declaring the JetStream streams every process relies on.

Declaring is idempotent, so whichever process starts first creates the streams and
the others find them; nothing depends on start order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from prometheus_client import Counter

from contract import messaging
from runtime.retry import RetryPolicy

log = logging.getLogger(__name__)

STREAMS = (
    # Work queues: a message leaves the stream once its one consumer acknowledged it.
    StreamConfig(
        name=messaging.INBOUND_STREAM,
        subjects=[messaging.INBOUND_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=messaging.DUPLICATE_WINDOW_SECONDS,
        discard=DiscardPolicy.NEW,
    ),
    StreamConfig(
        name=messaging.OUTBOUND_STREAM,
        subjects=[messaging.OUTBOUND_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=messaging.DUPLICATE_WINDOW_SECONDS,
        discard=DiscardPolicy.NEW,
    ),
    # Parked messages are kept for people to inspect, a month at most. Full, the
    # stream refuses new ones rather than drop the oldest: a parked message is the
    # only record that a contact was never told something, and the bot keeps
    # trying to park a refused one (it stays in the outbound stream) meanwhile.
    StreamConfig(
        name=messaging.PARKED_STREAM,
        # Per chat, so a finished session's parked messages can be purged; the bare
        # subject is what bots before per-chat subjects publish on.
        subjects=[messaging.PARKED_SUBJECT, f"{messaging.PARKED_SUBJECT}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=messaging.PARKED_MAX_AGE_SECONDS,
        discard=DiscardPolicy.NEW,
    ),
    # Dead letters: what a consumer can never handle, kept a month like parked ones.
    # A dead letter is the last copy of its message, so a full stream refuses the
    # next one (which then stays in its own stream, see dead_letter) instead of
    # discarding the oldest.
    StreamConfig(
        name=messaging.DEAD_STREAM,
        subjects=[f"{messaging.DEAD_SUBJECT_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=messaging.DEAD_LETTER_MAX_AGE_SECONDS,
        duplicate_window=messaging.DUPLICATE_WINDOW_SECONDS,
        discard=DiscardPolicy.NEW,
    ),
)

DEAD_LETTERED = Counter(
    "balcao_dead_lettered_total",
    "Messages moved to the dead-letter stream (undecodable or delivered too often), by source stream",
    ["stream"],  # one of the project's own streams: a fixed, small set
)
DEAD_LETTERS_REFUSED = Counter(
    "balcao_dead_letters_refused_total",
    "Messages that were to be dead-lettered but the dead-letter stream refused (full) or NATS did not answer; "
    "they stay unacknowledged in their own stream. Alert on any.",
    ["stream"],
)

# A message delivered this many times goes to the dead-letter stream instead of
# its handler: whatever makes every attempt fail or kill the process, it must
# not hold a consumer (or crash-loop every replica) for ever. High enough that
# retries through a long outage do not get there: intake's redelivery delay
# tops out at 15 s, so 1,000 deliveries are over four hours of trying.
MAX_DELIVER = 1000

# How a stream's payloads are decoded; a payload that fails is dead-lettered
# by the consume loop before any handler sees it.
DECODERS: dict[str, Callable[[bytes], object]] = {
    messaging.INBOUND_STREAM: messaging.InboundMessage.from_bytes,
    messaging.OUTBOUND_STREAM: messaging.OutboundMessage.from_bytes,
}

Payload = TypeVar("Payload")


class Received(NamedTuple, Generic[Payload]):
    """A fetched message and its payload as its stream's decoder read it (None without one):
    decoded once, by the consume loop, which had to read it to find the undecodable."""

    msg: Msg
    payload: Payload


class ReplicationError(Exception):
    """A stream cannot be created, or brought to the replication asked for."""


def split_urls(url: str) -> list[str]:
    """The servers of `NATS_URL`: one URL, or a comma-separated list of a cluster's members."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(url: str, name: str, inbox_prefix: str) -> Client:
    """Connect once, retrying forever in the background after the first success.

    `url` may name several servers (the members of a cluster, comma-separated):
    the first connection goes to any that answers, and a lost connection moves
    to another member, including members the cluster announced since. Replies
    (JetStream API answers, fetched batches, event deliveries) come to subjects
    under `inbox_prefix`, the process's own (contract/messaging.py), so a NATS
    user can be allowed its own replies and not another process's.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnected() -> None:
        if client.is_closed or client.is_draining:
            log.info("nats connection closed")  # our own drain at shutdown
        else:
            log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    client = Client()
    await client.connect(
        servers=split_urls(url),
        name=name,
        inbox_prefix=inbox_prefix,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        # Publishes made while reconnecting wait in this buffer instead of failing.
        pending_size=16 * 1024 * 1024,
    )
    return client


# A replicated stream without a leader (one is being elected: 5-10 s after its
# leader's node died, by nats-server's Raft election timeouts) answers a publish
# with "no responders" at once. The publisher tries again this often, for up to
# ELECTION_PATIENCE, rather than giving up on the first answer: an even pace,
# since the election ends at a moment nothing here can predict.
ELECTION_RETRY_INTERVAL = 0.5
ELECTION_PATIENCE = 12.0
# What a publish meets while its stream elects a leader. A timeout is a publish
# whose answer died with the connection (its node was killed); the same
# Nats-Msg-Id makes trying again harmless.
ELECTION_ERRORS = (NoStreamResponseError, ServiceUnavailableError, nats.errors.TimeoutError, asyncio.TimeoutError)


async def publish_through_election(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    patience: float = ELECTION_PATIENCE,
) -> PubAck:
    """`js.publish`, tried again while the stream has no leader (or the answer was lost
    with a node), for up to `patience` s.

    Giving up on the first "no responders" costs far more than waiting: an inbound
    batch whose reply cannot be published is handed back with a nak, and a nak
    sent while the consumer's leader also changes is lost, so the batch waits out
    the consumer's whole ack wait (30 s) instead of the election's few seconds.
    A repeated publish is harmless: its Nats-Msg-Id de-duplicates it.
    """

    def publishing_again(exc: BaseException, pause: float) -> None:
        log.info("stream for %s has no leader yet, publishing again: %r", subject, exc)

    # The first try outside the retry loop: nearly every publish (each reply,
    # event and relayed message) is answered at once, and only one that failed
    # pays for the loop. Its patience runs from the first try, as if it had
    # made that try itself.
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        return await js.publish(subject, payload, timeout=timeout, headers=headers)
    except ELECTION_ERRORS as exc:
        left = patience - (loop.time() - started)
        if left < ELECTION_RETRY_INTERVAL:  # no retry would start within the patience
            raise
        publishing_again(exc, ELECTION_RETRY_INTERVAL)
    await asyncio.sleep(ELECTION_RETRY_INTERVAL)
    retries = RetryPolicy(first=ELECTION_RETRY_INTERVAL, factor=1.0, within=left - ELECTION_RETRY_INTERVAL)
    return await retries.retrying(
        lambda: js.publish(subject, payload, timeout=timeout, headers=headers),
        ELECTION_ERRORS,
        on_retry=publishing_again,
    )


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """Caps on what a stream may hold, so a long outage of the consuming side fills
    the stream, not the disk. The work queues discard new messages when full: the
    publisher gets an error (the bot then leaves the update unconfirmed, Telegram
    keeps it), so nothing is dropped silently."""

    max_bytes: int = 0  # per stream; 0: no cap
    max_age: float = 0.0  # seconds, for the work queues (inbound, outbound); 0: none
    # The streams kept for people to look at: how long they keep a message.
    parked_max_age: float = messaging.PARKED_MAX_AGE_SECONDS
    dead_letter_max_age: float = messaging.DEAD_LETTER_MAX_AGE_SECONDS

    def apply(self, config: StreamConfig) -> StreamConfig:
        changes: dict[str, float | int] = {}
        if self.max_bytes > 0:
            changes["max_bytes"] = self.max_bytes
        kept = {messaging.PARKED_STREAM: self.parked_max_age, messaging.DEAD_STREAM: self.dead_letter_max_age}
        age = kept.get(config.name or "", self.max_age)
        if age > 0:
            changes["max_age"] = age
        return dataclasses.replace(config, **changes) if changes else config


async def ensure_streams(
    js: JetStreamContext, limits: StreamLimits | None = None, *, replicas: int = 1, administer: bool = True
) -> None:
    """Create the streams with their limits, each kept on `replicas` servers (NATS_REPLICAS).

    A stream that exists with other settings keeps them (an operator tuned it),
    except the limits, which the settings own, and its replication, which is
    brought to `replicas` in place: JetStream copies the data to the new peers
    (or drops the extra ones) without losing a message, and the stream's
    consumers follow. What cannot be done that way (more replicas than servers,
    a server without JetStream) raises ReplicationError naming the stream and
    JetStream's reason.

    Only the process that administers the streams (the server) changes an
    existing one; the bot, with `administer=False`, creates what is missing
    and leaves the rest as it finds it (its NATS user may not update streams).
    """
    for config in STREAMS:
        wanted = dataclasses.replace((limits or StreamLimits()).apply(config), num_replicas=replicas)
        try:
            await js.add_stream(config=wanted)
        except APIError as exc:  # 400 "exists with other settings", 500 "replicas > 1 not supported", ...
            try:
                info = await js.stream_info(wanted.name)
            except NotFoundError:
                # Typically "insufficient storage resources": nats-server reserves
                # max_bytes up front. Say which stream and cap before giving up.
                log.error(
                    "stream %s cannot be created with max_bytes=%s and %d replica(s): %s",
                    wanted.name,
                    wanted.max_bytes,
                    replicas,
                    exc.description,
                )
                if replicas == 1 and not isinstance(exc, BadRequestError):
                    raise
                raise ReplicationError(
                    f"cannot create stream {wanted.name} with {replicas} replica(s) (NATS_REPLICAS): {exc.description}"
                ) from exc
            if not administer:
                log.info("stream %s exists; its settings are the server's to change", wanted.name)
                continue
            if (info.config.num_replicas or 1) != replicas:
                await ensure_replicas(js, wanted.name, replicas)
            await update_limits(js, wanted)


async def update_limits(js: JetStreamContext, wanted: StreamConfig, *, keep_stored: bool = True) -> None:
    """Bring an existing stream to the configured limits (bytes, age, discard policy) and subjects.

    Subjects are only added: a stream keeps what it was declared with.

    With `keep_stored`, a byte cap below what the stream holds is not applied,
    so its messages stay; a stream whose oldest messages may go (the live
    events) passes False and is cut to the new cap.
    """
    info = await js.stream_info(wanted.name)
    current = info.config
    changes: dict[str, object] = {}
    if wanted.max_bytes and wanted.max_bytes != current.max_bytes:
        if keep_stored and info.state.bytes > wanted.max_bytes:
            # A smaller cap would make JetStream delete the oldest messages now.
            log.warning(
                "stream %s holds %d bytes, more than the %d configured; cap left at %s",
                wanted.name,
                info.state.bytes,
                wanted.max_bytes,
                current.max_bytes,
            )
        else:
            changes["max_bytes"] = wanted.max_bytes
    if wanted.max_age and abs(wanted.max_age - (current.max_age or 0)) > 0.001:
        changes["max_age"] = wanted.max_age
    if wanted.discard and wanted.discard != current.discard:
        # Streams declared before they discarded new messages when full.
        changes["discard"] = wanted.discard
    missing = [subject for subject in wanted.subjects or [] if subject not in (current.subjects or [])]
    if missing:
        changes["subjects"] = [*(current.subjects or []), *missing]
    if not changes:
        log.info("stream %s exists with different settings; left as is", wanted.name)
        return
    await js.update_stream(config=dataclasses.replace(current, **changes))
    log.info(
        "stream %s limits updated: %s",
        wanted.name,
        ", ".join(f"{name}={value}" for name, value in sorted(changes.items())),
    )


async def ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """Bring an existing stream (a key-value bucket is one) to `replicas` copies, data kept."""
    info = await js.stream_info(stream)
    current = info.config.num_replicas or 1
    if current == replicas:
        return
    try:
        await js.update_stream(config=dataclasses.replace(info.config, num_replicas=replicas))
    except APIError as exc:
        raise ReplicationError(
            f"stream {stream} has {current} replica(s) and cannot be changed to {replicas} "
            f"(NATS_REPLICAS): {exc.description}"
        ) from exc
    log.info("stream %s replication changed from %d to %d", stream, current, replicas)
    # A durable consumer made on a one-replica stream stays on one server when
    # the stream grows; its state (what was acknowledged) must survive a node too.
    for consumer in await js.consumers_info(stream):
        if consumer.config.num_replicas not in (0, replicas) or current == 1:
            await js.add_consumer(stream, config=dataclasses.replace(consumer.config, num_replicas=replicas))
            log.info("consumer %s on %s replication changed to %d", consumer.name, stream, replicas)


async def hand_back(subscription: JetStreamContext.PullSubscription, lingering: float) -> int:
    """Unsubscribe a pull subscription at shutdown without stranding messages.

    nats-py's fetch can give up a moment before the server expires its pull
    request, which may then still deliver into the subscription. Unsubscribed,
    such messages would wait out the consumer's ack wait (30 s for intake, 2 min
    for delivery) before another process gets them. So wait until no request
    can linger (`lingering` seconds), hand back (nak) whatever arrived, and only
    then unsubscribe. Returns how many messages were handed back.
    """
    if lingering > 0:
        await asyncio.sleep(lingering)
    handed_back = 0
    for _ in range(3):  # the fetch's own probe may catch one more; bounded
        if not subscription.pending_msgs:
            break
        try:
            messages = await subscription.fetch(subscription.pending_msgs + 1, timeout=FETCH_TIMEOUT)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            break
        for msg in messages:
            await msg.nak()
        handed_back += len(messages)
    await subscription.unsubscribe()
    if handed_back:
        log.info("handed %d late-delivered messages back to JetStream", handed_back)
    return handed_back


async def drain(nc: Client, timeout: float = 10.0) -> None:
    """Drain on shutdown (flushes what is buffered), but never hang the exit on it."""
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except (asyncio.TimeoutError, nats.errors.Error) as exc:
        log.warning("nats drain incomplete: %r", exc)
        await nc.close()


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str, chat_id: object = None) -> None:
    """Keep `msg` in the dead-letter stream with why, then stop its redelivery.

    The copy keeps the original headers (a repeated Nats-Msg-Id is stored once)
    and adds the subject, stream, sequence and reason; its subject names the
    chat when the payload does (`chat_id`), so finishing that chat's session
    purges it. If the copy cannot be
    stored (the dead-letter stream is full and refuses new messages, or NATS
    does not answer), this raises and the message is left unacknowledged in
    its own stream: redelivered while deliveries remain, kept there after the
    last one, never dropped.
    """
    metadata = msg.metadata
    headers = {
        **(msg.headers or {}),
        "Balcao-Dead-Subject": msg.subject,
        "Balcao-Dead-Stream": metadata.stream,
        "Balcao-Dead-Sequence": str(metadata.sequence.stream),
        "Balcao-Dead-Deliveries": str(metadata.num_delivered),
        "Balcao-Dead-Reason": reason[:500],
    }
    await js.publish(messaging.dead_subject(msg.subject, chat_id), msg.data, headers=headers)
    await msg.term()
    DEAD_LETTERED.labels(stream=metadata.stream).inc()
    log.error(
        "message dead-lettered from %s (stream seq %s, delivery %s): %s",
        metadata.stream,
        metadata.sequence.stream,
        metadata.num_delivered,
        reason,
    )


async def _dead_letters_removed(
    js: JetStreamContext, messages: list[Msg], decode: Callable[[bytes], object] | None, max_deliver: int
) -> list[Received[Any]]:
    """The messages a handler can take, with their payloads; the others are dead-lettered."""
    kept: list[Received[Any]] = []
    for msg in messages:
        reason, decoded = None, None
        if decode is not None:
            try:
                decoded = decode(msg.data)
            except Exception as exc:  # noqa: BLE001 - whatever the decoder hit, the payload is at fault
                reason = f"undecodable: {type(exc).__name__}: {str(exc)[:200]}"
        if msg.metadata.num_delivered >= max_deliver:
            reason = f"delivered {msg.metadata.num_delivered} times without being settled"
        if reason is None:
            kept.append(Received(msg, decoded))
            continue
        try:
            await dead_letter(js, msg, reason, getattr(decoded, "chat_id", None))
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            # Not handed to the handler either: it failed or could not read it.
            DEAD_LETTERS_REFUSED.labels(stream=msg.metadata.stream).inc()
            log.error(
                "message from %s (stream seq %s) left in its stream, the dead-letter stream refused it: %r",
                msg.metadata.stream,
                msg.metadata.sequence.stream,
                exc,
            )
    return kept


async def _keep_in_progress(messages: list[Msg], interval: float) -> None:
    """Tell JetStream every `interval` that the unsettled messages are still being worked on.

    Without it a batch that takes longer than the ack wait (a slow database,
    a thousand messages) is handed to another replica while this one still
    stores it.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            for msg in messages:
                if not msg.is_acked:
                    await msg.in_progress()
        except nats.errors.Error as exc:  # best effort, like every ack
            log.warning("could not mark a batch in progress: %s", exc)


# A fetch waits this long for messages; stopping is noticed between fetches,
# and a shutdown waits out one fetch (its pull request may still deliver). An
# idle consumer costs NATS one pull request per FETCH_TIMEOUT.
FETCH_TIMEOUT = 0.25


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    durable: str,
    batch_size: int,
    ack_wait: float,
    handle: Callable[[list[Received[Any]]], Awaitable[None]],
    stopping: asyncio.Event,
    what: str,
    max_deliver: int = MAX_DELIVER,
    decode: Callable[[bytes], object] | None = None,
    also: tuple[str, ...] = (),
) -> None:
    """Feed batches from a durable pull consumer to `handle` until `stopping` is set.

    Every replica binds the same durable consumer, so JetStream splits the work
    between them; `handle` gets each message with its decoded payload
    (`Received`), acknowledges what it finished, and anything else is
    redelivered after `ack_wait`. The batch in hand is finished before returning,
    and kept in progress while it is worked on. A message that `decode` (by
    default the stream's decoder in DECODERS) cannot read, or that comes for the
    `max_deliver`-th time, goes to the dead-letter stream instead of `handle`.
    `also` names more subjects the consumer takes beside `subject`.
    """
    decode = decode or DECODERS.get(stream)
    subscription = await js.pull_subscribe(
        subject,
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=10 * batch_size,
            max_deliver=max_deliver,
            filter_subjects=[subject, *also] if also else None,
        ),
    )
    log.info("%s consuming %s", what, subject)
    loop = asyncio.get_running_loop()
    fetched_at = loop.time()
    while not stopping.is_set():
        fetched_at = loop.time()
        try:
            messages = await subscription.fetch(batch_size, timeout=FETCH_TIMEOUT)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either
            continue
        except nats.errors.Error as exc:
            log.warning("%s fetch failed: %s", what, exc)
            await asyncio.sleep(1.0)
            continue
        progress = None
        try:
            received = await _dead_letters_removed(js, messages, decode, max_deliver)
            if not received:
                continue
            progress = asyncio.create_task(_keep_in_progress([msg for msg, _ in received], ack_wait / 3))
            await handle(received)
        except nats.errors.Error as exc:
            # Acks and naks are best effort: what was not acknowledged is redelivered.
            log.warning("%s lost NATS while settling a batch: %s", what, exc)
        except Exception:  # noqa: BLE001 - one bad batch must not end the consumer
            # Unsettled messages come back after the ack wait; one that fails every
            # time ends in the dead-letter stream after `max_deliver` deliveries.
            log.exception("%s failed to handle a batch of %d", what, len(messages))
        finally:
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
    # A pull subscription left with a pending fetch makes drain() wait forever.
    await hand_back(subscription, FETCH_TIMEOUT - (loop.time() - fetched_at))
    log.info("%s stopped", what)
