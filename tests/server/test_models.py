"""The models' builders and queries: what they derive, what they refuse, what the bulk writes report."""

from __future__ import annotations

import datetime as dt

import pytest
from bson import ObjectId
from mongoengine import ValidationError

from contract import clock
from contract.messaging import OutboundMessage
from server import names
from server.models import sessions as session_models
from server.models.imports import ImportBatch, ImportJob
from server.models.messages import FinishedMessage, Message
from server.models.outbox import OutboxEntry
from server.models.sessions import RECOUNT_TRIES, Session, activity_key, activity_key_time
from server.models.stored import Contended, stored_form

T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def test_a_session_is_opened_with_its_derived_fields():
    session = Session.open_for("telegram", "5585", "João Silva", T0, chat_id="5585")

    assert session["activity_key"] == activity_key(T0, session["_id"])
    assert activity_key_time(session["activity_key"]) == clock.stored(T0)
    assert session["name_keys"] == names.search_keys("João Silva")
    assert "joao" in session["name_keys"]
    assert (session["created_at"], session["last_message_at"]) == (T0, T0)
    assert (session["message_count"], session["last_message_preview"], session["chat_id"]) == (0, "", "5585")


def test_an_imported_session_is_stored_without_a_chat():
    stored = Session.open_for("telegram", "5585", "Ana", T0, source_id="603fd3c61ce2ab564307a73a")

    assert "chat_id" not in stored  # goodbyes cannot reach a contact who never wrote to the bot
    assert "import_origin" not in stored
    assert stored["source_id"] == "603fd3c61ce2ab564307a73a"
    assert stored["_id"] == ObjectId(stored["activity_key"][-24:])


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"platform": None}, "platform"),
        ({"contact_identifier": None}, "contact_identifier"),
        ({"message_count": -1}, "message_count"),
    ],
)
def test_a_session_missing_what_it_needs_is_not_built(arguments, field):
    given = {"platform": "telegram", "contact_identifier": "5585", "name": "Ana", "at": T0} | arguments

    with pytest.raises(ValidationError) as raised:
        Session.open_for(**given)
    assert field in raised.value.to_dict()


def test_a_session_without_an_activity_key_is_refused():
    """Missing from every listing otherwise: the model refuses it, whoever writes it."""
    given = {"platform": "telegram", "contact_identifier": "5585", "created_at": T0, "last_message_at": T0}

    with pytest.raises(ValidationError) as raised:
        stored_form(Session, **given)
    assert list(raised.value.to_dict()) == ["activity_key"]
    with pytest.raises(ValidationError):
        Session(**given).validate()  # the same rule as MongoEngine's own validation


def test_the_stored_form_is_what_mongoengine_would_store():
    built = Session.open_for("telegram", "5585", "João Silva", T0, chat_id="5585", message_count=2)
    document = Session._from_son(built)
    document.validate()

    assert document.to_mongo().to_dict() == built


def test_an_unknown_field_is_refused():
    with pytest.raises(ValidationError, match="no field colour"):
        stored_form(Message, key="k", colour="blue")


def test_messages_are_built_with_their_direction():
    session_id = ObjectId()
    inbound = Message.inbound(session_id, "telegram:1:tg7", "oi", T0, external_id="7")
    outbound = Message.outbound(session_id, "telegram:1:agent:x", "olá", T0)

    assert (inbound["direction"], inbound["external_id"]) == ("in", "7")
    assert outbound["direction"] == "out"
    assert "external_id" not in outbound
    assert "_id" not in inbound  # chosen by the database when inserted


def test_a_message_direction_outside_the_choices_is_refused():
    with pytest.raises(ValidationError) as raised:
        Message._built(ObjectId(), "telegram:1:tg7", "sideways", "oi", T0)
    assert "direction" in raised.value.to_dict()


@pytest.mark.parametrize("missing", ["key", "text", "sent_at", "session_id"])
def test_a_message_missing_a_required_field_is_refused(missing):
    given = {"session_id": ObjectId(), "key": "telegram:1:tg7", "text": "oi", "sent_at": T0} | {missing: None}

    with pytest.raises(ValidationError) as raised:
        Message.inbound(**given)
    assert missing in raised.value.to_dict()


def test_an_import_job_starts_running_at_the_stored_precision():
    job = ImportJob.start("@suporte", "sessions.csv", "upload", "csv", {"received": 0}, T0)

    assert job["status"] == "running"
    assert job["created_at"] == job["last_activity_at"] == T0.replace(microsecond=123000)
    assert (job["bytes_received"], job["next_chunk"], job["errors"]) == (0, 0, [])
    assert "file_format" in job and "finished_at" not in job


def test_an_import_job_of_an_unknown_mode_is_refused():
    with pytest.raises(ValidationError) as raised:
        ImportJob.start("@suporte", "x.csv", "email", None, {}, T0)
    assert "mode" in raised.value.to_dict()


def test_an_import_batch_needs_a_sequence_number_from_zero():
    assert ImportBatch.record(ObjectId(), 0, {"received": 1}, [], T0)["seq"] == 0
    with pytest.raises(ValidationError) as raised:
        ImportBatch.record(ObjectId(), -1, {}, [], T0)
    assert "seq" in raised.value.to_dict()


def test_an_outbox_entry_keeps_the_message_it_promises():
    message = OutboundMessage(key="finish:1", chat_id="42", text="Tchau", kind="goodbye", meta={"session_id": "1"})

    assert OutboxEntry._from_son(OutboxEntry.for_message(message, T0)).promised() == message
    with pytest.raises(ValidationError):
        OutboxEntry.for_message(OutboundMessage(key="k", chat_id=None, text="t", kind="reply"), T0)


