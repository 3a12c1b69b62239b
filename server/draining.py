"""An HTTP server that can wait for its requests in flight before closing connections.

Tornado's `close_all_connections()` closes sockets under requests still being
served. This server counts each request from its headers to the end of its
response (or the client going away first), so shutdown can stop accepting, let
what is in flight finish, and only then close the idle keep-alive connections.
It works below the handlers, so no handler has to cooperate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer


class DrainingHTTPServer(HTTPServer):
    def initialize(self, *args: Any, **kwargs: Any) -> None:  # Tornado's constructor hook
        super().initialize(*args, **kwargs)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
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

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders,
                      chunk: bytes | None = None) -> Any:
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

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self._connection.begin()
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        # The client left before its request was read whole: no response will follow.
        try:
            self._delegate.on_connection_close()
        finally:
            self._connection.end()
