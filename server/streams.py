"""How full the JetStream streams are, published as gauges on /metrics.

A stream at its max_bytes refuses new messages (the work queues discard new), so
an outage that lasts long enough shows here first: alert on the fill ratio.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.js import JetStreamContext

from runtime import jetstream
from server.metrics import STREAM_BYTES, STREAM_FILL_RATIO, STREAM_MESSAGES

log = logging.getLogger(__name__)

# Stream info is one small request per stream; Prometheus scrapes every 15-60 s.
WATCH_INTERVAL = 15.0


async def observe(js: JetStreamContext) -> None:
    """Read every stream's state once into the gauges."""
    for config in jetstream.STREAMS:
        assert config.name
        info = await js.stream_info(config.name)
        STREAM_BYTES.labels(stream=config.name).set(info.state.bytes)
        STREAM_MESSAGES.labels(stream=config.name).set(info.state.messages)
        cap = info.config.max_bytes or 0
        if cap > 0:  # -1 means no cap: no ratio to show
            STREAM_FILL_RATIO.labels(stream=config.name).set(info.state.bytes / cap)


async def watch(js: JetStreamContext, stopping: asyncio.Event, interval: float = WATCH_INTERVAL) -> None:
    """Refresh the gauges until `stopping` is set; a NATS outage only skips rounds."""
    while not stopping.is_set():
        try:
            await observe(js)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            log.debug("stream metrics not refreshed: %r", exc)
        try:
            await asyncio.wait_for(stopping.wait(), interval)
        except asyncio.TimeoutError:
            pass
