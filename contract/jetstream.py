"""Connecting to NATS and declaring the JetStream streams every process relies on.

Declaring is idempotent, so whichever process starts first creates the streams and
the others find them; nothing depends on start order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

from contract import messaging

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
    # Parked messages are kept for people to inspect, a month at most.
    StreamConfig(
        name=messaging.PARKED_STREAM,
        subjects=[messaging.PARKED_SUBJECT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600,
    ),
)


class ReplicationError(Exception):
    """A stream cannot be created, or brought to the replication asked for."""


def split_urls(url: str) -> list[str]:
    """The servers of `NATS_URL`: one URL, or a comma-separated list of a cluster's members."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(url: str, name: str) -> Client:
    """Connect once, retrying forever in the background after the first success.

    `url` may name several servers (the members of a cluster, comma-separated):
    the first connection goes to any that answers, and a lost connection moves
    to another member, including members the cluster announced since.
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


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the streams, each kept on `replicas` servers (NATS_REPLICAS).

    A stream that exists with other settings keeps them (an operator tuned it),
    except its replication, which is brought to `replicas` in place: JetStream
    copies the data to the new peers (or drops the extra ones) without losing a
    message, and the stream's consumers follow. What cannot be done that way
    (more replicas than servers, a server without JetStream) raises
    ReplicationError naming the stream and JetStream's reason.
    """
    for config in STREAMS:
        config = dataclasses.replace(config, num_replicas=replicas)
        try:
            await js.add_stream(config=config)
        except APIError as exc:  # 400 "exists with other settings", 500 "replicas > 1 not supported", ...
            try:
                info = await js.stream_info(config.name)
            except NotFoundError:
                raise ReplicationError(
                    f"cannot create stream {config.name} with {replicas} replica(s) "
                    f"(NATS_REPLICAS): {exc.description}") from exc
            if (info.config.num_replicas or 1) != replicas:
                await ensure_replicas(js, config.name, replicas)
            else:
                # Exists with other settings (an operator tuned it): keep theirs.
                log.info("stream %s exists with different settings; left as is", config.name)


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
            f"(NATS_REPLICAS): {exc.description}") from exc
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
            messages = await subscription.fetch(subscription.pending_msgs + 1, timeout=0.5)
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


# A fetch waits this long for messages; stopping is noticed between fetches.
FETCH_TIMEOUT = 1.0


async def consume(js: JetStreamContext, *, stream: str, subject: str, durable: str, batch_size: int,
                  ack_wait: float, handle: Callable[[list[Msg]], Awaitable[None]],
                  stopping: asyncio.Event, what: str) -> None:
    """Feed batches from a durable pull consumer to `handle` until `stopping` is set.

    Every replica binds the same durable consumer, so JetStream splits the work
    between them; `handle` acknowledges what it finished, and anything else is
    redelivered after `ack_wait`. The batch in hand is finished before returning.
    """
    subscription = await js.pull_subscribe(
        subject,
        durable=durable,
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
                              max_ack_pending=10 * batch_size),
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
        try:
            await handle(messages)
        except nats.errors.Error as exc:
            # Acks and naks are best effort: what was not acknowledged is redelivered.
            log.warning("%s lost NATS while settling a batch: %s", what, exc)
    # A pull subscription left with a pending fetch makes drain() wait forever.
    await hand_back(subscription, FETCH_TIMEOUT - (loop.time() - fetched_at))
    log.info("%s stopped", what)
