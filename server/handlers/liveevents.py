"""GET /v1/events: the live event stream, over WebSocket or Server-Sent Events.

Each replica reads BALCAO_EVENTS once, through its `EventFeed`, and hands every
event to each connection whose filters it matches (`server/eventfeed.py`). A
connection that resumes from `since` (or SSE's Last-Event-ID) first catches up
through its own ordered JetStream consumer, then joins the feed; the hand-over
goes by stream sequence, which is the event id, so resuming has no gap and no
repeat at the seam, on whichever replica the client lands.

Authentication happens before the upgrade, through the same bearer check as every
`/v1` route. Browsers cannot set headers on a WebSocket, so they may offer the
token as a subprotocol `bearer.<token>` beside `balcao.v1`; a token in the query
string is refused, because query strings land in access logs.

Close codes (WebSocket) are documented in the OpenAPI description:
- 4410: `since` is older than the oldest event kept; reload the sessions and
  reconnect without `since`.
- 4008: the client read too slowly; its buffer went over EVENTS_CLIENT_BUFFER_BYTES.
- 1001: the server is shutting down; reconnect (to another replica) with `since`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any

from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from tornado.iostream import StreamClosedError
from tornado.web import url
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from contract import eventstream
from contract.values import object_id_text
from runtime.httpserver import ascii_whole_number
from server.eventfeed import Follower, LiveEvent
from server.handlers.base import ApiHandler, ParameterProblems
from server.metrics import EVENT_CLIENTS, EVENT_CLIENTS_DROPPED
from server.problems import ApiError

log = logging.getLogger(__name__)

SUBPROTOCOL = "balcao.v1"
BEARER_SUBPROTOCOL = "bearer."
CLOSE_GONE = 4410
CLOSE_SLOW = 4008
CLOSE_SHUTDOWN = 1001
# Names a token would have in a query string; any of them is refused outright.
QUERY_TOKEN_NAMES = ("token", "access_token", "api_token", "bearer", "authorization", "auth")
_PLATFORM = re.compile(r"[a-z0-9_-]{1,32}")
# Stream sequences are unsigned 64-bit: at most 20 digits; 18 keep int() trivially cheap
# and reach further than any stream will.
MAX_EVENT_ID_DIGITS = 18


class EventClients:
    """The event-stream connections of this replica: counted, capped, closed at shutdown."""

    def __init__(self, max_total: int, max_per_token: int) -> None:
        self.max_total = max_total
        self.max_per_token = max_per_token
        self.by_token: dict[str, int] = {}
        self.connections: set[EventsHandler] = set()

    @property
    def total(self) -> int:
        return sum(self.by_token.values())

    def admit(self, handler: EventsHandler) -> None:
        """Count `handler` now, or raise the refusal: counted before the request's first
        await, so concurrent upgrades cannot all pass a check made before any was counted."""
        refusal = self.refusal(handler.token_key)
        if refusal is not None:
            raise refusal
        self.add(handler)

    def refusal(self, token_key: str) -> ApiError | None:
        if self.total >= self.max_total:
            return ApiError(
                503,
                f"this replica serves its maximum of {self.max_total} event clients; "
                "try again shortly or another replica",
                kind="too-many-event-clients",
                headers={"Retry-After": "5"},
            )
        if self.by_token.get(token_key, 0) >= self.max_per_token:
            return ApiError(
                429,
                f"this token already has {self.max_per_token} event connections on this replica; close one first",
                kind="too-many-event-clients",
                headers={"Retry-After": "5"},
            )
        return None

    def add(self, handler: EventsHandler) -> None:
        self.by_token[handler.token_key] = self.by_token.get(handler.token_key, 0) + 1
        self.connections.add(handler)
        EVENT_CLIENTS.labels(transport=handler.transport).inc()

    def remove(self, handler: EventsHandler) -> None:
        if handler not in self.connections:
            return
        self.connections.discard(handler)
        left = self.by_token.get(handler.token_key, 1) - 1
        if left > 0:
            self.by_token[handler.token_key] = left
        else:
            self.by_token.pop(handler.token_key, None)
        EVENT_CLIENTS.labels(transport=handler.transport).dec()

    async def drain(self) -> None:
        """At shutdown: tell every client to go elsewhere, so the HTTP drain does not wait on them."""
        for handler in list(self.connections):
            handler.end(CLOSE_SHUTDOWN, "server shutting down; reconnect with since")


class EventsHandler(WebSocketHandler, ApiHandler):  # type: ignore[misc]
    SUPPORTED_METHODS = ("GET",)

    def initialize(self) -> None:
        self.transport = "websocket"
        self.token_key = ""
        self.since: int | None = None
        self.filter = eventstream.filter_subject()
        self.gone: str | None = None
        self._follower: Follower | None = None
        self._buffer_limit = self.services.config.events_client_buffer_bytes
        self._buffered = 0
        self._closed = asyncio.Event()
        self._ended = False

    # -- before the upgrade ---------------------------------------------------

    async def prepare(self) -> None:  # type: ignore[override]  # Tornado awaits a coroutine prepare
        named = [name for name in self.request.query_arguments if name.lower() in QUERY_TOKEN_NAMES]
        if named:
            raise ApiError(
                401,
                f"a token in the query string ({named[0]}) is refused: query strings land "
                "in logs; send `Authorization: Bearer <token>` or the subprotocol "
                "`bearer.<token>`",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="balcao"'},
            )
        offered = self._subprotocol_token()
        if offered is not None and "Authorization" not in self.request.headers:
            self.request.headers["Authorization"] = f"Bearer {offered}"
        ApiHandler.prepare(self)  # the one bearer check every /v1 route goes through
        token = self.request.headers["Authorization"].partition(" ")[2].strip()
        self.token_key = hashlib.sha256(token.encode()).hexdigest()[:16]
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            accept = self.request.headers.get("Accept", "")
            if "text/event-stream" not in accept:
                raise ApiError(
                    406,
                    "open /v1/events as a WebSocket, or send `Accept: text/event-stream` for Server-Sent Events",
                    kind="not-acceptable",
                )
            self.transport = "sse"
        self._read_parameters()
        self.services.event_clients.admit(self)  # released by _stop_following, whichever way this ends
        try:
            await self._check_since()
            # Before the upgrade, so that joining it is immediate once the client is
            # told the connection is open: it gets every event dispatched from then on.
            try:
                await self.services.event_feed.start()
            except (NatsError, asyncio.TimeoutError) as exc:
                raise _stream_unreachable() from exc
        except BaseException:
            self._stop_following()
            raise

    def _subprotocol_token(self) -> str | None:
        header = self.request.headers.get("Sec-WebSocket-Protocol", "")
        for offered in (part.strip() for part in header.split(",")):
            if offered.startswith(BEARER_SUBPROTOCOL):
                return offered[len(BEARER_SUBPROTOCOL) :]
        return None

    def _read_parameters(self) -> None:
        params = ParameterProblems(self)
        raw_since, since_from = params.raw("since", strip=True), ("since", "query")
        if self.transport == "sse" and self.request.headers.get("Last-Event-ID"):
            raw_since, since_from = self.request.headers["Last-Event-ID"], ("Last-Event-ID", "header")
        if raw_since is not None:
            self.since = ascii_whole_number(raw_since, MAX_EVENT_ID_DIGITS)
            if self.since is None:
                name, where = since_from
                params.add(name, "must be an event id (a whole number in ASCII digits)", where)
        raw_session = params.raw("session", strip=True)
        session = None if raw_session is None else object_id_text(raw_session)
        if raw_session is not None and session is None:
            params.add("session", "must be a session id (24 hex digits)")
        platform = params.raw("platform", strip=True)
        if platform is not None:
            platform = platform.lower()
            if not _PLATFORM.fullmatch(platform):
                params.add("platform", "must be a platform name such as telegram")
        kind = params.raw("type", strip=True)
        if kind is not None and kind not in eventstream.KINDS:
            params.add("type", f"must be one of {', '.join(eventstream.KINDS)}")
        params.check()
        self.filter = eventstream.filter_subject(kind, platform, session)

    async def _check_since(self) -> None:
        if self.since is None:
            return
        try:
            info = await self.services.jetstream.stream_info(eventstream.EVENTS_STREAM)
        except NotFoundError:
            return
        except (NatsError, asyncio.TimeoutError) as exc:
            raise _stream_unreachable() from exc
        first = info.state.first_seq
        if self.since + 1 < first:
            self.gone = (
                f"event {self.since} is no longer kept (oldest kept: {first}); "
                "reload the sessions and reconnect without since"
            )
            if self.transport == "sse":
                raise ApiError(410, self.gone, kind="events-gone")

    # -- WebSocket ------------------------------------------------------------

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # Never echo the bearer subprotocol: the response would carry the token.
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    @property
    def ping_interval(self) -> float | None:
        return self.services.config.events_ping_interval

    @property
    def ping_timeout(self) -> float | None:
        return self.services.config.events_ping_timeout

    @property
    def max_message_size(self) -> int:
        return 4096  # clients say nothing on this socket; bound what they may send

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        if self.gone:
            EVENT_CLIENTS_DROPPED.labels(reason="gone").inc()
            self.close(CLOSE_GONE, self.gone[:120])
            return
        await self._follow()

    def on_message(self, message: str | bytes) -> None:
        pass  # nothing to say to the server; pongs are handled by Tornado

    def on_close(self) -> None:
        self._stop_following()

    # -- Server-Sent Events ---------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.transport == "websocket":
            await WebSocketHandler.get(self, *args, **kwargs)
            return
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold events back
        self.clear_header("Allow")
        await self.flush()
        await self._follow()
        interval = self.services.config.events_ping_interval or 30.0
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), interval)
            except asyncio.TimeoutError:
                self._send(b": ping\n\n")  # a dead connection shows up as a failed write
        self._stop_following()
        if not self._ended:
            self._ended = True
            try:
                self.finish()
            except (StreamClosedError, RuntimeError):
                pass

    def on_connection_close(self) -> None:
        if self.transport == "websocket":
            WebSocketHandler.on_connection_close(self)
        self._closed.set()
        self._stop_following()

    def on_finish(self) -> None:
        if self.transport == "sse":
            self._closed.set()
        if self.transport == "sse" or self.get_status() != 101:
            # An event stream that ended, or an upgrade refused (a bad handshake):
            # its place among the clients is free. An accepted WebSocket frees it on close.
            self._stop_following()

    # -- both -----------------------------------------------------------------

    async def _follow(self) -> None:
        self._follower = Follower(
            self.services.event_feed, self.filter, self.since, self._send_event, self._buffer_limit
        )
        try:
            await self._follower.start()
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("event stream subscription failed: %r", exc)
            self.end(1011 if self.transport == "websocket" else 0, "event stream unavailable; reconnect")
            return
        if self._closed.is_set():  # the client left while we subscribed
            self._stop_following()

    def _send_event(self, event: LiveEvent) -> bool:
        if self.transport == "sse":
            return self._send(event.sse)
        return self._send(event.websocket_frame, framed=True)

    def _send(self, frame: bytes, framed: bool = False) -> bool:
        """Write without waiting; False if the frame was not written (client gone or cut off).

        A `framed` WebSocket frame, built once for every client, goes straight to
        the connection's stream: `write_message` would frame it again per client
        and wrap each write in a task, a third of the fan-out's time in profiles.
        """
        if self._ended:
            return False
        size = len(frame)
        if self._buffered + size > self._buffer_limit:
            # The client does not read: Tornado would buffer without bound. Cut it off.
            EVENT_CLIENTS_DROPPED.labels(reason="slow").inc()
            log.info("event client dropped: %d bytes unread", self._buffered)
            self.end(CLOSE_SLOW, "client too slow: its unread events went over the buffer limit")
            return False
        self._buffered += size
        try:
            if framed:
                written = self._write_frame(frame)
            elif self.transport == "websocket":
                written = self.write_message(frame)
            else:
                self.write(frame)
                written = self.flush()
        except (WebSocketClosedError, StreamClosedError, RuntimeError):
            self._closed.set()
            return False

        def done(future: asyncio.Future) -> None:
            self._buffered -= size
            if not future.cancelled():
                future.exception()  # a closed stream is noticed by on_connection_close

        written.add_done_callback(done)
        return True

    def _write_frame(self, frame: bytes) -> asyncio.Future:
        connection = self.ws_connection
        if connection is None or connection.is_closing() or connection.stream is None:
            raise WebSocketClosedError()
        return connection.stream.write(frame)

    def end(self, code: int, reason: str) -> None:
        """Close the connection (a WebSocket with `code`) and stop reading the stream."""
        self._stop_following()
        if self._ended:
            return
        self._ended = True
        if self.transport == "websocket":
            self.close(code, reason)
        else:
            self._closed.set()
            try:
                self.finish()
            except (StreamClosedError, RuntimeError):
                pass

    def _stop_following(self) -> None:
        self.services.event_clients.remove(self)
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.close()


default_handlers = [
    url(r"/v1/events", EventsHandler, name="events"),
]


def _stream_unreachable() -> ApiError:
    return ApiError(
        503, "the event stream is not reachable; try again shortly", kind="unavailable", headers={"Retry-After": "5"}
    )
