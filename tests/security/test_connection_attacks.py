"""Attacks on connections, numbers and bodies, sent to a real server process.

One address holding every connection, digits that are not ASCII where a number
is read, bodies on requests that take none, upgrades racing the event-stream
cap. Each test checks the exact answer; those that send bulk also check the
server's resident memory and that it answers /ready throughout.

The clients here choose their source address (127.0.0.1, 127.0.0.2, ... all
reach the loopback server), so "another address" is a real one to the server.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pymongo.database import Database

from devstack.processes import NatsServer, free_port
from tests.harness import API_TOKEN, Process, eventually, reset_jetstream, stack_env, upgrade_headers
from tests.security.conftest import NO_TELEGRAM, Target
from tests.security.test_http_attacks import Watch
from tests.server import factories

MIB = 1024 * 1024
MAX_CONNECTIONS = 40
PER_ADDRESS = 10
EVENT_CLIENTS = 10
PROBLEM = "https://balcao.dev/problems/"
# Addresses of their own: the harness checks the port from 127.0.0.1.
ATTACKER = "127.0.0.4"
BYSTANDER = "127.0.0.5"
PROBE = "127.0.0.6"  # the /ready sampler's own address, so it takes no attacker's place


def server_env(nats_url: str, mongodb_uri: str, port: int, **extra: str) -> dict[str, str]:
    return {
        **stack_env(nats_url, mongodb_uri, NO_TELEGRAM),
        "HTTP_PORT": str(port),
        "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "HTTP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        "EVENTS_MAX_CLIENTS": str(EVENT_CLIENTS),
        **extra,
    }


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reset_jetstream(nats_server.url)
    port = free_port()
    log = Path(tmp_path_factory.mktemp("connection-attacks")) / "server.log"
    server = Process("server", server_env(nats_server.url, mongodb_uri, port), log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def connect(target: Target, source: str = ATTACKER) -> socket.socket:
    return socket.create_connection(("127.0.0.1", target.process.port), timeout=5, source_address=(source, 0))


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes] | None:
    """One HTTP response from `sock`, or None if none came within `timeout` (or the peer closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body
    except (TimeoutError, ConnectionError):
        return None


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    """A request as sent on the wire; header values are Latin-1, as HTTP/1.1 reads them."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def problem_of(answer: tuple[int, dict[str, str], bytes] | None) -> tuple[int, str, dict]:
    assert answer is not None, "no answer"
    status, headers, body = answer
    assert headers["content-type"] == "application/problem+json", headers
    problem = json.loads(body)
    return status, problem["type"].removeprefix(PROBLEM), problem


# --- one address, every connection ---------------------------------------------------


def test_one_address_holding_keep_alive_connections_leaves_the_others_served(target):
    """As many keep-alive connections from one address as the server takes in all:
    the address gets its share, the rest 429, and another address is still served."""
    socks = [connect(target) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in socks:
            sock.sendall(request("GET", "/health"))
        answers = [read_response(sock, timeout=10) for sock in socks]
        served = [answer for answer in answers if answer is not None and answer[0] == 200]
        refused = [answer for answer in answers if answer is not None and answer[0] == 429]
        assert (len(served), len(refused)) == (PER_ADDRESS, MAX_CONNECTIONS - PER_ADDRESS)
        for answer in refused:
            status, kind, problem = problem_of(answer)
            assert kind == "too-many-connections" and answer[1]["retry-after"] == "1"
            assert answer[1]["connection"] == "close"

        bystander = httpx.Client(transport=httpx.HTTPTransport(local_address=BYSTANDER), timeout=5)
        with bystander:
            assert bystander.get(f"{target.url}/health").status_code == 200
    finally:
        for sock in socks:
            sock.close()
    # The served connections were kept alive and are closed now: the address is served again.
    eventually(lambda: httpx.get(f"{target.url}/health", timeout=5).status_code == 200, message="served again")


# --- numbers in digits that are not ASCII ---------------------------------------------


@pytest.mark.parametrize("since", ["²", "١٢", "1_0", "7.0"])
def test_an_event_id_in_other_digits_is_a_400_naming_since(target, since):
    with target.client() as client:
        response = client.get("/v1/events", params={"since": since}, headers=upgrade_headers())
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [
        {"field": "since", "in": "query", "message": "must be an event id (a whole number in ASCII digits)"}
    ]


def test_a_last_event_id_in_other_digits_is_a_400_naming_the_header(target):
    sock = connect(target)
    try:
        auth = f"Authorization: Bearer {API_TOKEN}"
        sock.sendall(request("GET", "/v1/events", auth, "Accept: text/event-stream", "Last-Event-ID: ³"))
        status, kind, problem = problem_of(read_response(sock, timeout=10))
    finally:
        sock.close()
    assert (status, kind) == (400, "invalid-parameters")
    assert [(e["field"], e["in"]) for e in problem["errors"]] == [("Last-Event-ID", "header")]


# Superscripts are the digits Latin-1 holds beside ASCII's: str.isdigit() takes them, int() does not.
@pytest.mark.parametrize("length", ["²", "¹²", "-1", "1e3", "12345678901234567890"])
@pytest.mark.parametrize("path", ["/v1/imports", "/v1/sessions/0123456789abcdef01234567/messages", "/health"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400_before_any_handler(target, path, length):
    sock = connect(target)
    try:
        sock.sendall(request("POST", path, f"Content-Length: {length}", body=b"{}"))
        status, kind, problem = problem_of(read_response(sock, timeout=5))
    finally:
        sock.close()
    assert (status, kind) == (400, "invalid-header")
    assert "Content-Length" in problem["detail"]
    assert target.ready()


def test_a_channel_id_in_other_digits_is_refused(target, mongo: Database):
    with target.client() as client:
        response = client.post("/v1/imports", json={"channel": "-100١٢٣٤٥٦٧٨٩٠", "source": "x.csv"})
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == "channel"
    assert mongo["import_jobs"].count_documents({}) == 0


# --- bodies on requests that take none ------------------------------------------------


@pytest.fixture
def session(target, mongo: Database) -> dict:
    factories.bind(mongo)
    return factories.SessionFactory()


def test_a_huge_body_on_a_get_is_refused_before_any_of_it_is_read(target, session):
    """The messages route streams (for its POST); its GET must not read a body either."""
    sock = connect(target)
    path = f"/v1/sessions/{session['_id']}/messages"
    sock.sendall(request("GET", path, f"Authorization: Bearer {API_TOKEN}", f"Content-Length: {300 * MIB}"))
    answer = read_response(sock, timeout=5)  # nothing of the body sent yet
    status, kind, problem = problem_of(answer)
    assert (status, kind) == (400, "body-not-allowed") and answer[1]["connection"] == "close"

    def send_it_anyway() -> None:
        try:
            piece = b"x" * MIB
            for _ in range(300):
                sock.sendall(piece)
        except OSError:
            pass  # closed after the answer, as it should be

    with Watch(target, source=PROBE) as watch:
        sender = threading.Thread(target=send_it_anyway)
        sender.start()
        sender.join(60)
    sock.close()
    watch.check()


def test_a_delete_with_a_body_is_refused_and_finishes_nothing(target, session, mongo: Database):
    with target.client() as client:
        response = client.request("DELETE", f"/v1/sessions/{session['_id']}", content=b'{"why": "x"}')
        assert response.status_code == 400 and response.json()["type"] == PROBLEM + "body-not-allowed"
        # A small body is read and dropped: the connection serves the next request.
        assert client.get(f"/v1/sessions/{session['_id']}").status_code == 200
    assert mongo["sessions"].count_documents({"_id": session["_id"]}) == 1


def test_a_chunked_body_on_a_get_is_refused_at_once(target):
    sock = connect(target)
    try:
        sock.sendall(request("GET", "/health", "Transfer-Encoding: chunked"))
        status, kind, _ = problem_of(read_response(sock, timeout=5))
    finally:
        sock.close()
    assert (status, kind) == (400, "body-not-allowed")


def test_a_method_the_route_does_not_take_is_still_its_405(target):
    with target.client() as client:
        response = client.request("DELETE", "/v1/sessions", content=b"{}")
    assert response.status_code == 405


# --- the event-stream cap under concurrent upgrades -----------------------------------


def upgrade(target: Target, number: int, query: str = "since=0", **extra: str) -> socket.socket:
    """Upgrade request number `number`, from an address of its own (none reaches the per-address cap)."""
    sock = connect(target, source=f"127.0.{1 + number // 200}.{10 + number % 200}")
    headers = {"Authorization": f"Bearer {API_TOKEN}", **upgrade_headers(**extra)}
    sock.sendall(request("GET", f"/v1/events?{query}", *(f"{k}: {v}" for k, v in headers.items())))
    return sock


def status_line(sock: socket.socket) -> int | None:
    sock.settimeout(15)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except (TimeoutError, ConnectionError):
        return None
    return int(data.split(b" ", 2)[1])


def test_concurrent_upgrades_never_pass_the_event_client_cap(target):
    """Forty upgrades sent at once, each resuming (`since`, a NATS round trip
    before the upgrade): exactly the cap are accepted, every other one 503."""
    socks = [upgrade(target, n) for n in range(4 * EVENT_CLIENTS)]
    try:
        statuses = sorted(status_line(sock) or 0 for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [101] * EVENT_CLIENTS + [503] * (3 * EVENT_CLIENTS)

    def accepted_now() -> bool:
        again = [upgrade(target, n) for n in range(EVENT_CLIENTS)]
        try:
            return [status_line(sock) for sock in again] == [101] * EVENT_CLIENTS
        finally:
            for sock in again:
                sock.close()

    # Places are given back when clients leave, so as many are accepted again.
    eventually(accepted_now, timeout=30, message="the places of the closed clients given back")


def event_clients(target: Target) -> float:
    text = httpx.get(f"{target.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("balcao_event_clients{"))


def test_failed_handshakes_give_their_place_back(target):
    eventually(lambda: event_clients(target) == 0, message="no event client left from other tests")
    for n in range(2 * EVENT_CLIENTS):  # one after the other: each had a place, and gave it back
        broken = upgrade(target, n, **{"Sec-WebSocket-Version": "99"})
        try:
            assert status_line(broken) == 426
        finally:
            broken.close()
    good = [upgrade(target, n) for n in range(EVENT_CLIENTS)]
    try:
        assert [status_line(sock) for sock in good] == [101] * EVENT_CLIENTS
    finally:
        for sock in good:
            sock.close()


# --- behind a proxy: the client's address is the proxy's word -------------------------


@pytest.fixture(scope="module")
def proxied(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    port = free_port()
    env = server_env(nats_server.url, mongodb_uri, port, HTTP_TRUST_PROXY_HEADERS="true", EVENTS_MAX_CLIENTS="50")
    log = Path(tmp_path_factory.mktemp("proxied")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def test_behind_a_proxy_one_client_holds_at_most_its_share_of_requests_in_flight(proxied):
    """Behind a proxy every connection is the proxy's: the cap is on the requests one
    client (as the proxy names it) has in flight, here event streams that stay open."""

    def stream(client_ip: str) -> tuple[socket.socket, int | None]:
        sock = connect(proxied)
        sock.sendall(
            request(
                "GET",
                "/v1/events",
                f"Authorization: Bearer {API_TOKEN}",
                "Accept: text/event-stream",
                f"X-Real-Ip: {client_ip}",
            )
        )
        return sock, status_line(sock)

    opened = [stream("198.51.100.7") for _ in range(PER_ADDRESS)]
    try:
        assert [status for _, status in opened] == [200] * PER_ADDRESS
        over, status = stream("198.51.100.7")
        over.close()
        assert status == 429
        other, status = stream("198.51.100.8")
        other.close()
        assert status == 200
    finally:
        for sock, _ in opened:
            sock.close()

    def served_again() -> bool:
        sock, status = stream("198.51.100.7")
        sock.close()
        return status == 200

    eventually(served_again, timeout=15, message="its requests ended, it is served")
