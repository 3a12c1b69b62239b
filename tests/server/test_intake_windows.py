"""Intake's storage across its crash windows, with fail points, against the real test database."""

from __future__ import annotations

import threading

import pytest
from pymongo import WriteConcern
from pymongo.errors import BulkWriteError

from contract.messaging import InboundMessage
from runtime import failpoints
from runtime.failpoints import FailPointError
from server import sessions
from server.conversations import store_inbound
from server.models.messages import Message


@pytest.fixture
def store(database, mongo):
    yield store_inbound
    failpoints.configure({})


def inbound(contact: str, message_id: int, text: str) -> InboundMessage:
    return InboundMessage(
        platform="telegram",
        contact_identifier=contact,
        chat_id=int(contact),
        message_id=message_id,
        name="Rita",
        text=text,
        sent_at=f"2026-01-01T00:00:{message_id:02d}+00:00",
    )


def assert_counters_match_what_is_stored(mongo) -> None:
    for session in mongo.sessions.find():
        held = list(mongo.messages.find({"session_id": session["_id"]}).sort("sent_at", -1))
        assert session["message_count"] == len(held), session
        latest = {m["text"] for m in held if m["sent_at"] == held[0]["sent_at"]} if held else {""}
        assert session["last_message_preview"] in latest


def store_held_at(point: str, batch: list[InboundMessage], log) -> tuple[threading.Thread, list]:
    """Intake storing `batch` in a thread, held at the fail point `point` until resumed."""
    failpoints.configure({"BALCAO_FAILPOINTS": f"{point}=pause", "BALCAO_FAILPOINTS_LOG": str(log)})
    result: list = []
    intake = threading.Thread(target=lambda: result.extend(store_inbound(batch).messages))
    intake.start()
    for _ in range(1500):
        if log.exists() and f"{point} pause" in log.read_text():
            return intake, result
        intake.join(0.02)
    raise AssertionError(f"intake never reached {point}")


@pytest.mark.parametrize(
    "window",
    [
        "server.intake.after_messages_inserted",
        "server.intake.after_sessions_inserted",
        "server.intake.after_sessions_updated",
    ],
)
def test_a_crash_before_the_ack_leaves_counters_equal_to_what_is_stored(store, mongo, window):
    batch = [inbound("81", 1, "primeira"), inbound("81", 2, "segunda"), inbound("82", 3, "outra")]
    failpoints.configure({"BALCAO_FAILPOINTS": f"{window}=raise"})
    with pytest.raises(FailPointError):
        store(batch)
    failpoints.configure({})

    stored = store(batch)  # JetStream redelivers the unacknowledged batch

    assert mongo.messages.count_documents({}) == 3
    assert_counters_match_what_is_stored(mongo)
    # Stored before; answered again (the reply may not have gone out).
    assert {item.inserted for item in stored.messages} == {False}


def test_a_session_finished_between_lookup_and_insert_loses_no_message(store, mongo, tmp_path):
    store([inbound("91", 1, "antes")])
    session_id = mongo.sessions.find_one({"contact_identifier": "91"})["_id"]
    log = tmp_path / "failpoints"
    intake, result = store_held_at("server.intake.after_sessions_resolved", [inbound("91", 2, "durante")], log)
    assert sessions.finish(session_id)  # the agent finishes the session inside the window
    failpoints.resume(str(log), "server.intake.after_sessions_resolved")
    intake.join(30)

    assert not intake.is_alive()
    message = mongo.messages.find_one({"text": "durante"})
    assert message is not None, "the message was lost"
    follow_up = mongo.sessions.find_one({"contact_identifier": "91"})
    assert follow_up["_id"] != session_id and message["session_id"] == follow_up["_id"]
    assert mongo.messages.count_documents({}) == 1  # "antes" went with the finished session
    assert [item.inserted for item in result] == [True]
    assert_counters_match_what_is_stored(mongo)