def test_a_tombstone_names_its_session():
    with pytest.raises(ValidationError):
        FinishedMessage.tombstone("telegram:1:tg7", None, T0)
    assert FinishedMessage.tombstone("telegram:1:tg7", ObjectId(), T0)["_id"] == "telegram:1:tg7"


# Against the database: the queries and the bulk writes.


@pytest.fixture
def store(database, mongo):
    return mongo


def test_for_contact_finds_one_or_several_contacts_of_a_platform(store):
    sessions = [Session.open_for("telegram", str(n), f"C{n}", T0) for n in range(3)]
    other_platform = Session.open_for("whatsapp", "0", "C0", T0)
    assert Session.insert_new([*sessions, other_platform]) == set()

    assert [s.id for s in Session.objects.for_contact("telegram", "1")] == [sessions[1]["_id"]]
    found = {doc["_id"] for doc in Session.objects.for_contact("telegram", "0", "2").as_pymongo()}
    assert found == {sessions[0]["_id"], sessions[2]["_id"]}


def test_bulk_inserts_report_what_was_stored_already(store):
    first = Session.open_for("telegram", "9", "Ana", T0)
    again = Session.open_for("telegram", "9", "Ana", T0)  # another writer opened the contact meanwhile
    fresh = Session.open_for("telegram", "10", "Bia", T0)

    assert Session.insert_new([first]) == set()
    assert Session.insert_new([again, fresh]) == {0}

    messages = [Message.inbound(first["_id"], f"telegram:9:tg{n}", "oi", T0) for n in range(3)]
    assert Message.insert_new(messages[:1]) == {"telegram:9:tg0"}
    assert Message.insert_new(messages) == {"telegram:9:tg1", "telegram:9:tg2"}
    assert Message.objects.counts_by_session([first["_id"], fresh["_id"]]) == {first["_id"]: 3}
    assert Session.objects.present([first["_id"], again["_id"], fresh["_id"]]) == {first["_id"], fresh["_id"]}


def test_single_documents_are_saved_through_mongoengine(store):
    batch = ImportBatch.record(ObjectId(), 0, {"received": 1}, [], T0)

    assert ImportBatch.save_new(batch) is True
    assert ImportBatch.save_new(batch | {"counts": {"received": 2}}) is False  # the unique (job, seq) holds
    assert ImportBatch.objects.find_one(batch["job_id"], 0)["counts"] == {"received": 1}

    first = OutboundMessage(key="finish:1", chat_id="42", text="Tchau", kind="goodbye")
    OutboxEntry.keep(first, T0)
    OutboxEntry.keep(OutboundMessage(key="finish:1", chat_id="42", text="outro", kind="goodbye"), T0)
    assert OutboxEntry.objects.pending(10) == [first]


def test_a_recount_whose_session_keeps_changing_gives_up_as_contended(store, monkeypatch):
    """Another writer lands in the recount's window on every try: after RECOUNT_TRIES reads
    it gives up with RecountContended, the count left as it was, not half-written."""
    session = Session.open_for("telegram", "7", "Ana", T0)
    Session.insert_new([session])
    Message.insert_new([Message.inbound(session["_id"], "telegram:7:tg1", "oi", T0)])
    store.sessions.update_one({"_id": session["_id"]}, {"$set": {"message_count": 5}})  # stale
    passes = []

    def another_writer_in_the_window(name: str) -> None:
        if name == "session.recount.after_counting":
            passes.append(name)
            store.sessions.update_one({"_id": session["_id"]}, {"$inc": {"count_version": 1}})

    monkeypatch.setattr(session_models, "failpoint", another_writer_in_the_window)

    with pytest.raises(Contended):
        Session.recount([session["_id"]])
    assert len(passes) == RECOUNT_TRIES
    assert store.sessions.find_one({"_id": session["_id"]})["message_count"] == 5

    monkeypatch.setattr(session_models, "failpoint", lambda name: None)  # the writers are done
    assert Session.recount([session["_id"]]) == {session["_id"]}
    assert store.sessions.find_one({"_id": session["_id"]})["message_count"] == 1


def test_an_edit_is_applied_once_in_order_and_keeps_a_bounded_history(store):
    from server.models.messages import MAX_EARLIER_VERSIONS

    session = Session.open_for("telegram", "8", "Ana", T0)
    Session.insert_new([session])
    Message.insert_new([Message.inbound(session["_id"], "telegram:8:tg1", "v0", T0)])
    at = T0 + dt.timedelta(minutes=1)

    first = Message.objects.edit("telegram:8:tg1", "v1", at, 100)
    assert first is not None and first["text"] == "v1"
    assert Message.objects.edit("telegram:8:tg1", "v1", at, 100) is None  # redelivered: applied already
    assert Message.objects.edit("telegram:8:tg1", "v0.5", at, 99) is None  # older than what is stored
    assert Message.objects.edit("telegram:8:tg404", "x", at, 101) is None  # no such message (finished)
    for update_id in range(101, 101 + MAX_EARLIER_VERSIONS + 5):
        Message.objects.edit("telegram:8:tg1", f"u{update_id}", at, update_id)
    stored = store.messages.find_one({"key": "telegram:8:tg1"})
    last = 100 + MAX_EARLIER_VERSIONS + 5
    assert stored["text"] == f"u{last}" and stored["edit_update_id"] == last
    assert len(stored["versions"]) == MAX_EARLIER_VERSIONS
    assert stored["versions"][-1]["text"] == f"u{last - 1}"
