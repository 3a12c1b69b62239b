"""Leaving a pull consumer at shutdown strands nothing (real nats-server)."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from contract import jetstream

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
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{CONSUMER}",
                     json.dumps({"batch": 3, "no_wait": True}).encode(), reply=leaving._deliver)
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
