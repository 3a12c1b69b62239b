"""The live event stream, end to end: real server replicas, bot, NATS, MongoDB-wire server, fake Telegram.

Clients are `websockets` sync clients, as `balcao watch` uses; each test keeps
its message count small and spreads messages over many contacts (the fake
Telegram throttles bursts to one chat).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from contract import eventstream
from devstack.processes import free_port
from tests.harness import API_TOKEN, eventually, inbound_waiting, upgrade_headers
from tests.security.conftest import rss_bytes

REPLY = "Reply: mensagem recebida"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/v1/events" + (f"?{query}" if query else "")


def open_events(port: int, query: str = "") -> ClientConnection:
    return connect(ws_url(port, query), additional_headers=AUTH, subprotocols=["balcao.v1"], open_timeout=15)


def read_until(ws: ClientConnection, done, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Events until `done(events)` holds; fails after `timeout`."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"events not complete after {timeout} s: {got!r}")
        try:
            got.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            continue
    return got


def received_texts(got: list[dict[str, Any]]) -> set[str]:
    return {e["message"]["text"] for e in got if e["type"] == eventstream.MESSAGE_RECEIVED}


def settled_stream(port: int, expected: int) -> list[dict[str, Any]]:
    """Every event the stream keeps, read from the start once `expected` are there."""
    with open_events(port, "since=0") as ws:
        got = read_until(ws, lambda got: len(got) >= expected)
        try:  # nothing more arrives: the stream has settled
            extra = ws.recv(timeout=2.0)
            got.append(json.loads(extra))
        except TimeoutError:
            pass
    return got


def publish_raw(nats_url: str, bodies: list[bytes], pause: float = 0.0) -> None:
    async def run() -> None:
        import nats

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for body in bodies:
            await js.publish(eventstream.subject(eventstream.IMPORT_FINISHED), body, stream=eventstream.EVENTS_STREAM)
            await asyncio.sleep(pause)
        await nc.close()

    asyncio.run(run())


def purge(nats_url: str) -> None:
    async def run() -> None:
        import nats

        nc = await nats.connect(nats_url)
        await nc.jetstream().purge_stream(eventstream.EVENTS_STREAM)
        await nc.close()

    asyncio.run(run())


def test_a_contact_message_reaches_a_client_then_the_reply_it_got(stack, telegram):
    server = stack.server()
    stack.bot()
    with open_events(server.port) as ws:
        assert ws.subprotocol == "balcao.v1"
        telegram.send_as_user(7101, "quero ajuda", first_name="Ana")
        got = read_until(ws, lambda got: any(e["type"] == eventstream.MESSAGE_SENT for e in got))
    kinds = [e["type"] for e in got]
    assert kinds == [eventstream.SESSION_OPENED, eventstream.MESSAGE_RECEIVED, eventstream.MESSAGE_SENT], got
    opened, received, sent = got
    assert received["message"]["text"] == "quero ajuda"
    assert received["contact"] == {"identifier": "7101", "name": "Ana"}
    assert sent["message"]["text"] == REPLY and sent["delivery"] == eventstream.DELIVERY_SENT
    assert opened["session_id"] == received["session_id"] == sent["session_id"]
    assert opened["id"] < received["id"] < sent["id"]


def test_a_client_on_one_replica_sees_what_the_other_stored(stack, telegram):
    a, b = stack.server(HTTP_PORT=str(free_port())), stack.server(HTTP_PORT=str(free_port()))
    stack.bot()
    with open_events(a.port, "type=message.received") as ws:
        for n in range(6):
            telegram.send_as_user(7200 + n, f"olá {n}")
        got = read_until(ws, lambda got: len(got) >= 6)
        assert received_texts(got) == {f"olá {n}" for n in range(6)}
        assert {e["type"] for e in got} == {eventstream.MESSAGE_RECEIVED}  # filtered by NATS
        # A finish that only replica B handles reaches the client on A.
        session_id = got[0]["session_id"]
        with open_events(a.port, f"session={session_id}&type=session.finished") as finished:
            httpx.delete(
                f"http://127.0.0.1:{b.port}/v1/sessions/{session_id}", headers=AUTH, timeout=15
            ).raise_for_status()
            (event,) = read_until(finished, lambda got: len(got) >= 1)
    assert event["type"] == eventstream.SESSION_FINISHED and event["session_id"] == session_id


def test_a_dropped_client_resumes_from_its_last_id_with_every_event_once(stack, telegram):
    server = stack.server()
    stack.bot()
    contacts = list(range(7300, 7316))

    def contacts_write() -> None:
        for contact in contacts:
            telegram.send_as_user(contact, f"mensagem {contact}")
            time.sleep(0.1)

    writer = threading.Thread(target=contacts_write)
    seen: list[dict[str, Any]] = []
    with open_events(server.port, "since=0") as ws:
        writer.start()
        seen += read_until(ws, lambda got: len(got) >= 5)
        # Cut the TCP connection under the client, no close handshake: a network drop.
        ws.socket.shutdown(socket.SHUT_RDWR)
    # Each contact makes three events: session.opened, message.received, message.sent.
    expected = 3 * len(contacts)
    with open_events(server.port, f"since={seen[-1]['id']}") as ws:
        seen += read_until(ws, lambda got: len(seen) + len(got) >= expected)
    writer.join()
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids)), "an event repeated or came out of order"
    assert seen == settled_stream(server.port, expected)  # and none is missing
    assert received_texts(seen) == {f"mensagem {c}" for c in contacts}


def test_a_client_whose_replica_is_killed_resumes_on_the_other(stack, telegram):
    a = stack.server(HTTP_PORT=str(free_port()), measured=False)
    b = stack.server(HTTP_PORT=str(free_port()))
    stack.bot()
    contacts = list(range(7400, 7410))
    seen: list[dict[str, Any]] = []
    with open_events(a.port, "since=0&type=message.received") as ws:
        for contact in contacts[:4]:
            telegram.send_as_user(contact, f"antes {contact}")
        seen += read_until(ws, lambda got: len(got) >= 4)
        a.stop(signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
    for contact in contacts[4:]:
        telegram.send_as_user(contact, f"depois {contact}")
    with open_events(b.port, f"since={seen[-1]['id']}&type=message.received") as ws:
        seen += read_until(ws, lambda got: len(seen) + len(got) >= len(contacts))
        try:
            extra = ws.recv(timeout=2.0)
            raise AssertionError(f"an event beyond the ten messages: {extra}")
        except TimeoutError:
            pass
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids))
    assert received_texts(seen) == {f"antes {c}" for c in contacts[:4]} | {f"depois {c}" for c in contacts[4:]}


def test_a_client_that_never_reads_is_cut_off_without_the_server_growing(stack, clean_nats):
    server = stack.server(EVENTS_CLIENT_BUFFER_BYTES=str(256 * 1024))
    # A WebSocket handshake by hand, then never a read: the socket's buffers fill,
    # then the server's, up to its limit.
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(
        (
            f"GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {API_TOKEN}\r\n\r\n"
        ).encode()
    )
    assert raw.recv(12) == b"HTTP/1.1 101"
    before = rss_bytes(server.popen.pid)
    chunk = json.dumps(eventstream.event(eventstream.IMPORT_FINISHED, padding="x" * 60_000)).encode()
    publish_raw(clean_nats.url, [chunk] * 300)  # 18 MB of events for one client

    def dropped() -> float:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith('balcao_event_clients_dropped_total{reason="slow"}'):
                return float(line.split()[-1])
        return 0.0

    eventually(lambda: dropped() == 1.0, timeout=60, interval=0.5, message="slow client dropped")
    grown = rss_bytes(server.popen.pid) - before
    raw.close()
    assert grown < 12 * 1024 * 1024, f"server grew {grown} bytes for one unread client"


def test_an_id_older_than_the_stream_keeps_gets_a_gone_close_code(stack, clean_nats):
    server = stack.server()
    publish_raw(clean_nats.url, [eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED))] * 3)
    purge(clean_nats.url)
    with open_events(server.port, "since=1") as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=15)
    assert closed.value.rcvd.code == 4410
    assert "reload" in closed.value.rcvd.reason
    # An id the stream still keeps (or a future one) is fine.
    with open_events(server.port, "since=3") as ws, pytest.raises(TimeoutError):
        ws.recv(timeout=1.0)


def test_server_sent_events_resume_from_last_event_id(stack, clean_nats):
    server = stack.server()
    publish_raw(
        clean_nats.url, [eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, n=n)) for n in range(4)]
    )
    headers = {**AUTH, "Accept": "text/event-stream", "Last-Event-ID": "2"}
    frames: list[str] = []
    with httpx.stream("GET", f"http://127.0.0.1:{server.port}/v1/events", headers=headers, timeout=15) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines():
            frames.append(line)
            if line.startswith("data:") and json.loads(line[5:])["id"] == 4:
                break
    assert [line for line in frames if line.startswith("id:")] == ["id: 3", "id: 4"]
    assert "event: import.finished" in frames
    gone = httpx.get(
        f"http://127.0.0.1:{server.port}/v1/events",
        params={"since": "x"},
        headers={**AUTH, "Accept": "text/event-stream"},
        timeout=15,
    )
    assert gone.status_code == 400 and gone.json()["errors"][0]["field"] == "since"


def test_a_batch_redelivered_after_its_events_were_published_adds_no_second_event(stack, telegram, tmp_path):
    fired = tmp_path / "failpoints.log"
    port = free_port()
    # The first server creates the intake consumer, with a short ack wait: the batch comes back in seconds.
    crashing = stack.server(
        HTTP_PORT=str(port),
        INTAKE_ACK_WAIT="3",
        BALCAO_FAILPOINTS="server.events.after_published=kill",
        BALCAO_FAILPOINTS_LOG=str(fired),
    )
    stack.bot()
    telegram.send_as_user(7701, "só uma vez")
    eventually(
        lambda: fired.exists() and "server.events.after_published" in fired.read_text(),
        timeout=60,
        message="the fail point fired",
    )
    eventually(lambda: not crashing.running, message="the server died at the fail point")
    assert inbound_waiting(stack.env["NATS_URL"]) == 1  # stored and published, never acknowledged
    survivor = stack.server(HTTP_PORT=str(free_port()), INTAKE_ACK_WAIT="3")  # gets the batch again
    eventually(
        lambda: inbound_waiting(stack.env["NATS_URL"]) == 0,
        timeout=90,
        interval=0.5,
        message="the redelivered batch acknowledged",
    )
    got = settled_stream(survivor.port, 3)
    assert [e["type"] for e in got] == [
        eventstream.SESSION_OPENED,
        eventstream.MESSAGE_RECEIVED,
        eventstream.MESSAGE_SENT,
    ], got


def test_connections_over_the_per_token_cap_are_refused_before_the_upgrade(stack):
    server = stack.server(EVENTS_MAX_CLIENTS_PER_TOKEN="1")
    with open_events(server.port):
        refused = httpx.get(f"http://127.0.0.1:{server.port}/v1/events", headers=upgrade_headers(**AUTH), timeout=15)
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
        assert 'balcao_event_clients{transport="websocket"} 1.0' in metrics
    # The slot is given back when the client leaves.
    eventually(
        lambda: (
            httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text.count(
                'balcao_event_clients{transport="websocket"} 0.0'
            )
            == 1
        ),
        message="the client counted out",
    )
    with open_events(server.port):
        pass


# --- one live subscription per replica ------------------------------------------------


class SteadyPublisher:
    """Publishes small events into BALCAO_EVENTS from a thread until stopped, noting each (id, subject)."""

    def __init__(self, nats_url: str, subjects: list[str], interval: float = 0.003) -> None:
        self.nats_url = nats_url
        self.subjects = subjects
        self.interval = interval
        self.published: list[tuple[int, str]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    async def _run(self) -> None:
        import nats

        nc = await nats.connect(self.nats_url)
        js = nc.jetstream()
        n = 0
        while not self._stopping.is_set():
            subject = self.subjects[n % len(self.subjects)]
            kind = ".".join(subject.split(".")[2:4])
            ack = await js.publish(
                subject, eventstream.to_bytes(eventstream.event(kind, n=n)), stream=eventstream.EVENTS_STREAM
            )
            self.published.append((ack.seq, subject))
            n += 1
            await asyncio.sleep(self.interval)
        await nc.close()


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("query", ["", "type=import.finished"], ids=["every-event", "filtered"])
def test_a_client_resuming_while_events_arrive_gets_each_once_across_the_switch_to_live(stack, clean_nats, query):
    server = stack.server()
    finished = eventstream.subject(eventstream.IMPORT_FINISHED)
    opened = eventstream.subject(eventstream.SESSION_OPENED, "telegram", "0123456789abcdef01234567")
    live = 'balcao_event_catch_ups_total{outcome="live"}'
    with SteadyPublisher(clean_nats.url, [finished, opened]) as publisher:
        eventually(lambda: len(publisher.published) >= 400, timeout=60, message="a history to catch up on")
        since = publisher.published[30][0]
        got: list[dict[str, Any]] = []
        with open_events(server.port, f"since={since}" + (f"&{query}" if query else "")) as ws:
            # Catch up, hand over to the live subscription, and keep receiving
            # while events arrive all along: 100 more after the switch was seen.
            switched_at: int | None = None
            checked = 0.0
            deadline = time.monotonic() + 90
            while switched_at is None or len(publisher.published) < switched_at + 100:
                assert time.monotonic() < deadline, "the catch-up never handed over to the live subscription"
                try:
                    got.append(json.loads(ws.recv(timeout=0.2)))
                except TimeoutError:
                    pass
                if switched_at is None and time.monotonic() - checked > 0.2:
                    checked = time.monotonic()
                    if metric(server.port, live) == 1.0:
                        switched_at = len(publisher.published)
            publisher.stop()
            expected = [
                seq for seq, subject in publisher.published if seq > since and (not query or subject == finished)
            ]
            got += read_until(ws, lambda more: len(got) + len(more) >= len(expected))
            with pytest.raises(TimeoutError):
                extra = ws.recv(timeout=1.0)
                raise AssertionError(f"an event beyond those published: {extra}")
    assert [e["id"] for e in got] == expected  # each once, in order, none missing
    assert all(e["type"] == eventstream.IMPORT_FINISHED for e in got) or not query
    assert metric(server.port, 'balcao_event_catch_ups_total{outcome="own-consumer"}') == 0.0


def test_a_slow_client_is_cut_off_while_another_keeps_receiving(stack, clean_nats):
    server = stack.server(EVENTS_CLIENT_BUFFER_BYTES=str(1024 * 1024))
    # A small receive window, set before connecting, and a client that buffers one
    # message before it stops reading: the server's buffer for it fills.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    slow = connect(
        ws_url(server.port),
        sock=sock,
        additional_headers=AUTH,
        subprotocols=["balcao.v1"],
        max_queue=1,
        ping_interval=None,  # only the server decides this client is gone
        open_timeout=15,
    )
    fast = connect(
        ws_url(server.port), additional_headers=AUTH, subprotocols=["balcao.v1"], max_queue=None, open_timeout=15
    )
    with slow, fast:
        publish_raw(clean_nats.url, [eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, n=-1))])
        assert json.loads(slow.recv(timeout=30))["id"] == json.loads(fast.recv(timeout=30))["id"] == 1  # both live
        chunk = eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, padding="x" * 60_000))
        # 18 MB, far more than the slow client's buffers, at a pace a reading client keeps up with,
        # published from a thread: the slow client must start reading soon after it is cut off,
        # as the server waits only a few seconds for the closing handshake before it aborts.
        publishing = threading.Thread(target=publish_raw, args=(clean_nats.url, [chunk] * 300), kwargs={"pause": 0.01})
        publishing.start()
        eventually(
            lambda: metric(server.port, 'balcao_event_clients_dropped_total{reason="slow"}') == 1.0,
            timeout=60,
            interval=0.2,
            message="the slow client dropped",
        )
        # Reading at last, the slow client finds the close code after what it was sent.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                slow.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
        publishing.join(timeout=120)
        assert not publishing.is_alive()
        got = read_until(fast, lambda got: len(got) >= 300)
        publish_raw(
            clean_nats.url,
            [eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, n=n)) for n in range(3)],
        )
        got += read_until(fast, lambda more: len(got) + len(more) >= 303)
    assert [e["id"] for e in got] == list(range(2, 305))
    assert metric(server.port, 'balcao_event_clients_dropped_total{reason="slow"}') == 1.0


def events_in_stream(nats_url: str, kind: str) -> int:
    async def run() -> int:
        import nats

        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(
                eventstream.EVENTS_STREAM, subjects_filter=eventstream.filter_subject(kind)
            )
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()

    return asyncio.run(run())


def first_kept(nats_url: str) -> int:
    async def run() -> int:
        import nats

        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(eventstream.EVENTS_STREAM)).state.first_seq
        finally:
            await nc.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "point", ["server.events.promise_before_publish", "server.events.promise_after_publish_before_forget"]
)
def test_a_server_killed_between_finishing_and_forgetting_the_event_publishes_it_once(
    stack, telegram, mongo, tmp_path, point
):
    fired = tmp_path / "failpoints.log"
    crashing = stack.server(BALCAO_FAILPOINTS=f"{point}=kill", BALCAO_FAILPOINTS_LOG=str(fired))
    stack.bot()
    telegram.send_as_user(7901, "até logo", first_name="Lia")
    eventually(lambda: [m for m in telegram.sent(7901) if m["text"] == REPLY], message="the reply")
    session = mongo.sessions.find_one({"contact_identifier": "7901"})
    try:
        httpx.delete(f"http://127.0.0.1:{crashing.port}/v1/sessions/{session['_id']}", headers=AUTH, timeout=15)
    except httpx.HTTPError:
        pass  # the relay's crash may come before the finish answered; the session is deleted either way
    eventually(lambda: fired.exists() and point in fired.read_text(), timeout=60, message="the fail point fired")
    eventually(lambda: not crashing.running, message="the server died at the fail point")
    assert mongo.sessions.count_documents({}) == 0
    assert mongo.event_outbox.count_documents({}) == 1  # still promised
    assert events_in_stream(stack.env["NATS_URL"], eventstream.SESSION_FINISHED) == (
        0 if point.endswith("before_publish") else 1
    )

    survivor = stack.server(HTTP_PORT=str(free_port()))  # its relay publishes the promise (again)
    eventually(lambda: mongo.event_outbox.count_documents({}) == 0, timeout=60, message="the promise relayed")
    # From the oldest event kept: the session's first ones were erased, so 0 is gone (4410).
    with open_events(survivor.port, f"type=session.finished&since={first_kept(stack.env['NATS_URL']) - 1}") as ws:
        (finished,) = read_until(ws, lambda got: len(got) >= 1)
    assert finished["session_id"] == str(session["_id"])
    assert events_in_stream(stack.env["NATS_URL"], eventstream.SESSION_FINISHED) == 1
    # The rest of the session's events were erased with it (the relay erases again, harmlessly).
    assert events_in_stream(stack.env["NATS_URL"], eventstream.SESSION_OPENED) == 0
    assert events_in_stream(stack.env["NATS_URL"], eventstream.MESSAGE_RECEIVED) == 0


def test_an_import_that_ends_is_announced_as_one_import_finished_event(stack, mongo):
    server = stack.server()
    body = json.dumps(
        [{"name": "Importada", "platform_type": "Telegram", "contact_identifier": 7951, "messages": []}]
    ).encode()
    with open_events(server.port, "type=import.finished") as ws:
        response = httpx.post(
            f"http://127.0.0.1:{server.port}/v1/imports",
            headers=AUTH,
            data={"channel": "@suporte"},
            files={"file": ("sessions.json", body, "application/json")},
            timeout=60,
        )
        assert response.status_code < 300, response.text
        import_id = response.json()["id"]
        (event,) = read_until(ws, lambda got: len(got) >= 1)
    assert event["type"] == eventstream.IMPORT_FINISHED and event["import"]["id"] == import_id
    assert event["import"]["status"] == "succeeded" and event["import"]["counts"]
    eventually(lambda: mongo.event_outbox.count_documents({}) == 0, message="the promise forgotten once published")
    assert [e["id"] for e in settled_stream(server.port, 1)] == [event["id"]]
