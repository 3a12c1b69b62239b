"""One live subscription to BALCAO_EVENTS per replica, fanned out to its connections.

A JetStream consumer per connection costs the NATS server a delivery, and this
process a parsed message and a callback, per event and per client: with a
hundred clients that is where the time went (see bench/eventlatency.py). So each
replica reads the stream once, through `EventFeed`, an ordered consumer on
every event subject, and hands each event, encoded once, to every connection
whose filter it matches.

A connection that resumes from `since` first catches up through its own ordered
consumer, filtered by NATS, then joins the feed. The seam is handed over by
stream sequence, which is also the event id:

1. The connection joins the feed before its consumer exists and from then on
   buffers the feed's events that match its filter. The feed has dispatched
   every event up to `floor` (its position at that moment), so the buffer holds
   every matching event after `floor`.
2. The catch-up consumer delivers from `since + 1`. It has reached the live
   position when it delivers an event at or after `floor` (the buffer holds all
   that follow), or when JetStream says nothing matching is pending after the
   event it delivered (or after what it delivered, when asked once at the start):
   everything stored since is after `floor`, hence in the buffer or still to come.
3. Then the buffered events after the last one delivered are sent, the catch-up
   consumer is dropped, and the feed's events are sent as they come.

Every send goes through one check that the id grows, so no event is ever sent
twice or out of order. If the buffer outgrows the connection's byte limit
before the catch-up ends (a long history while many events arrive), the
connection stays on its own consumer for good, as every connection once did.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from contract import eventstream
from server.metrics import EVENT_CATCH_UPS, EVENT_FANOUT_SECONDS, EVENTS_REFUSED, EVENTS_SENT

log = logging.getLogger(__name__)


class LiveEvent:
    """One stored event as every connection is sent it: checked and encoded once, shared by all.

    An event that is not one (`contract.eventstream.relayable`: unreadable, its type
    not its subject's, a forged `message.sent`) is not `valid` and is sent to no
    one; its id is skipped like any other the client's filter leaves out.
    """

    __slots__ = ("id", "tokens", "data", "valid", "_sse", "_frame", "_matched")

    def __init__(self, event_id: int, subject: str, body: bytes) -> None:
        self.id = event_id
        self.tokens = subject.split(".")
        checked = eventstream.relayable(subject, body)
        self.valid = checked is not None
        if checked is None:
            EVENTS_REFUSED.inc()
            log.warning("event %d on %s is not a valid event; it is sent to no client", event_id, subject)
        self.data = eventstream.with_id(checked or b"", event_id)  # the WebSocket frame's payload
        self._sse: bytes | None = None
        self._frame: bytes | None = None
        self._matched: dict[str, bool] = {}

    def matches(self, filter_subject: str, pattern: list[str]) -> bool:
        """Whether a connection's filter takes this event; once per distinct filter."""
        matched = self._matched.get(filter_subject)
        if matched is None:
            matched = self._matched[filter_subject] = _matches(pattern, self.tokens)
        return matched

    @property
    def websocket_frame(self) -> bytes:
        """The whole WebSocket text frame, built once: server frames are unmasked and,
        without compression (never negotiated here), the same bytes for every client."""
        if self._frame is None:
            size = len(self.data)
            if size < 126:
                header = struct.pack("!BB", 0x81, size)
            elif size <= 0xFFFF:
                header = struct.pack("!BBH", 0x81, 126, size)
            else:
                header = struct.pack("!BBQ", 0x81, 127, size)
            self._frame = header + self.data
        return self._frame

    @classmethod
    def from_msg(cls, msg: Any) -> LiveEvent:
        return cls(msg.metadata.sequence.stream, msg.subject, msg.data)

    @property
    def sse(self) -> bytes:
        """The Server-Sent Events frame, built for the first SSE client that needs it."""
        if self._sse is None:
            kind = ".".join(self.tokens[2:4]).encode()
            self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, kind, self.data)
        return self._sse


class EventFeed:
    """This replica's one ordered consumer on every event subject, and who listens to it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.position = 0  # stream sequence of the last event dispatched
        self._listeners: set[Follower] = set()
        self._subscription: Any = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe, once, from just after the stream's last event (raises if NATS fails)."""
        async with self._starting:
            if self._subscription is not None:
                return
            info = await self.js.stream_info(eventstream.EVENTS_STREAM)
            # From a fixed sequence rather than "new": nothing stored meanwhile is skipped.
            self.position = info.state.last_seq
            self._subscription = await self.js.subscribe(
                eventstream.EVENTS_SUBJECTS,
                stream=eventstream.EVENTS_STREAM,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.position + 1),
                cb=self._on_event,
            )
            log.info("event feed following %s from %d", eventstream.EVENTS_STREAM, self.position + 1)

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await _unsubscribe(subscription)

    def add(self, follower: Follower) -> int:
        """Start offering events to `follower`; the position from which it gets them all."""
        self._listeners.add(follower)
        return self.position

    def remove(self, follower: Follower) -> None:
        self._listeners.discard(follower)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def _on_event(self, msg: Any) -> None:
        started = time.perf_counter()
        event = LiveEvent.from_msg(msg)
        if event.id <= self.position:
            return  # the ordered consumer restarts after the last one seen; never expected
        self.position = event.id
        if not event.valid:
            return
        sent = 0
        for follower in list(self._listeners):
            sent += follower.offer(event)
        if sent:
            EVENTS_SENT.inc(sent)
        EVENT_FANOUT_SECONDS.observe(time.perf_counter() - started)


