"""The guarded HTTP server drains: requests in flight finish, new connections are refused."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httputil import HTTPHeaders
from tornado.web import Application, RequestHandler

from devstack.processes import free_port
from runtime.httpserver import GuardedHTTPServer, address_key, ascii_whole_number, forwarded_address


class SlowHandler(RequestHandler):
    def initialize(self, started: asyncio.Event, release: asyncio.Event) -> None:
        self.started, self.release = started, release

    async def get(self) -> None:
        self.started.set()
        await self.release.wait()
        self.finish({"done": True})


class QuickHandler(RequestHandler):
    def get(self) -> None:
        self.finish("ok")


@pytest_asyncio.fixture
async def served():
    started, release = asyncio.Event(), asyncio.Event()
    app = Application([(r"/slow", SlowHandler, {"started": started, "release": release}), (r"/quick", QuickHandler)])
    server = GuardedHTTPServer(app)
    port = free_port()
    server.listen(port, "127.0.0.1")
    client = AsyncHTTPClient(force_instance=True)
    yield server, f"http://127.0.0.1:{port}", client, started, release
    client.close()
    server.stop()
    await server.close_all_connections()


@pytest.mark.asyncio
async def test_drain_waits_for_the_request_in_flight(served) -> None:
    server, url, client, started, release = served
    response = asyncio.ensure_future(client.fetch(f"{url}/slow", request_timeout=5))
    await asyncio.wait_for(started.wait(), 5)
    assert server.in_flight == 1

    server.stop_accepting()
    assert not await server.drain(0.2)  # still in flight: the time runs out
    draining = asyncio.ensure_future(server.drain(5))
    await asyncio.sleep(0.1)
    assert not draining.done()
    release.set()
    assert await draining
    await server.close_all_connections()

    answered = await response
    assert answered.code == 200 and answered.body == b'{"done": true}'
    # Keep-alive clients are told not to come back to this process.
    assert answered.headers["Connection"] == "close"
    assert server.in_flight == 0
    with pytest.raises((ConnectionError, HTTPClientError, OSError)):
        await client.fetch(f"{url}/quick", request_timeout=2)


@pytest.mark.asyncio
async def test_finished_and_abandoned_requests_leave_nothing_in_flight(served) -> None:
    server, url, client, started, release = served
    for _ in range(3):
        assert (await client.fetch(f"{url}/quick")).body == b"ok"
    assert server.in_flight == 0

    # A client that sends headers and a partial body, then leaves.
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(b"POST /quick HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()
    await asyncio.sleep(0.1)
    assert server.in_flight == 1
    writer.close()
    await writer.wait_closed()
    assert await server.drain(2)
    assert (await client.fetch(f"{url}/quick")).code == 200
    assert server.in_flight == 0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        (("203.0.113.7", 50123), "203.0.113.7"),
        (("2001:db8:1:2:aaaa::1", 50123, 0, 0), "2001:db8:1:2::/64"),
        (("2001:db8:1:2:bbbb::9", 50123, 0, 0), "2001:db8:1:2::/64"),  # the same host's /64
        (("::ffff:203.0.113.7", 50123, 0, 0), "203.0.113.7"),
        ("/run/balcao.sock", "/run/balcao.sock"),
        (b"", ""),
        ("not an address", "not an address"),
    ],
)
def test_one_client_is_an_ipv4_address_or_an_ipv6_hosts_64(address, key) -> None:
    assert address_key(address) == key


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({}, "10.0.0.2"),
        ({"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9"),  # the proxy appends the last
        ({"X-Forwarded-For": "198.51.100.1", "X-Real-Ip": "203.0.113.5"}, "203.0.113.5"),
        ({"X-Real-Ip": "not-an-ip"}, "10.0.0.2"),
    ],
)
def test_behind_a_proxy_the_client_is_the_one_it_names(headers, client) -> None:
    assert forwarded_address(HTTPHeaders(headers), "10.0.0.2") == client


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        ("0", 0),
        ("42", 42),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, None),
        ("²", None),
        ("١٢", None),
        ("", None),
        ("-1", None),
    ],
)
def test_a_number_from_a_client_is_ascii_digits_or_none(raw, number) -> None:
    assert ascii_whole_number(raw, 18) == number
