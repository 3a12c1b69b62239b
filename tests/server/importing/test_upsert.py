"""The upsert engine against a real MongoDB-wire server: created, updated, unchanged, merged."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from cli.generate import generate_sessions
from server.importing.records import ImportedMessage, ImportedSession, normalise_session
from server.importing.upsert import CREATED, UNCHANGED, UPDATED, upsert_sessions
from server.models.sessions import SessionQuerySet, activity_key
from tests.server import factories
from tests.server.factories import SessionFactory

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def record(
    identifier: str = "5585999990001",
    name: str = "João Silva",
    *messages: tuple[str, int],
    source_id: str | None = None,
    with_ids: bool = True,
) -> ImportedSession:
    """A validated record; each message is (text, minutes after T0)."""
    return ImportedSession(
        source_id,
        name,
        "telegram",
        identifier,
        tuple(
            ImportedMessage(f"m-{text}" if with_ids else None, text, T0 + dt.timedelta(minutes=minutes))
            for text, minutes in messages
        ),
    )


def generated(count: int, seed: int = 3) -> list[ImportedSession]:
    return [normalise_session(raw, record=n) for n, raw in enumerate(generate_sessions(count, seed=seed), 1)]


@pytest.fixture
def store(database, mongo):
    """Runs the engine in this process against the emptied test database."""
    factories.bind(mongo)
    return upsert_sessions


def test_new_contacts_get_a_session_with_their_messages(store, mongo):
    outcomes = store([record("1", "Ana Luíza", ("oi", 1), ("tudo bem?", 5), source_id="603fd3c61ce2ab564307a73a")])

    assert outcomes == [CREATED]
    session = mongo.sessions.find_one()
    assert session["contact_name"] == "Ana Luíza"
    assert "ana" in session["name_keys"] and "luiza" in session["name_keys"]
    assert session["message_count"] == 2
    assert session["last_message_preview"] == "tudo bem?"
    assert session["created_at"] == T0 + dt.timedelta(minutes=1)
    assert session["last_message_at"] == T0 + dt.timedelta(minutes=5)
    assert session["activity_key"] == activity_key(T0 + dt.timedelta(minutes=5), session["_id"])
    assert session["source_id"] == "603fd3c61ce2ab564307a73a"
    assert "chat_id" not in session  # no chat until the contact writes to the bot
    messages = list(mongo.messages.find().sort("sent_at", 1))
    assert [m["text"] for m in messages] == ["oi", "tudo bem?"]
    assert {m["session_id"] for m in messages} == {session["_id"]}
    assert messages[0]["key"] == "telegram:1:id:m-oi" and messages[0]["external_id"] == "m-oi"


def test_a_session_without_messages_is_dated_by_its_source_id(store, mongo):
    store([record("12", "Otávio", source_id="603fd3c61ce2ab564307a73a")])

    session = mongo.sessions.find_one()
    assert session["created_at"] == session["last_message_at"] == dt.datetime(2021, 3, 3, 18, 21, 58, tzinfo=dt.UTC)
    assert session["message_count"] == 0 and session["last_message_preview"] == ""


def test_importing_the_same_records_again_changes_nothing(store, mongo):
    batch = generated(40)
    store(batch)
    before = list(mongo.sessions.find().sort("_id")), list(mongo.messages.find().sort("_id"))

    assert store(batch) == [UNCHANGED] * 40
    assert (list(mongo.sessions.find().sort("_id")), list(mongo.messages.find().sort("_id"))) == before


def test_messages_without_an_id_are_matched_by_date_and_content(store, mongo):
    store([record("2", "Caio", ("sem id", 3), with_ids=False)])

    assert store([record("2", "Caio", ("sem id", 3), with_ids=False)]) == [UNCHANGED]
    assert store([record("2", "Caio", ("sem id", 4), with_ids=False)]) == [UPDATED]  # another date: another message
    assert mongo.messages.count_documents({}) == 2


def test_new_messages_update_the_session_counter_preview_and_activity(store, mongo):
    store([record("3", "Davi", ("primeira", 10))])

    assert store([record("3", "Davi", ("primeira", 10), ("segunda", 20))]) == [UPDATED]
    session = mongo.sessions.find_one()
    assert session["message_count"] == 2
    assert session["last_message_preview"] == "segunda"
    assert session["last_message_at"] == T0 + dt.timedelta(minutes=20)
    assert session["activity_key"] == activity_key(T0 + dt.timedelta(minutes=20), session["_id"])


def test_an_older_message_counts_but_leaves_the_preview_and_activity(store, mongo):
    store([record("4", "Eva", ("recente", 30))])

    store([record("4", "Eva", ("antiga", 1))])
    session = mongo.sessions.find_one()
    assert session["message_count"] == 2
    assert session["last_message_preview"] == "recente"
    assert session["last_message_at"] == T0 + dt.timedelta(minutes=30)


def test_records_merge_into_the_session_the_bot_opened_without_renaming_it(store, mongo):
    opened = SessionFactory.create(
        contact_identifier="5",
        contact_name="Fábio (Telegram)",
        chat_id="5",
        last_message_at=T0 + dt.timedelta(minutes=50),
        message_count=1,
        last_message_preview="pelo bot",
    )
    factories.MessageFactory.create(session=opened, text="pelo bot", sent_at=T0 + dt.timedelta(minutes=50))

    assert store([record("5", "Fabio do arquivo", ("do arquivo", 2))]) == [UPDATED]
    session = mongo.sessions.find_one()
    assert session["_id"] == opened["_id"]
    assert session["contact_name"] == "Fábio (Telegram)"  # the live profile is newer than any file
    assert session["message_count"] == 2
    assert session["last_message_preview"] == "pelo bot"
    assert session["chat_id"] == "5"


def test_a_later_file_renames_an_imported_session(store, mongo):
    store([record("6", "Gabi", ("oi", 1))])

    assert store([record("6", "Gabriela Souza", ("oi", 1))]) == [UPDATED]
    session = mongo.sessions.find_one()
    assert session["contact_name"] == "Gabriela Souza"
    assert "souza" in session["name_keys"] and "gabi" not in session["name_keys"]


def test_a_source_id_is_added_once(store, mongo):
    store([record("7", "Heitor", ("oi", 1))])

    assert store([record("7", "Heitor", ("oi", 1), source_id="603fd3c61ce2ab564307a73b")]) == [UPDATED]
    assert store([record("7", "Heitor", ("oi", 1), source_id="603fd3c61ce2ab564307a73c")]) == [UNCHANGED]
    assert mongo.sessions.find_one()["source_id"] == "603fd3c61ce2ab564307a73b"


def test_records_of_one_contact_in_a_batch_are_judged_in_file_order(store, mongo):
    outcomes = store(
        [
            record("8", "Iara", ("a", 1)),
            record("8", "Iara", ("a", 1)),  # nothing new after the first
            record("8", "Iara", ("b", 2)),
            record("9", "Júlio", ("c", 3)),
        ]
    )

    assert outcomes == [CREATED, UNCHANGED, UPDATED, CREATED]
    assert mongo.sessions.count_documents({}) == 2
    assert mongo.sessions.find_one({"contact_identifier": "8"})["message_count"] == 2


def test_a_contact_opened_meanwhile_by_another_writer_is_merged_into(store, mongo, monkeypatch):
    other = SessionFactory.create(contact_identifier="10", contact_name="Lia", chat_id="10", message_count=0)
    real = SessionQuerySet.by_contact
    calls = []

    def stale_first_read(queryset, contacts, fields):
        calls.append(list(contacts))
        return {} if len(calls) == 1 else real(queryset, contacts, fields)  # the first read misses `other`

    monkeypatch.setattr(SessionQuerySet, "by_contact", stale_first_read)
    assert store([record("10", "Lia", ("oi", 1))]) == [UPDATED]
    assert mongo.sessions.count_documents({}) == 1
    assert mongo.sessions.find_one()["_id"] == other["_id"]
    assert mongo.sessions.find_one()["message_count"] == 1


def test_a_message_stored_meanwhile_by_another_import_is_not_counted_twice(store, mongo, tmp_path):
    from runtime import failpoints

    log = tmp_path / "failpoints"
    try:
        # Held once it found no session for the contact, before storing anything.
        writer, outcomes = _upsert_paused_at(
            "import.after_sessions_resolved", [record("11", "Nina", ("um", 1), ("dois", 2))], log
        )
        # Another import of a file holding one of the messages opens the session and counts it
        # (the fail point fires on its first pass only).
        assert upsert_sessions([record("11", "Nina", ("um", 1))]) == [CREATED]
        failpoints.resume(str(log), "import.after_sessions_resolved")
        writer.join(30)
    finally:
        failpoints.configure({})

    assert not writer.is_alive()
    assert outcomes == [UPDATED]  # it added "dois" to the session the other import opened
    assert mongo.sessions.count_documents({}) == 1 and mongo.messages.count_documents({}) == 2
    _every_message_in_a_live_session(mongo)  # 2: "um" is counted once


def test_an_imported_contact_writing_to_the_bot_gets_their_chat_and_name(store, mongo):
    from contract.messaging import InboundMessage
    from server.conversations import store_inbound

    store([record("13", "Paula (arquivo)", ("antiga", 1))])
    message = InboundMessage("telegram", "13", 13, 501, "Paula Souza", "voltei", "2024-05-02T10:00:00+00:00")

    store_inbound([message])

    session = mongo.sessions.find_one()
    assert session["chat_id"] == "13"  # goodbyes and agent replies can reach the contact now
    assert session["contact_name"] == "Paula Souza"
    assert session["message_count"] == 2
    assert mongo.sessions.count_documents({}) == 1


@pytest.mark.parametrize("window", ["import.after_sessions_inserted", "import.after_messages_inserted"])
def test_a_batch_retried_after_a_crash_counts_each_message_once(store, mongo, window):
    from runtime import failpoints
    from runtime.failpoints import FailPointError

    batch = [record("11", "Ana", ("oi", 1), ("tudo bem?", 2)), record("12", "Bia", ("olá", 3))]
    failpoints.configure({"BALCAO_FAILPOINTS": f"{window}=raise"})
    try:
        with pytest.raises(FailPointError):
            store(batch, "job-1:0")
    finally:
        failpoints.configure({})

    # The client sends the chunk again: reported as its first try would have been.
    assert store(batch, "job-1:0") == [CREATED, CREATED]

    assert mongo.messages.count_documents({}) == 3
    for session in mongo.sessions.find():
        assert session["message_count"] == mongo.messages.count_documents({"session_id": session["_id"]})


def _upsert_paused_at(point: str, batch: list[ImportedSession], log) -> tuple[threading.Thread, list]:
    """The engine storing `batch` in a thread, held at the fail point `point` until resumed."""
    from runtime import failpoints

    failpoints.configure({"BALCAO_FAILPOINTS": f"{point}=pause", "BALCAO_FAILPOINTS_LOG": str(log)})
    outcomes: list = []
    writer = threading.Thread(target=lambda: outcomes.extend(upsert_sessions(batch, "job-2:0")))
    writer.start()
    for _ in range(1500):
        if log.exists() and f"{point} pause" in log.read_text():
            break
        writer.join(0.02)
    assert log.exists() and f"{point} pause" in log.read_text(), "the engine never reached the window"
    return writer, outcomes


def _every_message_in_a_live_session(mongo) -> None:
    live = {session["_id"] for session in mongo.sessions.find({}, {"_id": 1})}
    orphans = [m["key"] for m in mongo.messages.find() if m["session_id"] not in live]
    assert orphans == [], "messages left in finished sessions"
    for session in mongo.sessions.find():
        assert session["message_count"] == mongo.messages.count_documents({"session_id": session["_id"]}), session


def test_sessions_finished_between_lookup_and_insert_lose_no_imported_message(store, mongo, tmp_path):
    from runtime import failpoints
    from server import sessions

    assert store([record("21", "Bia", ("antes", 1))]) == [CREATED]
    earlier = mongo.sessions.find_one({"contact_identifier": "21"})["_id"]
    batch = [record("20", "Ana", ("oi", 2), ("tudo bem?", 3)), record("21", "Bia", ("depois", 4), ("mais", 5))]
    log = tmp_path / "failpoints"
    try:
        # Held once Bia's open session was looked up (Ana has none), before anything is
        # stored: the agent finishes Bia's inside the window.
        writer, outcomes = _upsert_paused_at("import.after_sessions_resolved", batch, log)
        assert sessions.finish(earlier)
        failpoints.resume(str(log), "import.after_sessions_resolved")
        writer.join(30)
    finally:
        failpoints.configure({})

    assert not writer.is_alive()
    _every_message_in_a_live_session(mongo)
    stored = {
        (m["text"], mongo.sessions.find_one({"_id": m["session_id"]})["contact_identifier"])
        for m in mongo.messages.find()
    }
    assert stored == {("oi", "20"), ("tudo bem?", "20"), ("depois", "21"), ("mais", "21")}  # "antes" was finished
    assert mongo.messages.count_documents({}) == 4
    assert earlier not in {s["_id"] for s in mongo.sessions.find()}  # Bia's next session
    assert outcomes == [CREATED, CREATED]  # where the records are now: both opened the contact's session


@pytest.mark.parametrize(
    ("known", "window", "outcome"),
    [(False, "import.after_sessions_inserted", CREATED), (True, "import.after_messages_inserted", UPDATED)],
)
def test_messages_a_racing_finish_took_are_finished_not_stored_again(store, mongo, tmp_path, known, window, outcome):
    from runtime import failpoints
    from server import sessions

    if known:
        store([record("22", "Caio", ("antes", 0))])
    log = tmp_path / "failpoints"
    try:
        # Held once the messages are stored in the session: the finish sees them, as the agent did.
        writer, outcomes = _upsert_paused_at(window, [record("22", "Caio", ("visto", 1), ("também", 2))], log)
        assert sessions.finish(mongo.sessions.find_one({"contact_identifier": "22"})["_id"])
        failpoints.resume(str(log), window)
        writer.join(30)
    finally:
        failpoints.configure({})

    assert not writer.is_alive()
    assert outcomes == [outcome]  # as if the finish came after the batch
    assert mongo.sessions.count_documents({}) == 0 and mongo.messages.count_documents({}) == 0
    assert mongo.finished_messages.count_documents({}) == 2 + known


def test_a_new_session_is_never_seen_without_its_messages(store, mongo, tmp_path):
    from runtime import failpoints

    log = tmp_path / "failpoints"
    try:
        # Held once its messages are stored, before its session is: nobody can see, list,
        # recount or finish a session that does not count them yet.
        writer, outcomes = _upsert_paused_at(
            "import.after_messages_inserted", [record("23", "Duda", ("um", 1), ("dois", 2))], log
        )
        assert mongo.sessions.count_documents({}) == 0
        assert mongo.messages.count_documents({}) == 2
        failpoints.resume(str(log), "import.after_messages_inserted")
        writer.join(30)
    finally:
        failpoints.configure({})

    assert not writer.is_alive()
    assert outcomes == [CREATED]
    _every_message_in_a_live_session(mongo)
    assert mongo.sessions.find_one({"contact_identifier": "23"})["message_count"] == 2


def test_an_imported_file_is_a_message_of_its_kind_whose_bytes_were_not_kept(store, mongo):
    photo = ImportedMessage("m-photo", "recibo", T0 + dt.timedelta(minutes=2), "photo")
    place = ImportedMessage("m-place", "", T0 + dt.timedelta(minutes=3), "location")
    store([ImportedSession(None, "Ana", "telegram", "7", (ImportedMessage("m-oi", "oi", T0), photo, place))])

    kinds = {m["external_id"]: m for m in mongo.messages.find()}
    assert "kind" not in kinds["m-oi"] and "file" not in kinds["m-oi"]  # texts are stored as they always were
    assert kinds["m-photo"]["kind"] == "photo" and kinds["m-photo"]["text"] == "recibo"
    assert kinds["m-photo"]["file"]["available"] is False
    assert kinds["m-photo"]["file"]["reason"] == "imported without its bytes"
    assert kinds["m-place"]["kind"] == "location" and "file" not in kinds["m-place"]
    assert mongo.sessions.find_one()["last_message_preview"] == "[location]"