class Follower:
    """One connection's way through the stream: its own consumer from `since`, then the feed.

    `send(event)` writes an event to the client (it must not block); `fail(reason)`
    is called when the catch-up consumer cannot be created.
    """

    def __init__(
        self,
        feed: EventFeed,
        filter_subject: str,
        since: int | None,
        send: Callable[[LiveEvent], bool],
        buffer_limit: int,
    ) -> None:
        self.feed = feed
        self.filter_subject = filter_subject
        self._filter = filter_subject.split(".")
        self._send = send
        self._buffer_limit = buffer_limit
        self.last = since if since is not None else 0  # id of the last event sent
        self._since = since
        self.live = False  # caught up: events come from the feed
        self.own_consumer_only = False  # the handover buffer overflowed
        self._floor = 0
        self._target: int | None = None
        self._pending: list[LiveEvent] = []
        self._pending_bytes = 0
        self._catch_up: Any = None
        self._closed = False

    async def start(self) -> None:
        """Join the feed, and catch up first if `since` was given (raises if NATS fails)."""
        await self.feed.start()
        if self._closed:
            return
        self._floor = self.feed.add(self)
        if self._since is None:
            self.last = self._floor  # from now on, as a new consumer would
            self.live = True
            return
        self._catch_up = await self.feed.js.subscribe(
            self.filter_subject,
            stream=eventstream.EVENTS_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._since + 1),
            cb=self._on_catch_up,
        )
        if self._closed or self.live:
            self._drop_catch_up()
            return
        # A consumer with nothing to deliver never calls back: ask it once.
        try:
            info = await self._catch_up.consumer_info()
        except (NatsError, asyncio.TimeoutError) as exc:
            # Recreated meanwhile (it delivers, so its events lead to the feed), or
            # NATS is away: then the buffer overflows into the own-consumer mode.
            log.debug("catch-up consumer not asked: %r", exc)
            return
        if self._catch_up is not None and info.num_pending == 0 and not self.live and not self.own_consumer_only:
            self._target = info.delivered.stream_seq if info.delivered.consumer_seq else self._since
            if self.last >= self._target:
                self._go_live()

    def close(self) -> None:
        self._closed = True
        self.feed.remove(self)
        self._pending = []
        self._drop_catch_up()

    def offer(self, event: LiveEvent) -> int:
        """An event from the feed: sent, buffered during the catch-up, or not for this filter."""
        if self._closed or not event.matches(self.filter_subject, self._filter):
            return 0
        if self.live:
            return self._deliver(event)
        self._pending.append(event)
        self._pending_bytes += len(event.data)
        if self._pending_bytes > self._buffer_limit:
            log.info("event client stays on its own consumer: catch-up outlasted %d buffered bytes", self._buffer_limit)
            self.own_consumer_only = True
            EVENT_CATCH_UPS.labels(outcome="own-consumer").inc()
            self.feed.remove(self)
            self._pending = []
        return 0

    async def _on_catch_up(self, msg: Any) -> None:
        if self._closed or self.live:
            return  # the feed took over; what is still queued here it sends too
        event = LiveEvent.from_msg(msg)
        if self._deliver(event):
            EVENTS_SENT.inc()
        if self.own_consumer_only:
            return
        if (
            event.id >= self._floor
            or msg.metadata.num_pending == 0
            or (self._target is not None and self.last >= self._target)
        ):
            self._go_live()

    def _go_live(self) -> None:
        self.live = True
        EVENT_CATCH_UPS.labels(outcome="live").inc()
        pending, self._pending = self._pending, []
        sent = sum(self._deliver(event) for event in pending)
        if sent:
            EVENTS_SENT.inc(sent)
        self._drop_catch_up()

    def _deliver(self, event: LiveEvent) -> int:
        if event.id <= self.last:
            return 0  # sent already (the catch-up overlaps the buffer)
        self.last = event.id
        if not event.valid:
            return 0  # passed over, as the seam's bookkeeping needs
        return 1 if self._send(event) else 0

    def _drop_catch_up(self) -> None:
        subscription, self._catch_up = self._catch_up, None
        if subscription is not None:
            task = asyncio.ensure_future(_unsubscribe(subscription))
            _unsubscribing.add(task)
            task.add_done_callback(_unsubscribing.discard)


def _matches(pattern: list[str], tokens: list[str]) -> bool:
    """NATS subject matching (`*`: one token, `>`: the rest), as the consumer filter would."""
    for index, want in enumerate(pattern):
        if want == ">":
            return len(tokens) > index
        if index >= len(tokens) or (want != "*" and want != tokens[index]):
            return False
    return len(tokens) == len(pattern)


_unsubscribing: set[asyncio.Future] = set()


async def _unsubscribe(subscription: Any) -> None:
    try:
        await subscription.unsubscribe()
    except (NatsError, asyncio.TimeoutError, ValueError) as exc:
        # An ephemeral consumer with no subscriber goes away by itself on the server.
        log.debug("event subscription not unsubscribed: %r", exc)
