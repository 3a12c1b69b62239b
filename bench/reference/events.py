"""The live events read raw: a nats-py ordered consumer on the events stream, in a process of its own.

    python -m bench.reference.events NATS_URL KIND COUNT

Prints `ready` once subscribed (new events only), then, after COUNT events of
KIND, one JSON line: each event's latency in seconds, from its `at` stamp to
its arrival here. What a client reading JetStream directly would see, with
nothing between it and the stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy


def latency(data: bytes) -> float:
    at = dt.datetime.fromisoformat(json.loads(data)["at"].replace("Z", "+00:00")).timestamp()
    return time.time() - at


async def main(nats_url: str, kind: str, count: int) -> None:
    nc = await nats.connect(nats_url, name="bench-reference-events")
    js = nc.jetstream()
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_event(msg) -> None:
        latencies.append(latency(msg.data))
        if len(latencies) >= count:
            done.set()

    await js.subscribe(
        f"balcao.events.{kind}.*.*",
        stream="BALCAO_EVENTS",
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        cb=on_event,
    )
    print("ready", flush=True)
    await done.wait()
    print(json.dumps(latencies), flush=True)
    await nc.close()


if __name__ == "__main__":
    url, kind, count = sys.argv[1:]
    asyncio.run(main(url, kind, int(count)))
