"""Leaving a pull consumer at shutdown strands nothing (real nats-server)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys
from types import SimpleNamespace

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy
from nats.js.errors import APIError, NoStreamResponseError
from prometheus_client import REGISTRY

from devstack.processes import unmeasured_environ
from runtime import jetstream
from tests.harness import ROOT

STREAM, SUBJECT, CONSUMER = "HANDBACK", "handback.work", "handback-worker"


@pytest.mark.asyncio
async def test_messages_delivered_after_the_last_fetch_are_handed_back(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    for n in range(3):
        await js.publish(SUBJECT, str(n).encode())
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    leaving = await js.pull_subscribe(SUBJECT, durable=CONSUMER, config=config)
    # What a pull request that outlived its fetch does: deliver into the subscription
    # while nobody is fetching any more (nats-py keeps the inbox private).
    await nc.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}",
        json.dumps({"batch": 3, "no_wait": True}).encode(),
        reply=leaving._deliver,
    )
    for _ in range(100):
        if leaving.pending_msgs >= 3:
            break
        await asyncio.sleep(0.02)
    assert leaving.pending_msgs >= 3

    assert await jetstream.hand_back(leaving, lingering=0.1) == 3

    # The next process gets them at once, not after the 30 s ack wait.
    staying = await js.pull_subscribe(SUBJECT, durable=CONSUMER, config=config)
    received = await staying.fetch(3, timeout=3)
    assert sorted(msg.data for msg in received) == [b"0", b"1", b"2"]
    assert all(msg.metadata.num_delivered == 2 for msg in received)
    await nc.close()


async def _consume_until(
    js, stream: str, subject: str, handle, done: asyncio.Event, replicas: int = 1, timeout: float = 20, **options
) -> None:
    stopping = asyncio.Event()
    tasks = [
        asyncio.create_task(
            jetstream.consume(
                js,
                stream=stream,
                subject=subject,
                durable="worker",
                batch_size=10,
                handle=handle,
                stopping=stopping,
                what="test",
                **options,
            )
        )
        for _ in range(replicas)
    ]
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_a_slow_batch_stays_in_progress_and_is_not_redelivered(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await js.add_stream(name="SLOW", subjects=["slow.work"])
    await js.publish("slow.work", b"1")
    deliveries: list[int] = []
    done = asyncio.Event()

    async def handle(received) -> None:
        deliveries.extend(msg.metadata.num_delivered for msg, _ in received)
        await asyncio.sleep(3.5)  # over three ack waits
        for msg, _ in received:
            await msg.ack_sync()
        done.set()

    # Two replicas: the other one is asking for work all along.
    await _consume_until(js, "SLOW", "slow.work", handle, done, replicas=2, ack_wait=1.0)
    assert deliveries == [1]
    await nc.close()


@pytest.mark.asyncio
async def test_each_message_reaches_its_handler_with_its_payload_decoded_once(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await js.add_stream(name="ONCE", subjects=["once.work"])
    for n in range(3):
        await js.publish("once.work", str(n).encode())
    decoded: list[bytes] = []
    seen: list[tuple[bytes, object]] = []
    done = asyncio.Event()

    def decode(data: bytes) -> object:
        decoded.append(data)
        return SimpleNamespace(number=int(data))

    async def handle(received) -> None:
        for msg, payload in received:
            seen.append((msg.data, payload.number))
            await msg.ack_sync()
        if len(seen) == 3:
            done.set()

    await _consume_until(js, "ONCE", "once.work", handle, done, ack_wait=5.0, decode=decode)
    assert sorted(seen) == [(b"0", 0), (b"1", 1), (b"2", 2)]
    assert sorted(decoded) == [b"0", b"1", b"2"]  # once each: the handler reads the loop's payload
    await nc.close()


async def _dead_lettered_after(js, handle, timeout: float = 60, **options) -> list[int]:
    """Consume one message of "never works" with `handle` until it is dead-lettered; the
    deliveries the handler saw. Checks the dead letter and that nothing is left to deliver."""
    from contract.messaging import DEAD_STREAM

    await jetstream.ensure_streams(js)
    await js.add_stream(name="FLAKY", subjects=["flaky.work"])
    await js.publish("flaky.work", b"never works", headers={"Nats-Msg-Id": "flaky-1"})
    deliveries: list[int] = []
    done = asyncio.Event()

    async def counted(received) -> None:
        deliveries.extend(msg.metadata.num_delivered for msg, _ in received)
        await handle([msg for msg, _ in received])

    async def watch() -> None:
        while (await js.stream_info(DEAD_STREAM)).state.messages == 0:
            await asyncio.sleep(0.1)
        done.set()

    watcher = asyncio.create_task(watch())
    await _consume_until(js, "FLAKY", "flaky.work", counted, done, timeout=timeout, **options)
    await watcher
    dead = await js.get_msg(DEAD_STREAM, 1)
    assert dead.data == b"never works"
    assert dead.headers["Balcao-Dead-Subject"] == "flaky.work"
    assert dead.headers["Balcao-Dead-Deliveries"] == str(options.get("max_deliver", jetstream.MAX_DELIVER))
    consumer = await js.consumer_info("FLAKY", "worker")  # terminated: nothing left to deliver
    assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)
    assert consumer.config.max_deliver == options.get("max_deliver", jetstream.MAX_DELIVER)
    return deliveries


@pytest.mark.asyncio
async def test_a_message_refused_every_time_is_dead_lettered_at_the_production_limit(clean_nats) -> None:
    """A nak comes back at once, so the production max_deliver (1,000) is reached in seconds."""
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()

    async def refuse(messages) -> None:
        for msg in messages:
            await msg.nak()

    deliveries = await _dead_lettered_after(js, refuse, ack_wait=5.0)
    assert jetstream.MAX_DELIVER == 1000
    assert deliveries == list(range(1, jetstream.MAX_DELIVER))  # the 1,000th goes to the dead letters instead
    await nc.close()


@pytest.mark.asyncio
async def test_a_handler_that_raises_every_time_has_its_message_dead_lettered(clean_nats) -> None:
    """Unsettled, the message comes back after each ack wait; the loop survives every raise."""
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()

    async def fail(messages) -> None:
        raise RuntimeError("this message breaks the handler")

    assert await _dead_lettered_after(js, fail, ack_wait=1.0, max_deliver=3) == [1, 2]
    await nc.close()


# A consumer process whose handler SIGKILLs it, as a message that crashes every replica would.
DYING_CONSUMER = """
import asyncio, os, signal, sys
import nats
from runtime import jetstream

