"""The HTTP server every Balcão listener runs on: it guards what clients may cost, and drains.

The API server and the bot's webhook listener both serve whoever reaches their
port, so both run on this server. Tornado is imported here, and this module is
imported only by the server and by `bot.webhook`: a bot that polls needs neither.

Draining. Tornado's `close_all_connections()` closes sockets under requests
still being served. This server counts each request from its headers to the
end of its response (or the client going away first), so shutdown can stop
accepting, let what is in flight finish, and only then close the idle
keep-alive connections. It works below the handlers, so no handler has to
cooperate.

Guards, applied before any handler (and so before any token or secret is
checked) runs:

- Connections. Beyond `max_connections` open at once, a new connection gets a
  503 problem document and is closed, so slow clients cannot use up every
  socket and file descriptor. One address may hold at most
  `max_connections_per_address` of them (429 beyond), so one client cannot
  take them all from the others. Behind a proxy (`xheaders`) every connection
  comes from the proxy: the address is then the client's as the proxy wrote it
  (`X-Real-Ip`, `X-Forwarded-For`), and what it may hold is requests in flight,
  since the connections are the proxy's.
- Numbers. A `Content-Length` that is not ASCII digits (`²` passes
  `str.isdigit()` and fails `int()`) is a 400 naming the header; no handler sees
  it.
- Bodies. GET, HEAD and DELETE take none (RFC 9110 gives their content no
  meaning): one declared or chunked is refused before any of it is read. Every
  other route takes at most `body_limit` bytes (HTTP_MAX_BODY_BYTES); a route
  that needs another limit sets it with `request.connection.set_max_body_size()`
  in its `prepare()` (an import upload raises it once the token is checked), and
  then answers a declared length over it itself. A body over the limit is never
  buffered: its bytes are dropped and the answer is a problem document, sent
  when the body has ended if little of it remains (so the client reads it), or
  at once with the connection closed after it. A chunked body is cut off here
  when it passes the route's limit, whatever the route.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tornado import httputil, iostream
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.httpserver import HTTPServer
from tornado.netutil import is_valid_ip

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")

PROBLEM_TYPE_ROOT = "https://balcao.dev/problems/"
DEFAULT_BODY_LIMIT = 64 * 1024
# The connection's own limit: the guard below enforces `body_limit` itself, so
# Tornado never answers its bare 400 (an integer, since Tornado compares with it).
UNLIMITED = 2**62
# A refused body this much over the limit is still read (and dropped) so the
# client, which is usually still sending, reads the answer rather than a reset.
LINGER_BYTES = 1024 * 1024
# At most one warning per this many seconds about refused connections.
REFUSAL_LOG_INTERVAL = 60.0
# RFC 9110 9.3.1, 9.3.2, 9.3.5: content in these requests has no defined meaning.
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE"})
# No body this server takes comes near 10**18 bytes, and int() of 18 digits is cheap.
MAX_LENGTH_DIGITS = 18
# An IPv6 host is handed a whole /64 by its provider, so it can write from any
# address in it: its addresses count as one.
IPV6_HOST_PREFIX = 64
# What a refusal is counted under (`refused(reason)`, e.g. a metric's label).
REFUSAL_REASONS = (
    "too-many-connections",
    "too-many-connections-per-address",
    "body-too-large",
    "body-not-allowed",
    "bad-content-length",
)


@dataclass(frozen=True)
class Refusal:
    """An answer the guard gives instead of the handler."""

    status: int
    title: str
    detail: str
    kind: str
    reason: str  # the `reason` of the refusal metric and the access log line
    headers: tuple[tuple[str, str], ...] = ()


class GuardedHTTPServer(HTTPServer):
    def initialize(
        self,
        *args: Any,
        max_connections: int | None = None,  # Tornado's constructor hook
        max_connections_per_address: int | None = None,
        refused: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.body_limit = kwargs.get("max_body_size") or DEFAULT_BODY_LIMIT
        kwargs["max_body_size"] = UNLIMITED
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.max_per_address = max_connections_per_address
        self.refused = refused or (lambda reason: None)
        self.refused_connections = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL
        # Open connections by client address (direct), or requests in flight (behind a proxy).
        self.by_address: Counter[str] = Counter()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    # -- connections ------------------------------------------------------------

    def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            self._refuse_connection(stream, 503, "the server has too many open connections; try again shortly")
            return
        if self._counts_connections:
            peer = address_key(address)
            if self.by_address[peer] >= self.max_per_address:  # type: ignore[operator]
                self._refuse_connection(
                    stream,
                    429,
                    f"your address has {self.by_address[peer]} connections open, the most one address may; "
                    "close some or reuse them",
                )
                return
            self.by_address[peer] += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        if self._counts_connections:
            self._forget(address_key(server_conn.context.address))  # type: ignore[attr-defined]

    @property
    def _counts_connections(self) -> bool:
        # Behind a proxy every connection is the proxy's; requests are counted instead.
        return self.max_per_address is not None and not self.xheaders

    def _forget(self, key: str) -> None:
        self.by_address[key] -= 1
        if self.by_address[key] <= 0:
            del self.by_address[key]

    def _refuse_connection(self, stream: iostream.IOStream, status: int, detail: str) -> None:
        self.refused_connections += 1
        reason = "too-many-connections" if status == 503 else "too-many-connections-per-address"
        self.refused(reason)
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged_at = now
            log.warning(
                "refusing connections (%s): %d are open (%d refused so far)",
                reason,
                len(self._connections),
                self.refused_connections,
            )
        title = "Service Unavailable" if status == 503 else "Too Many Requests"
        kind = "unavailable" if status == 503 else "too-many-connections"
        body = problem_body(status, title, detail, kind, "")
        head = (
            f"HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            stream.write(head.encode("ascii") + body).add_done_callback(lambda _: stream.close())
        except iostream.StreamClosedError:
            stream.close()

    # -- requests ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        tracked = _TrackedConnection(self, request_conn)  # type: ignore[arg-type]
        return _TrackedDelegate(super().start_request(server_conn, tracked), tracked)  # type: ignore[arg-type]

    def admit(self, headers: httputil.HTTPHeaders) -> Refusal | None:
        """Why the request is refused before its route is even looked up, if it is."""
        raw_length = headers.get("Content-Length")
        if raw_length is not None and declared_length(headers) is None:
            return Refusal(
                400,
                "Bad Request",
                f"Content-Length must be one whole number of bytes in ASCII digits, got {raw_length[:40]!r}",
                "invalid-header",
                "bad-content-length",
            )
        return None

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

    def _admit_client(self, client: str) -> Refusal | None:
        """Behind a proxy: count the client's request in flight, or refuse it over the cap."""
        if self.max_per_address is None or not self.xheaders:
            return None
        if self.by_address[client] >= self.max_per_address:
            return Refusal(
                429,
                "Too Many Requests",
                f"your address has {self.by_address[client]} requests in flight, the most one address may; "
                "wait for some to end",
                "too-many-connections",
                "too-many-connections-per-address",
                (("Retry-After", "1"),),
            )
        self.by_address[client] += 1
        return None