def test_a_message_finished_with_its_session_is_not_stored_again_when_redelivered(store, mongo):
    # Stored, then the server died before acknowledging; an agent finished the
    # session; JetStream now redelivers the batch.
    stored = store([inbound("95", 1, "vista"), inbound("96", 2, "outra")])
    finished_id = next(item.session_id for item in stored.messages if item.message.contact_identifier == "95")
    assert sessions.finish(finished_id)

    again = store([inbound("95", 1, "vista"), inbound("96", 2, "outra")])

    assert mongo.sessions.count_documents({"contact_identifier": "95"}) == 0  # no session nobody opened
    assert mongo.messages.count_documents({"key": again.messages[0].key}) == 0
    finished = next(item for item in again.messages if item.message.contact_identifier == "95")
    assert (finished.session_id, finished.inserted) == (finished_id, False)
    assert mongo.messages.count_documents({}) == 1  # the other contact's message, once
    assert_counters_match_what_is_stored(mongo)
    # A new message from the same contact opens a new session as usual.
    store([inbound("95", 3, "nova")])
    assert mongo.sessions.find_one({"contact_identifier": "95"})["message_count"] == 1


def test_a_message_counted_while_a_recount_counts_is_not_dropped(store, mongo, tmp_path):
    store([inbound("71", 1, "primeira")])
    # The server died between storing the second message and counting it.
    failpoints.configure({"BALCAO_FAILPOINTS": "server.intake.after_messages_inserted=raise"})
    with pytest.raises(FailPointError):
        store([inbound("71", 2, "segunda")])
    session = mongo.sessions.find_one({"contact_identifier": "71"})
    assert session["message_count"] == 1 and mongo.messages.count_documents({}) == 2
    log = tmp_path / "failpoints"
    point = "session.recount.after_counting"
    # The redelivery recounts the session: it counted 2 and is held before writing it.
    redelivery, _ = store_held_at(point, [inbound("71", 2, "segunda")], log)
    # An agent's reply is stored and counted inside that window (count 1 -> 2).
    assert sessions.add_agent_reply(session, "resposta") is not None
    failpoints.resume(str(log), point)
    redelivery.join(30)

    assert not redelivery.is_alive()
    assert mongo.messages.count_documents({}) == 3
    assert_counters_match_what_is_stored(mongo)  # 3, not the 2 the recount had counted


def test_a_recount_inside_a_writers_window_does_not_count_its_message_twice(store, mongo, tmp_path):
    store([inbound("72", 1, "primeira")])
    log = tmp_path / "failpoints"
    point = "server.intake.after_messages_inserted"
    # A second message is stored, and its writer is held before counting it.
    writer, _ = store_held_at(point, [inbound("72", 2, "segunda")], log)
    # Inside that window a redelivery of the first message recounts the session: 2 stored.
    store([inbound("72", 1, "primeira")])
    assert mongo.sessions.find_one({"contact_identifier": "72"})["message_count"] == 2
    failpoints.resume(str(log), point)
    writer.join(30)

    assert not writer.is_alive()
    assert_counters_match_what_is_stored(mongo)  # 2, not 3


@pytest.fixture
def unreplicated_messages(monkeypatch, mongo):
    """Message inserts that reach the primary and never a majority, as when it loses its
    majority in a failover: the database's own answer to a write concern it cannot meet
    (more members than it has), with the documents written and only `writeConcernErrors`."""
    collection = Message._get_collection().with_options(write_concern=WriteConcern(w=5, wtimeout=200))
    try:
        collection.insert_many([{"probe": 1}], ordered=False)
    except BulkWriteError as error:
        if error.details.get("writeErrors") or not error.details.get("writeConcernErrors"):
            pytest.skip(f"this server answers w=5 otherwise: {error.details}")
    else:
        pytest.skip("this server meets w=5")
    mongo.messages.delete_many({"probe": 1})
    monkeypatch.setattr(Message, "_get_collection", classmethod(lambda cls: collection))


def test_messages_written_without_a_majority_are_not_taken_as_stored(store, mongo, unreplicated_messages):
    """The batch must fail, so the intake leaves it to JetStream: acknowledged now, the
    messages would be lost when the election rolls them back, and never stored again."""
    with pytest.raises(BulkWriteError) as raised:
        store([inbound("83", 1, "primeira"), inbound("83", 2, "segunda")])
    assert raised.value.details["writeConcernErrors"]
    assert not raised.value.details["writeErrors"]