async def main():
    nc = await nats.connect(sys.argv[1])

    async def die(messages):
        os.kill(os.getpid(), signal.SIGKILL)

    await jetstream.consume(nc.jetstream(), stream="FLAKY", subject="flaky.work", durable="worker",
        batch_size=10, ack_wait=1.0, handle=die, stopping=asyncio.Event(), what="dying", max_deliver=3)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_a_message_that_kills_its_consumer_every_time_is_dead_lettered(clean_nats) -> None:
    """Each replica that takes it dies; the next one to get it after the third delivery
    files it as a dead letter instead of dying too."""
    from contract.messaging import DEAD_STREAM

    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    await js.add_stream(name="FLAKY", subjects=["flaky.work"])
    await js.publish("flaky.work", b"kills whoever reads it")
    exits = []
    for _ in range(6):  # one start per delivery, with room to spare
        if (await js.stream_info(DEAD_STREAM)).state.messages:
            break
        consumer = subprocess.Popen(
            [sys.executable, "-c", DYING_CONSUMER, clean_nats.url], cwd=ROOT, env=unmeasured_environ()
        )
        for _ in range(150):  # until it dies, or files the dead letter and goes on
            if consumer.poll() is not None or (await js.stream_info(DEAD_STREAM)).state.messages:
                break
            await asyncio.sleep(0.1)
        if consumer.poll() is None:
            consumer.kill()
            exits.append("kept running")
        else:
            exits.append(consumer.returncode)
        consumer.wait()
    assert exits == [-signal.SIGKILL, -signal.SIGKILL, "kept running"]
    dead = await js.get_msg(DEAD_STREAM, 1)
    assert (dead.data, dead.headers["Balcao-Dead-Deliveries"]) == (b"kills whoever reads it", "3")
    await nc.close()


@pytest.mark.asyncio
async def test_a_dead_letter_whose_payload_names_a_chat_is_filed_under_it(clean_nats) -> None:
    """So finishing that chat's session can purge it by subject; an unreadable one names none."""

    from contract.messaging import DEAD_STREAM

    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    await js.add_stream(name="CHATS", subjects=["chats.work"])
    await js.publish("chats.work", b"8103")
    await js.publish("chats.work", b"not a chat")
    done = asyncio.Event()

    def by_chat(data: bytes) -> object:
        return SimpleNamespace(chat_id=int(data))

    async def handle(messages) -> None:
        raise AssertionError("a message delivered max_deliver times reached its handler")

    async def watch() -> None:
        while (await js.stream_info(DEAD_STREAM)).state.messages < 2:
            await asyncio.sleep(0.05)
        done.set()

    watcher = asyncio.create_task(watch())
    await _consume_until(js, "CHATS", "chats.work", handle, done, ack_wait=5.0, max_deliver=1, decode=by_chat)
    await watcher
    subjects = [(await js.get_msg(DEAD_STREAM, seq)).subject for seq in (1, 2)]
    assert subjects == ["balcao.dead.chats.work.8103", "balcao.dead.chats.work"]
    await nc.close()