class _TrackedConnection:
    """The request's connection as handlers see it, reporting the end of the response."""

    def __init__(self, server: GuardedHTTPServer, connection: httputil.HTTPConnection) -> None:
        self._server = server
        self._connection = connection
        self._state = "new"  # -> "active" -> "done"
        self.body_limit = server.body_limit
        self.route_limited = False  # the route set its own limit and answers declared lengths over it
        self.client: str | None = None  # counted in the server's requests by address (behind a proxy)
        self.responded = False

    def set_max_body_size(self, max_body_size: int) -> None:
        """A streaming route sets its own limit: it refuses declared lengths over it, the guard chunked ones."""
        self.body_limit = max_body_size
        self.route_limited = True

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
            if self.client is not None:
                self._server._forget(self.client)
                self.client = None

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
        self._chunked = False
        self._refusal: Refusal | None = None  # set: the body's bytes go nowhere, this answers
        self._delegated = False  # the handler's side has seen the request

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self._connection.begin()
        self._start_line = start_line
        server = self._connection._server
        refusal = server.admit(headers)
        if refusal is None and server.xheaders:
            client = address_key(forwarded_address(headers, self._connection.context.remote_ip))
            refusal = server._admit_client(client)
            if refusal is None:
                self._connection.client = client
        if refusal is not None:
            self._refuse_before_handler(refusal, headers)
            return None
        self._declared = declared_length(headers)
        self._chunked = is_transfer_encoding_chunked(headers)
        self._delegated = True
        # The route is looked up (and a streaming route's prepare() run) before
        # any byte of the body is read.
        result = self._delegate.headers_received(start_line, headers)
        if result is None:
            self._check_body()
            return None
        return self._checked_after(result)

    def _refuse_before_handler(self, refusal: Refusal, headers: httputil.HTTPHeaders) -> None:
        self._refusal = refusal
        self._declared = declared_length(headers)
        if "Content-Length" in headers and self._declared is None:
            # Its length cannot be known, so no byte of it is read: Tornado would
            # otherwise fail on the header and write a bare 400 after this answer.
            del headers["Content-Length"]
            self._answer(closing=True)
        elif is_transfer_encoding_chunked(headers) or (self._declared or 0) > LINGER_BYTES:
            self._answer(closing=True)  # not worth reading: answer, then close

    async def _checked_after(self, result: Any) -> None:
        await result  # a streaming route's prepare(), which may set its own limit
        self._check_body()

    def _check_body(self) -> None:
        if self._connection.responded:
            return
        method = self._start_line.method if self._start_line is not None else ""
        if method in BODILESS_METHODS and (self._declared or self._chunked) and self._route_takes(method):
            # A method the route does not take is its 405 to answer.
            self._refusal = Refusal(
                400,
                "Bad Request",
                f"a {method} request takes no body; send it without one",
                "body-not-allowed",
                "body-not-allowed",
            )
            if self._chunked or (self._declared or 0) > LINGER_BYTES:
                self._answer(closing=True)  # not worth reading: answer, then close
            return
        limit = self._connection.body_limit
        if self._declared is None or self._declared <= limit:
            return
        if self._connection.route_limited:
            return  # the route sees the length and refuses the body itself (imports linger)
        self._refusal = _too_large(f"{self._declared} bytes", limit)
        if self._declared - limit > LINGER_BYTES:
            self._answer(closing=True)  # not worth reading: answer, then close

    def _route_takes(self, method: str) -> bool:
        # Tornado's routing delegate keeps the handler's delegate (behind the
        # proxy adapter when xheaders is on), which knows the handler class.
        target: Any = self._delegate
        for _ in range(3):
            handler_class = getattr(target, "handler_class", None)
            if handler_class is not None:
                return method in handler_class.SUPPORTED_METHODS
            target = getattr(target, "delegate", None)
        return True

    def data_received(self, chunk: bytes) -> Any:
        self._received += len(chunk)
        if self._refusal is None and self._declared is None and self._received > self._connection.body_limit:
            # A chunked body passed the limit. A streaming handler waiting for the
            # rest is told the client left when the connection closes after this
            # answer, and returns without answering itself.
            self._refusal = _too_large(f"over {self._connection.body_limit} bytes", self._connection.body_limit)
            self._answer(closing=True)
        elif self._refusal is not None and self._received > LINGER_BYTES and not self._connection.responded:
            self._answer(closing=True)  # lingered long enough
        if self._refusal is not None:
            return None
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        if self._refusal is not None:
            if not self._connection.responded:
                self._answer(closing=False)  # the whole body was read: the connection stays usable
            if self._delegated:
                self._delegate.on_connection_close()  # the handler was never run; let go of it
            else:
                self._connection.end()
            return
        self._delegate.finish()

    def on_connection_close(self) -> None:
        # The client left before its request was read whole: no response will follow.
        try:
            if self._delegated:
                self._delegate.on_connection_close()
        finally:
            self._connection.end()

    def _answer(self, *, closing: bool) -> None:
        refusal = self._refusal
        assert refusal is not None
        if self._connection.responded:
            return
        path = self._start_line.path.split("?")[0] if self._start_line is not None else ""
        body = problem_body(refusal.status, refusal.title, refusal.detail, refusal.kind, path)
        headers = httputil.HTTPHeaders(
            {"Content-Type": "application/problem+json", "Content-Length": str(len(body)), "Cache-Control": "no-store"}
        )
        for name, value in refusal.headers:
            headers[name] = value
        if closing:
            # Tornado closes a connection whose request body is still unread once
            # the answer is out; say so, as RFC 9112 asks.
            headers["Connection"] = "close"
        method = self._start_line.method if self._start_line is not None else "-"
        access_log.warning("%d %s %s refused: %s", refusal.status, method, path, refusal.detail)
        self._connection._server.refused(refusal.reason)
        try:
            self._connection.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", refusal.status, refusal.title), headers, body
            )
        finally:
            self._connection.finish()


