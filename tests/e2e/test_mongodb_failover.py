"""MongoDB lost mid-batch (as a primary is in a failover) while contacts write.

The server's MongoDB-wire server goes away while the intake is writing a steady
stream of messages (its connections drop under a batch in flight), and an agent
calls the API meanwhile; it comes back on the same port and data, as a newly
elected primary does for the driver. Every message must be stored once and
answered once, and the API must have said 503 with Retry-After while it was
away, never 500.

It is stopped with SIGTERM, not SIGKILL: SecantusDB keeps no journal, so a
SIGKILL loses every write since its last checkpoint, acknowledged or not (seen
here: the messages of the first second, stored and answered, gone after the
restart). mongod journals and, with w:majority, keeps an acknowledged write
through the loss of its primary; SecantusDB cannot stand in for that part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymongo
import pytest

from devstack.processes import SecantusServer
from tests.harness import API_TOKEN, FakeTelegramClient, eventually, settle

REPLY = "Reply: mensagem recebida"
FIRST_CONTACT = 9300
RATE = 10.0  # messages per second, each from its own contact


@pytest.fixture
def own_mongodb(tmp_path: Path) -> Iterator[SecantusServer]:
    server = SecantusServer(data_dir=tmp_path / "mongo", log_file=tmp_path / "secantus.log")
    server.start()
    yield server
    server.stop()


def send_steadily(telegram: FakeTelegramClient, stop: threading.Event, sent: list[int]) -> None:
    client = FakeTelegramClient(telegram.base_url)
    started = time.monotonic()
    try:
        while not stop.is_set():
            contact = FIRST_CONTACT + len(sent)
            client.send_as_user(contact, f"falha {contact}")
            sent.append(contact)
            stop.wait(max(started + len(sent) / RATE - time.monotonic(), 0))
    finally:
        client.http.close()


# own_mongodb comes first, so it is still up while the stack's processes stop.
def test_mongodb_killed_mid_batch_loses_and_doubles_nothing(own_mongodb, stack, telegram, clean_nats):
    def answered() -> dict[int, int]:
        counts: dict[int, int] = {}
        for message in telegram.sent():
            if message["text"] == REPLY:
                counts[message["chat"]["id"]] = counts.get(message["chat"]["id"], 0) + 1
        return counts

    server = stack.server(MONGODB_URI=own_mongodb.uri, INTAKE_BATCH="20")
    stack.bot()
    api = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
    stop, sent = threading.Event(), []
    writer = threading.Thread(target=send_steadily, args=(telegram, stop, sent), daemon=True)
    writer.start()
    try:
        eventually(
            lambda: len([m for m in telegram.sent() if m["text"] == REPLY]) >= 5, timeout=30, message="replies flowing"
        )
        own_mongodb.stop()  # mid-stream: a batch is being written
        # An agent's request while no MongoDB answers: 503 with Retry-After, not 500.
        during = api.get("/v1/sessions")
        assert during.status_code == 503, during.text
        assert during.headers["Retry-After"]
        assert during.headers["Content-Type"].startswith("application/problem+json")
        # Down until the intake has met it: a batch left to JetStream's redelivery.
        eventually(
            lambda: "left for redelivery, MongoDB" in server.log_text(), timeout=60, message="intake met the outage"
        )
        before = len(sent)
        own_mongodb.start()
        # Up until contacts who wrote after the restart are answered: the desk works again.
        eventually(
            lambda: set(FIRST_CONTACT + before + n for n in range(3)) <= set(answered()),
            timeout=60,
            message="replies after MongoDB came back",
        )
    finally:
        stop.set()
        writer.join(10)
        api.close()

    def stored() -> list[str]:
        with pymongo.MongoClient(own_mongodb.uri, tz_aware=True) as client:
            return sorted(m["text"] for m in client.get_default_database().messages.find({}, {"text": 1}))

    # Nothing left in JetStream, nothing pending in Telegram, counts unchanged for a while:
    # a redelivered message answered twice, or stored twice, would show by then.
    eventually(lambda: not telegram.pending_updates(), message="updates confirmed")
    settle(clean_nats.url, lambda: (answered(), stored()))
    assert answered() == dict.fromkeys(sent, 1)  # answered once each
    assert stored() == sorted(f"falha {contact}" for contact in sent)  # stored once each
    with pymongo.MongoClient(own_mongodb.uri, tz_aware=True) as client:
        assert client.get_default_database().sessions.count_documents({}) == len(sent)
    assert server.running, "the server must ride out the failover, not crash"
