"""An HTTP server that can wait for its requests in flight before closing connections.

Tornado's `close_all_connections()` closes sockets under requests still being
served. This server counts each request from its headers to the end of its
response (or the client going away first), so shutdown can stop accepting, let
what is in flight finish, and only then close the idle keep-alive connections.
It works below the handlers, so no handler has to cooperate.

It also guards what clients may cost before any handler (and so before the
bearer check) runs:

- Request bodies. Tornado's own `max_body_size` answers a bare `400` with no
  body, or closes the connection, and applies to every route alike. Here the
  limit is `body_limit` (HTTP_MAX_BODY_BYTES), and a route that streams raises
  it for itself with `request.connection.set_max_body_size()`, after
  authentication (the import uploads). A body over the limit on a route that
  does not stream is never buffered: its bytes are dropped and the answer is a
  413 problem document, sent when the body has ended if little of it remains
  (so the client reads it), or at once with the connection closed after it.
  A streaming route sees a declared length itself and refuses it as it
  likes; a chunked body over the route's limit is answered 413 here too.
- Connections. Beyond `max_connections` open at once, a new connection gets a
  503 problem document and is closed, so slow clients cannot use up every
  socket and file descriptor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado import httputil, iostream
from tornado.httpserver import HTTPServer

from server.handlers.base import PROBLEM_TYPE_ROOT
from server.metrics import HTTP_REFUSED

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

DEFAULT_BODY_LIMIT = 64 * 1024
# The connection's own limit: the guard below enforces `body_limit` itself, so
# Tornado never answers its bare 400 (an integer, since Tornado compares with it).
UNLIMITED = 2**62
# A refused body this much over the limit is still read (and dropped) so the
# client, which is usually still sending, reads the 413 rather than a reset.
LINGER_BYTES = 1024 * 1024
# At most one warning per this many seconds about refused connections.
REFUSAL_LOG_INTERVAL = 60.0


class DrainingHTTPServer(HTTPServer):
    def initialize(
        self,
        *args: Any,
        max_connections: int | None = None,  # Tornado's constructor hook
        **kwargs: Any,
    ) -> None:
        self.body_limit = kwargs.get("max_body_size") or DEFAULT_BODY_LIMIT
        kwargs["max_body_size"] = UNLIMITED
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.refused_connections = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            self._refuse_connection(stream)
            return
        super().handle_stream(stream, address)

    def _refuse_connection(self, stream: iostream.IOStream) -> None:
        self.refused_connections += 1
        HTTP_REFUSED.labels(reason="too-many-connections").inc()
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged_at = now
            log.warning(
                "refusing connections: %d are open, the most HTTP_MAX_CONNECTIONS allows (%d refused so far)",
                len(self._connections),
                self.refused_connections,
            )
        body = problem_body(
            503, "Service Unavailable", "the server has too many open connections; try again shortly", "unavailable", ""
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            stream.write(head.encode("ascii") + body).add_done_callback(lambda _: stream.close())
        except iostream.StreamClosedError:
            stream.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        tracked = _TrackedConnection(self, request_conn)
        return _TrackedDelegate(super().start_request(server_conn, tracked), tracked)

    def stop_accepting(self) -> None:
        """No new connections; responses on existing ones ask the client to close."""
        self.draining = True
        self.stop()

    async def drain(self, timeout: float) -> bool:
        """Wait for the requests in flight; False if some remain when `timeout` runs out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _begin(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()


class _TrackedConnection:
    """The request's connection as handlers see it, reporting the end of the response."""

    def __init__(self, server: DrainingHTTPServer, connection: httputil.HTTPConnection) -> None:
        self._server = server
        self._connection = connection
        self._state = "new"  # -> "active" -> "done"
        self.body_limit = server.body_limit
        self.responded = False

    def set_max_body_size(self, max_body_size: int) -> None:
        """A streaming route raises (or lowers) its own limit; the guard enforces it."""
        self.body_limit = max_body_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def begin(self) -> None:
        if self._state == "new":
            self._state = "active"
            self._server._begin()

    def end(self) -> None:
        if self._state == "active":
            self._state = "done"
            self._server._end()

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Any:
        self.responded = True
        if self._server.draining and isinstance(start_line, httputil.ResponseStartLine):
            headers["Connection"] = "close"  # so keep-alive clients go elsewhere next time
        return self._connection.write_headers(start_line, headers, chunk)

    def finish(self) -> None:
        try:
            self._connection.finish()
        finally:
            self.end()


class _TrackedDelegate(httputil.HTTPMessageDelegate):
    def __init__(self, delegate: httputil.HTTPMessageDelegate, connection: _TrackedConnection) -> None:
        self._delegate = delegate
        self._connection = connection
        self._start_line: httputil.RequestStartLine | None = None
        self._declared: int | None = None
        self._received = 0
        self._dropping = False  # the body is over the limit: its bytes go nowhere

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self._connection.begin()
        self._start_line = start_line
        self._declared = declared_length(headers)
        result = self._delegate.headers_received(start_line, headers)
        if result is None:
            self._check_declared()
            return None
        return self._checked_after(result)

    async def _checked_after(self, result: Any) -> None:
        await result  # a streaming route's prepare(), which may raise its limit
        self._check_declared()

    def _check_declared(self) -> None:
        limit = self._connection.body_limit
        if self._declared is None or self._declared <= limit or self._connection.responded:
            return
        if self._streams():
            return  # the route sees the length and refuses the body itself (imports linger)
        self._dropping = True
        if self._declared - limit > LINGER_BYTES:
            self._answer_too_large()  # not worth reading: answer, then close

    def _streams(self) -> bool:
        # Tornado's routing delegate keeps the handler's delegate, which knows
        # whether the handler class is decorated with @stream_request_body.
        target = getattr(self._delegate, "delegate", None)
        return bool(getattr(target, "stream_request_body", False))

    def data_received(self, chunk: bytes) -> Any:
        self._received += len(chunk)
        if not self._dropping and self._declared is None and self._received > self._connection.body_limit:
            # A chunked body passed the limit. A streaming handler waiting for the
            # rest is told the client left when the connection closes after this
            # answer, and returns without answering itself.
            self._dropping = True
            if not self._connection.responded:
                self._answer_too_large()
        if self._dropping:
            return None
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        if self._dropping:
            if not self._connection.responded:
                self._answer_too_large(closing=False)  # the whole body was read: the connection stays usable
            self._delegate.on_connection_close()  # the handler was never run; let go of it
            return
        self._delegate.finish()

    def on_connection_close(self) -> None:
        # The client left before its request was read whole: no response will follow.
        try:
            self._delegate.on_connection_close()
        finally:
            self._connection.end()

    def _answer_too_large(self, *, closing: bool = True) -> None:
        limit = self._connection.body_limit
        size = f"{self._declared} bytes" if self._declared is not None else f"over {limit} bytes"
        path = self._start_line.path.split("?")[0] if self._start_line is not None else ""
        body = problem_body(
            413,
            "Content Too Large",
            f"the body is {size}; this request takes at most {limit} bytes",
            "payload-too-large",
            path,
        )
        headers = httputil.HTTPHeaders(
            {"Content-Type": "application/problem+json", "Content-Length": str(len(body)), "Cache-Control": "no-store"}
        )
        if closing:
            # Tornado closes a connection whose request body is still unread once
            # the answer is out; say so, as RFC 9112 asks.
            headers["Connection"] = "close"
        method = self._start_line.method if self._start_line is not None else "-"
        access_log.warning("413 %s %s: a body of %s refused", method, path, size)
        HTTP_REFUSED.labels(reason="body-too-large").inc()
        try:
            self._connection.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", 413, "Content Too Large"), headers, body
            )
        finally:
            self._connection.finish()


def declared_length(headers: httputil.HTTPHeaders) -> int | None:
    """The Content-Length, when it is one clear number (Tornado refuses the rest itself)."""
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    pieces = {piece.strip() for piece in raw.split(",")}
    value = pieces.pop() if len(pieces) == 1 else ""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 19 else None


def problem_body(status: int, title: str, detail: str, kind: str, instance: str) -> bytes:
    """An RFC 9457 problem document, for answers given before any handler runs."""
    return json.dumps(
        {"type": PROBLEM_TYPE_ROOT + kind, "title": title, "status": status, "detail": detail, "instance": instance}
    ).encode()
