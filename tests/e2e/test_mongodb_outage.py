"""MongoDB away in the middle of intake: the server says so, waits, and stores everything after.

The server runs against a MongoDB-wire server of this test's own (SecantusDB,
stopped and restarted on the same port and data), so the outage touches no
other test.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymongo
import pytest

from devstack.processes import SecantusServer
from tests.harness import eventually, inbound_waiting

REPLY = "Reply: mensagem recebida"
CONTACTS = (9101, 9102)
DURING = 10


@pytest.fixture
def own_mongodb(tmp_path: Path) -> Iterator[SecantusServer]:
    server = SecantusServer(data_dir=tmp_path / "mongo", log_file=tmp_path / "secantus.log")
    server.start()
    yield server
    server.stop()


def replies(telegram, chat_id: int) -> int:
    return sum(1 for m in telegram.sent(chat_id) if m["text"] == REPLY)


# own_mongodb comes first, so it is still up while the stack's processes stop.
def test_intake_waits_out_a_mongodb_outage_and_stores_everything(own_mongodb, stack, telegram, clean_nats):
    server = stack.server(MONGODB_URI=own_mongodb.uri)
    stack.bot()
    telegram.send_as_user(CONTACTS[0], "antes")
    eventually(lambda: replies(telegram, CONTACTS[0]), message="reply before the outage")

    own_mongodb.stop()
    outage_started = time.monotonic()
    for n in range(DURING):
        telegram.send_as_user(CONTACTS[n % 2], f"durante {n}")
    ready = httpx.get(f"{stack.api_url}/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"mongodb": "unavailable", "nats": "ok"}
    eventually(lambda: not telegram.pending_updates(), message="the bot relayed them to JetStream")
    # Nothing is acknowledged that was not stored: all of it still waits in the stream.
    time.sleep(1)
    assert inbound_waiting(clean_nats.url) == DURING
    assert [replies(telegram, c) for c in CONTACTS] == [1, 0]
    # Longer than pymongo's 5 s server selection: the intake gives the batch back.
    eventually(
        lambda: "left for redelivery, MongoDB" in server.log_text(),
        timeout=15,
        message="the batch handed back to JetStream",
    )
    assert inbound_waiting(clean_nats.url) == DURING

    own_mongodb.start()
    outage = time.monotonic() - outage_started
    eventually(
        lambda: replies(telegram, CONTACTS[0]) == 1 + DURING // 2 and replies(telegram, CONTACTS[1]) == DURING // 2,
        timeout=30,
        message="replies to what was sent during the outage",
    )
    assert httpx.get(f"{stack.api_url}/ready", timeout=10).status_code == 200
    eventually(lambda: inbound_waiting(clean_nats.url) == 0, message="all acknowledged")

    with pymongo.MongoClient(own_mongodb.uri, tz_aware=True) as client:
        db = client.get_default_database()
        stored = [m["text"] for m in db.messages.find({"text": {"$regex": "^durante"}})]
        counts = sum(s["message_count"] for s in db.sessions.find())
    assert sorted(stored) == sorted(f"durante {n}" for n in range(DURING))
    assert counts == DURING + 1
    assert server.running, "the server must ride out the outage, not crash"
    log = server.log_text()
    retries = len(re.findall(r"left for redelivery, MongoDB", log))
    assert retries >= 1
    # Each attempt waits out server selection and backs off: no hot loop.
    assert retries <= outage / 2 + 2, (retries, outage)