def _too_large(size: str, limit: int) -> Refusal:
    return Refusal(
        413,
        "Content Too Large",
        f"the body is {size}; this request takes at most {limit} bytes",
        "payload-too-large",
        "body-too-large",
    )


def declared_length(headers: httputil.HTTPHeaders) -> int | None:
    """The Content-Length, when it is one clear number in ASCII digits; None when absent or not one."""
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    pieces = {piece.strip() for piece in raw.split(",")}
    value = pieces.pop() if len(pieces) == 1 else ""
    return ascii_whole_number(value, MAX_LENGTH_DIGITS)


def ascii_whole_number(raw: str, max_digits: int) -> int | None:
    """`raw` as a whole number when it is 1 to `max_digits` ASCII digits; None otherwise.

    `str.isdigit()` alone takes superscripts and other scripts' digits, some of
    which `int()` then refuses (a 500) and some it reads (`int("١٢")` is 12);
    the length is checked first because `int()` refuses over 4,300 digits.
    """
    if not (raw.isascii() and raw.isdigit() and len(raw) <= max_digits):
        return None
    return int(raw)


def forwarded_address(headers: httputil.HTTPHeaders, peer: str) -> str:
    """The client's address as a proxy in front wrote it, read as Tornado's `xheaders` reads it."""
    forwarded = headers.get("X-Forwarded-For", peer).split(",")[-1].strip()
    address = headers.get("X-Real-Ip", forwarded)
    return address if is_valid_ip(address) else peer


def address_key(address: Any) -> str:
    """What counts as one client: an IPv4 address, or an IPv6 host's /64."""
    host = address[0] if isinstance(address, tuple) and address else address
    if not isinstance(host, str):
        return ""  # a Unix socket: one local client
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_HOST_PREFIX}", strict=False))
    return str(ip)


def problem_body(status: int, title: str, detail: str, kind: str, instance: str) -> bytes:
    """An RFC 9457 problem document, for answers given before any handler runs."""
    return json.dumps(
        {"type": PROBLEM_TYPE_ROOT + kind, "title": title, "status": status, "detail": detail, "instance": instance}
    ).encode()
