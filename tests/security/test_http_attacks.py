"""Attacks on the HTTP surface, sent to a real server process.

Without a token: huge bodies, slow clients, too many connections, /ready
floods, spoofed client addresses, personal data in the access log, the
listening address. With a token: inputs that used to be answered 500. Each
test checks the exact answer, that the server's resident memory stays under a
stated bound, and that it still answers /ready.

The server's timeouts and connection cap are shortened here through their
settings, so slow-client attacks take seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import factory
import httpx
import pytest
from pymongo.database import Database

from devstack.processes import NatsServer, free_port
from server.models.imports import ImportJob
from tests.harness import API_TOKEN, Process, eventually, reset_jetstream, stack_env
from tests.security.conftest import NO_TELEGRAM, Target
from tests.server import factories

MIB = 1024 * 1024
IDLE_TIMEOUT = 2
BODY_TIMEOUT = 3
MAX_CONNECTIONS = 20
SEARCH_MAX_EXAMINED = 1000
# What an attack may add to the server's resident memory. Buffering the bodies
# these attacks send would take hundreds of MiB.
RSS_GROWTH_BOUND = 48 * MIB
PROBLEM = "https://balcao.dev/problems/"


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The attack suite's server, with short timeouts and a small connection cap."""
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {
        **stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM),
        "HTTP_PORT": str(port),
        "HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "SEARCH_MAX_EXAMINED": str(SEARCH_MAX_EXAMINED),
        # The search test counts documents, not time; SecantusDB on a busy machine is slow.
        "QUERY_MAX_TIME_MS": "60000",
    }
    log = Path(tmp_path_factory.mktemp("security")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()


class Watch:
    """Samples the server's RSS and /ready (asked from `source`, when given) while an attack runs."""

    def __init__(self, target: Target, source: str | None = None) -> None:
        self.target = target
        self.source = source
        self.baseline = target.rss()
        self.peak = self.baseline
        self.ready_answers: list[int] = []
        self._stop = threading.Event()
        self._rss = threading.Thread(target=self._sample, daemon=True)
        self._ready = threading.Thread(target=self._probe, daemon=True)

    def __enter__(self) -> Watch:
        self._rss.start()
        self._ready.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._rss.join()
        self._ready.join()
        self.peak = max(self.peak, self.target.rss())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.target.rss())

    def _probe(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.source) if self.source else None
        with httpx.Client(transport=transport, timeout=5) as client:
            while True:  # at least once, however short the attack
                try:
                    self.ready_answers.append(client.get(f"{self.target.url}/ready").status_code)
                except httpx.HTTPError:
                    self.ready_answers.append(0)
                if self._stop.wait(0.25):
                    return

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def check(self, bound: int = RSS_GROWTH_BOUND, ready_throughout: bool = True) -> None:
        # Shown with `pytest -rP`: the figures behind the bound.
        print(
            f"server RSS: {self.baseline / MIB:.1f} MiB before, {self.peak / MIB:.1f} MiB peak; "
            f"/ready answers: {sorted(set(self.ready_answers))}"
        )
        assert self.growth < bound, f"RSS grew by {self.growth / MIB:.1f} MiB (bound {bound / MIB:.0f} MiB)"
        if ready_throughout:
            assert self.ready_answers and set(self.ready_answers) == {200}, self.ready_answers
        assert self.target.ready()


def connect(target: Target) -> socket.socket:
    return socket.create_connection(("127.0.0.1", target.process.port), timeout=5)


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


