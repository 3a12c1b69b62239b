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
from runtime import failpoints
from tests.harness import eventually, failpoint_fired, inbound_waiting, settle

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
def test_intake_waits_out_a_mongodb_outage_and_stores_everything(own_mongodb, stack, telegram, clean_nats, tmp_path):
    # MongoDB goes away in the middle of a batch: its messages are stored, the
    # sessions not yet counted, nothing answered or acknowledged. Stopped, not
    # SIGKILLed: SecantusDB (unlike mongod with its journal) loses writes it had
    # acknowledged when killed, which would test it rather than the intake.
    log = tmp_path / "failpoints.log"
    point = "server.intake.after_messages_inserted"
    server = stack.server(
        MONGODB_URI=own_mongodb.uri, BALCAO_FAILPOINTS=f"{point}=pause@2", BALCAO_FAILPOINTS_LOG=str(log)
    )
    stack.bot()
    telegram.send_as_user(CONTACTS[0], "antes")  # the fail point's first pass
    eventually(lambda: replies(telegram, CONTACTS[0]), message="reply before the outage")

    for n in range(DURING // 2):
        telegram.send_as_user(CONTACTS[n % 2], f"durante {n}")
    eventually(lambda: failpoint_fired(log, point), timeout=30, message="a batch stored, not yet counted")
    own_mongodb.stop()
    outage_started = time.monotonic()
    failpoints.resume(str(log), point)
    for n in range(DURING // 2, DURING):
        telegram.send_as_user(CONTACTS[n % 2], f"durante {n}")
    ready = httpx.get(f"{stack.api_url}/ready", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"mongodb": "unavailable", "nats": "ok"}
    eventually(lambda: not telegram.pending_updates(), message="the bot relayed them to JetStream")
    # Longer than pymongo's 5 s server selection: the intake gives the batch back.
    eventually(
        lambda: "left for redelivery, MongoDB" in server.log_text(),
        timeout=20,
        message="the batch handed back to JetStream",
    )
    # Nothing is acknowledged that was not stored and counted: all of it still waits.
    assert inbound_waiting(clean_nats.url) == DURING
    assert [replies(telegram, c) for c in CONTACTS] == [1, 0]

    own_mongodb.start()
    outage = time.monotonic() - outage_started
    with pymongo.MongoClient(own_mongodb.uri, tz_aware=True) as client:
        db = client.get_default_database()

        def observed() -> tuple:
            return (
                db.messages.count_documents({}),
                tuple(replies(telegram, c) for c in CONTACTS),
                tuple(sorted(s["message_count"] for s in db.sessions.find())),
            )

        settle(clean_nats.url, observed)
        stored = [m["text"] for m in db.messages.find({"text": {"$regex": "^durante"}})]
        sessions = {s["contact_identifier"]: s for s in db.sessions.find()}
        held = {key: db.messages.count_documents({"session_id": s["_id"]}) for key, s in sessions.items()}
    assert sorted(stored) == sorted(f"durante {n}" for n in range(DURING))
    assert {key: s["message_count"] for key, s in sessions.items()} == held  # the batch cut short counted once
    assert held == {str(CONTACTS[0]): 1 + DURING // 2, str(CONTACTS[1]): DURING // 2}
    assert [replies(telegram, c) for c in CONTACTS] == [1 + DURING // 2, DURING // 2]
    assert httpx.get(f"{stack.api_url}/ready", timeout=10).status_code == 200
    assert server.running, "the server must ride out the outage, not crash"
    log_text = server.log_text()
    retries = len(re.findall(r"left for redelivery, MongoDB", log_text))
    assert retries >= 1
    # Each attempt waits out server selection and backs off: no hot loop.
    assert retries <= outage / 2 + 2, (retries, outage)