async def _fill(js, subject: str, size: int) -> int:
    """Publish `size`-byte messages on `subject` until its stream refuses one; how many it took."""
    taken = 0
    with pytest.raises(APIError, match="maximum bytes"):
        for n in range(1000):
            await js.publish(subject, f"{n:04d}".encode() + b"x" * (size - 4))
            taken += 1
    return taken


@pytest.mark.asyncio
async def test_a_full_dead_letter_stream_keeps_its_letters_and_the_next_stays_in_its_stream(clean_nats) -> None:
    """A dead letter is the last copy of its message: at the cap none of them is pushed
    out; the next message to dead-letter stays in its own stream, and is counted."""
    from contract.messaging import DEAD_STREAM, DEAD_SUBJECT_PREFIX
    from server import streams

    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=8192))
    letters = await _fill(js, f"{DEAD_SUBJECT_PREFIX}.earlier.work", 1000)
    await js.add_stream(name="POISON", subjects=["poison.work"])
    await js.publish("poison.work", b"unreadable" * 100)  # no smaller than the letters that filled it

    def refused() -> float:
        return REGISTRY.get_sample_value("balcao_dead_letters_refused_total", {"stream": "POISON"}) or 0.0

    before, handled, done = refused(), [], asyncio.Event()

    async def handle(messages) -> None:
        handled.extend(messages)

    def unreadable(data: bytes) -> object:
        raise ValueError("not a payload")

    async def watch() -> None:
        while refused() == before:
            await asyncio.sleep(0.05)
        done.set()

    watcher = asyncio.create_task(watch())
    await _consume_until(js, "POISON", "poison.work", handle, done, ack_wait=5.0, decode=unreadable)
    await watcher

    assert refused() == before + 1 and handled == []
    dead = await js.stream_info(DEAD_STREAM)
    assert dead.state.messages == letters  # every earlier letter kept, the oldest first
    assert (await js.get_msg(DEAD_STREAM, 1)).data.startswith(b"0000")
    assert (await js.stream_info("POISON")).state.messages == 1  # kept where it was
    await streams.observe(js)
    ratio = REGISTRY.get_sample_value("balcao_stream_fill_ratio", {"stream": DEAD_STREAM})
    assert ratio is not None and ratio > 0.8  # what an alert watches
    await nc.close()


@pytest.mark.asyncio
async def test_streams_declared_to_discard_old_messages_are_brought_to_discard_new(clean_nats) -> None:
    from contract.messaging import DEAD_STREAM, PARKED_STREAM

    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    for config in jetstream.STREAMS:
        if config.name in (DEAD_STREAM, PARKED_STREAM):  # as they were declared before
            await js.add_stream(config=dataclasses.replace(config, discard=DiscardPolicy.OLD))
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=8192))
    for name in (DEAD_STREAM, PARKED_STREAM):
        assert (await js.stream_info(name)).config.discard == DiscardPolicy.NEW
    await nc.close()


@pytest.mark.asyncio
async def test_a_publish_waits_for_a_stream_that_has_no_leader_yet(clean_nats) -> None:
    """A stream electing a leader answers "no responders"; the publish tries again
    and lands once the stream answers (here: once it exists)."""
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()

    async def stream_comes_back() -> None:
        await asyncio.sleep(1.2)
        await js.add_stream(name="ELECTED", subjects=["elected.work"])

    coming = asyncio.create_task(stream_comes_back())
    ack = await jetstream.publish_through_election(js, "elected.work", b"hello", timeout=2, patience=10)
    await coming
    assert ack.stream == "ELECTED" and ack.seq == 1
    await nc.close()


@pytest.mark.asyncio
async def test_a_publish_gives_up_once_its_patience_is_spent(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoStreamResponseError):
        await jetstream.publish_through_election(js, "nobody.listens", b"hello", timeout=2, patience=1.5)
    assert 1.0 <= loop.time() - started < 5  # tried again, then gave up
    await nc.close()