def closed_within(sock: socket.socket, seconds: float, trickle: Callable[[], bytes] | None = None) -> float | None:
    """Seconds until the server closed `sock`, trickling bytes meanwhile; None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < seconds:
        try:
            if trickle is not None:
                sock.sendall(trickle())
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
    return None


def assert_problem(response: httpx.Response, status: int, kind: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == PROBLEM + kind and problem["status"] == status
    if field is not None:
        assert field in {error["field"] for error in problem.get("errors", [])}, problem
    return problem


# --- without a token ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/v1/sessions", "/no/such/route"])
def test_a_huge_declared_body_is_refused_at_once_without_being_read(target, path):
    sock = connect(target)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {1024 * MIB}\r\n\r\n".encode())
    answer = read_response(sock, timeout=5)
    sock.close()

    assert answer is not None, "no answer before the body"
    status, headers, body = answer
    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == PROBLEM + "payload-too-large"
    assert headers.get("connection") == "close"
    assert target.ready()


def test_parallel_huge_bodies_to_health_do_not_grow_memory(target):
    """Four clients each push 64 MiB of a claimed 1 GiB body at /health."""

    def flood() -> None:
        sock = connect(target)
        try:
            sock.sendall(f"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {1024 * MIB}\r\n\r\n".encode())
            piece = b"x" * MIB
            for _ in range(64):
                sock.sendall(piece)
        except OSError:
            pass  # the server answered 413 and closed: what is expected
        finally:
            sock.close()

    with Watch(target) as watch:
        floods = [threading.Thread(target=flood) for _ in range(4)]
        for thread in floods:
            thread.start()
        for thread in floods:
            thread.join(60)
    watch.check()


def test_a_chunked_body_over_the_limit_is_refused_when_it_passes_it(target):
    sock = connect(target)
    sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 16384
    with Watch(target) as watch:
        try:
            for _ in range(8):  # 128 KiB, twice the limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            pass
        answer = read_response(sock, timeout=5)
    sock.close()

    assert answer is not None and answer[0] == 413
    assert json.loads(answer[2])["type"] == PROBLEM + "payload-too-large"
    watch.check()


def test_a_chunked_agent_reply_over_its_limit_is_a_413(target, session):
    """The reply route streams and sets its own 64 KiB limit; a chunked body has
    no length to check beforehand, so the limit is counted as it arrives."""
    sock = connect(target)
    sock.sendall(
        f"POST /v1/sessions/{session['_id']}/messages HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    piece = b"x" * 16384
    with Watch(target) as watch:
        try:
            for _ in range(8):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:
            pass
        answer = read_response(sock, timeout=5)
    sock.close()

    assert answer is not None and answer[0] == 413, answer
    assert json.loads(answer[2])["type"] == PROBLEM + "payload-too-large"
    watch.check()


def test_a_body_a_little_over_the_limit_is_read_and_answered_413_on_a_usable_connection(target):
    with target.client(token=None) as client:
        response = client.post("/health", content=b"x" * (200 * 1024))
        assert_problem(response, 413, "payload-too-large")
        assert "at most 65536 bytes" in response.json()["detail"]
        # The whole body was read, so the same connection serves the next request.
        assert client.get("/health").status_code == 200


def test_slow_headers_are_cut_off_after_the_idle_timeout(target):
    sock = connect(target)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    with Watch(target) as watch:
        closed = closed_within(sock, IDLE_TIMEOUT + 6, trickle=lambda: b"X-Slow: 1\r\n")
    sock.close()

    assert closed is not None and closed < IDLE_TIMEOUT + 3, f"still open after {IDLE_TIMEOUT + 6} s"
    watch.check()


def test_an_idle_connection_is_closed_after_the_idle_timeout(target):
    sock = connect(target)
    closed = closed_within(sock, IDLE_TIMEOUT + 6)
    sock.close()

    assert closed is not None and closed < IDLE_TIMEOUT + 3


def test_a_slow_body_is_cut_off_after_the_body_timeout(target):
    sock = connect(target)
    sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
    with Watch(target) as watch:
        closed = closed_within(sock, BODY_TIMEOUT + 6, trickle=lambda: b"x")
    sock.close()

    assert closed is not None and closed < BODY_TIMEOUT + 3, f"still open after {BODY_TIMEOUT + 6} s"
    watch.check()


def test_connections_beyond_the_cap_get_503_and_are_closed(target):
    extra = 5
    socks = [connect(target) for _ in range(MAX_CONNECTIONS + extra)]
    try:
        # The last ones are over the cap whatever else is open; the first is served.
        refused = [read_response(sock, timeout=5) for sock in socks[-extra:]]
        first = read_response(socks[0], timeout=0.2)
    finally:
        for sock in socks:
            sock.close()

    assert first is None
    for answer in refused:
        assert answer is not None
        status, headers, body = answer
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["type"] == PROBLEM + "unavailable"
    # The cap is a count of open connections: once they close, new ones are served.
    eventually(target.ready, timeout=10, message="/ready once the connections closed")


def metric(target: Target, name: str) -> float:
    for line in httpx.get(f"{target.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_ready_flood_pings_mongodb_about_once_a_second(target):
    before = metric(target, "balcao_readiness_pings_total")
    start = time.monotonic()
    answers = []
    with httpx.Client(base_url=target.url, timeout=5) as client:
        while time.monotonic() - start < 2.5:
            answers.append(client.get("/ready").status_code)
    seconds = time.monotonic() - start
    pings = metric(target, "balcao_readiness_pings_total") - before

    assert set(answers) == {200} and len(answers) > 20
    # One ping per second that passed, give or take the edges.
    assert 1 <= pings <= seconds + 1, f"{pings} pings for {len(answers)} calls in {seconds:.1f} s"


def test_a_spoofed_client_address_is_not_logged(target):
    httpx.get(
        f"{target.url}/health?spoofed",
        headers={"X-Real-Ip": "203.0.113.66", "X-Forwarded-For": "203.0.113.67"},
        timeout=5,
    )
    line = eventually(
        lambda: [line for line in target.process.log_text().splitlines() if "GET /health?spoofed" in line],
        message="the access log line",
    )

    assert "GET /health?spoofed (127.0.0.1) " in line[-1]
    assert "203.0.113" not in target.process.log_text()


def test_search_words_stay_out_of_the_access_log(target):
    with target.client() as client:
        assert client.get("/v1/sessions", params={"q": "Joaquina Esmeralda"}).status_code == 200
    line = eventually(
        lambda: [line for line in target.process.log_text().splitlines() if "GET /v1/sessions?" in line],
        message="the access log line",
    )

    assert "GET /v1/sessions?q=*** (127.0.0.1)" in line[-1]
    assert "joaquina" not in target.process.log_text().lower()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_api_listens_on_loopback_by_default(target):
    assert listening_addresses(target.process.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


# --- with a token -------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "9" * 5000}, "limit"),
        ({"active_since": "0001-01-01T00:00:00+23:59"}, "active_since"),
        ({"active_since": "9999-12-31T23:59:59-23:59"}, "active_since"),
    ],
)
def test_absurd_query_parameters_are_400s_naming_them(target, params, field):
    with Watch(target) as watch, target.client() as client:
        response = client.get("/v1/sessions", params=params)
    assert_problem(response, 400, "invalid-parameters", field)
    watch.check()


@pytest.fixture
def session(target, mongo: Database) -> dict:
    factories.bind(mongo)
    return factories.SessionFactory()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"text": ' + nested(30_000) + "}", "body"),
        ('{"text": ' + nested(65) + "}", "body"),
        ('{"text": ' + "7" * 5000 + "}", "text"),
        ('{"text": -' + "7" * 5000 + "}", "text"),
    ],
)
def test_hostile_json_in_an_agent_reply_is_a_400_naming_the_field(target, session, body, field):
    with Watch(target) as watch, target.client() as client:
        response = client.post(
            f"/v1/sessions/{session['_id']}/messages",
            content=body.encode(),
            headers={"Content-Type": "application/json"},
        )
    assert_problem(response, 400, "invalid-json" if field == "body" else "invalid-body", field)
    watch.check()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"channel": "@canal_teste", "source": ' + nested(7_000) + "}", "body"),
        # Past the depth limit but far inside every Python's recursion limit: refused
        # before parsing, so the answer does not depend on where the parser gives up.
        ('{"channel": "@canal_teste", "source": ' + nested(65) + "}", "body"),
        ('{"channel": "@canal_teste", "source": ' + "7" * 5000 + "}", "source"),
    ],
)
def test_hostile_json_starting_a_chunked_import_is_a_400_naming_the_field(target, mongo, body, field):
    with Watch(target) as watch, target.client() as client:
        response = client.post("/v1/imports", content=body.encode(), headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "invalid-json" if field == "body" else "invalid-body", field)
    assert mongo[ImportJob._get_collection_name()].count_documents({}) == 0  # refused: no import left behind
    watch.check()


def test_brackets_inside_a_string_do_not_count_as_nesting(target, session):
    text = "[" * 200 + '\\" {{' + "]" * 200
    with target.client() as client:
        response = client.post(f"/v1/sessions/{session['_id']}/messages", json={"text": text})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(("path", "limit"), [("/v1/sessions/{id}/messages", 64 * 1024), ("/v1/imports", 16 * 1024)])
def test_json_nested_100000_deep_is_refused_by_size(target, session, path, limit):
    body = ('{"text": ' + nested(100_000) + "}").encode()
    with target.client() as client:
        response = client.post(
            path.format(id=session["_id"]), content=body, headers={"Content-Type": "application/json"}
        )
    assert_problem(response, 413, "payload-too-large")


def test_a_search_of_common_words_examines_a_bounded_number_of_sessions(target, mongo):
    """1,200 "Ana" sessions, none with a word starting "zq": the search for "ana zq"
    probes the index with "ana" and checks every candidate, so a page stops after
    SEARCH_MAX_EXAMINED and hands a cursor on instead of reading all of them."""
    factories.bind(mongo)
    now = factories.now()
    docs = factories.SessionFactory.build_batch(
        1200,
        contact_name=factory.Sequence(lambda n: f"Ana Souza {n}"),
        last_message_at=factory.Sequence(lambda n: now - dt.timedelta(seconds=n)),
    )
    mongo["sessions"].insert_many(docs)

    with Watch(target) as watch, target.client() as client:
        first = client.get("/v1/sessions", params={"q": "ana zq"})
        assert first.status_code == 200, first.text
        assert first.json()["items"] == [] and first.json()["next_cursor"]
        pages, cursor = 1, first.json()["next_cursor"]
        while cursor:
            page = client.get("/v1/sessions", params={"q": "ana zq", "cursor": cursor}).json()
            assert page["items"] == []
            pages, cursor = pages + 1, page["next_cursor"]
    assert pages == 2  # 1,000 candidates, then the last 200
    watch.check()
