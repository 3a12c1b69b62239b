"""The session writer behind the intake and imports, against the real test database: what a batch
costs in MongoDB commands, which sessions it says it opened, and writers racing for one contact."""

from __future__ import annotations

import threading
from collections import Counter

import mongoengine
import pytest
from pymongo import monitoring

from cli.generate import generate_sessions
from contract.messaging import InboundMessage
from runtime import failpoints
from runtime.failpoints import FailPointError
from server.conversations import store_inbound
from server.importing.records import normalise_session
from server.importing.upsert import CREATED, UNCHANGED, upsert_sessions


class CommandCounter(monitoring.CommandListener):
    """Counts the commands sent, as `<command>:<collection>`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        if isinstance(collection, str):
            self.counts[f"{event.command_name}:{collection}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def taken(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


@pytest.fixture
def commands(database, mongodb_uri, mongo):
    """The models connected through a client that counts what it sends (command monitoring is per client)."""
    counter = CommandCounter()
    mongoengine.disconnect()
    mongoengine.connect(host=mongodb_uri, tz_aware=True, uuidRepresentation="standard", event_listeners=[counter])
    yield counter
    mongoengine.disconnect()
    database.connect()


def inbound(contact: int, message_id: int, name: str = "Rita Lee") -> InboundMessage:
    return InboundMessage(
        "telegram", str(contact), contact, message_id, name, f"mensagem {message_id}", "2026-01-01T00:00:00+00:00"
    )


def burst(contacts: int, messages: int, first: int = 0) -> list[InboundMessage]:
    return [inbound(9000 + n % contacts, first + n) for n in range(messages)]


def test_an_inbound_batch_costs_four_commands_whether_its_sessions_are_new_or_known(commands):
    store_inbound(burst(30, 300))
    assert commands.taken() == {
        "find:finished_messages": 1,
        "find:sessions": 1,
        "insert:messages": 1,
        "insert:sessions": 1,  # each new session written once, complete
    }

    store_inbound(burst(30, 300, first=300))
    assert commands.taken() == {
        "find:finished_messages": 1,
        "find:sessions": 1,
        "insert:messages": 1,
        "update:sessions": 1,
    }


def test_an_imported_batch_costs_three_commands_and_again_only_reads(commands, mongo):
    generated = generate_sessions(30, seed=4, messages_per_session=3)  # 90 messages: one read of their keys
    records = [normalise_session(raw, record=n) for n, raw in enumerate(generated, 1)]

    assert upsert_sessions(records, "job:0") == [CREATED] * 30
    assert commands.taken() == {"find:sessions": 1, "insert:messages": 1, "insert:sessions": 1}

    assert upsert_sessions(records, "job:1") == [UNCHANGED] * 30
    # Which keys are stored, and whether each session counts what it holds: no write at all.
    assert commands.taken() == {"find:sessions": 1, "find:messages": 1, "aggregate:messages": 1}


def test_a_batch_says_which_sessions_it_opened(database, mongo):
    first = store_inbound([inbound(9101, 1), inbound(9101, 2), inbound(9102, 3)])
    opened = {item.message.contact_identifier: item.session_id for item in first.messages}
    assert first.opened == frozenset(opened.values())

    later = store_inbound([inbound(9101, 4), inbound(9103, 5)])
    assert later.opened == {item.session_id for item in later.messages if item.message.contact_identifier == "9103"}


def test_a_batch_tried_again_after_dying_before_its_events_still_says_what_it_opened(database, mongo):
    batch = [inbound(9201, 1), inbound(9201, 2)]
    failpoints.configure({"BALCAO_FAILPOINTS": "server.intake.after_sessions_updated=raise"})
    try:
        with pytest.raises(FailPointError):
            store_inbound(batch)
    finally:
        failpoints.configure({})

    again = store_inbound(batch)  # the redelivery: everything was stored, nothing published

    assert again.opened == {mongo.sessions.find_one({"contact_identifier": "9201"})["_id"]}
    assert store_inbound([inbound(9201, 3)]).opened == frozenset()


def test_contacts_first_message_written_by_two_writers_at_once_share_one_session(database, mongo, tmp_path):
    log = tmp_path / "failpoints"
    point = "server.intake.after_messages_inserted"
    failpoints.configure({"BALCAO_FAILPOINTS": f"{point}=pause", "BALCAO_FAILPOINTS_LOG": str(log)})
    result: list = []
    try:
        # One writer found no session for the contact and stored its message, its session not yet.
        first = threading.Thread(target=lambda: result.append(store_inbound([inbound(9301, 1), inbound(9301, 2)])))
        first.start()
        for _ in range(1500):
            if log.exists() and f"{point} pause" in log.read_text():
                break
            first.join(0.02)
        # Another replica stores the contact's next message, opening the session first.
        other = store_inbound([inbound(9301, 3)])
        failpoints.resume(str(log), point)
        first.join(30)
    finally:
        failpoints.configure({})

    assert not first.is_alive() and result
    (session,) = mongo.sessions.find({"contact_identifier": "9301"})
    assert other.opened == {session["_id"]} and result[0].opened == frozenset()
    assert {item.session_id for item in result[0].messages} == {session["_id"]}
    assert mongo.messages.count_documents({"session_id": session["_id"]}) == 3
    assert session["message_count"] == 3
