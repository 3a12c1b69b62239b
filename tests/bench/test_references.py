"""The references store what Balcão stores: a ratio compares the same durable work done two ways.

Each reference is written without Balcão's code (bench/reference/); these tests
run Balcão's storage and the reference's on the same input against the test
MongoDB-wire server and compare what each left in its database.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import pytest
from bson import ObjectId

from bench.reference import documents, importer
from bench.reference import intake as reference_intake
from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from contract.messaging import InboundMessage
from runtime import jetstream
from server import names
from server.conversations import inbound_key, store_inbound
from server.importing.records import normalise_session
from server.importing.upsert import upsert_sessions
from server.models.messages import FinishedMessage
from server.models.sessions import activity_key
from tests.server import factories

NAMES = ["João da Silva", "Ana Luíza Conceição", "Zoë O'Connor-Ørsted", "Straße Ĳssel", "Mãe 3ª Geração", "李小龍 Lee"]


@pytest.fixture
def both(database, mongo, mongo_client):
    """Balcão's database (emptied, MongoEngine bound to it) and an empty one for the reference."""
    factories.bind(mongo)
    reference = mongo_client[f"{mongo.name}_reference"]
    mongo_client.drop_database(reference.name)
    documents.create_indexes(reference)
    yield mongo, reference
    mongo_client.drop_database(reference.name)


def without(docs, *fields: str) -> list[dict]:
    return sorted(({k: v for k, v in doc.items() if k not in fields} for doc in docs), key=repr)


def test_the_search_keys_are_balcaos():
    for name in [*NAMES, "a" * 40, "", "  ", "José-Maria d'Ávila_Ñúñez"]:
        assert documents.search_keys(name) == names.search_keys(name), name


def test_the_activity_key_is_balcaos():
    session = documents.session_document(
        ObjectId(), "1", "Ana", dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC), chat_id="1"
    )
    assert session["activity_key"] == activity_key(session["last_message_at"], session["_id"])


def test_the_intake_reference_stores_what_balcaos_intake_stores(both):
    balcao, reference = both
    batch = [
        InboundMessage(
            "telegram", str(100 + n % 4), 100 + n % 4, n, NAMES[n % 4], f"mensagem {n}", "2026-11-30T12:00:00+00:00"
        )
        for n in range(10)
    ]
    store_inbound(batch)
    reference_intake.store(reference, [json.loads(message.to_bytes()) for message in batch])

    moving = ("_id", "created_at", "last_message_at", "activity_key")
    assert without(reference.sessions.find(), *moving) == without(balcao.sessions.find(), *moving)
    assert without(reference.messages.find(), "_id", "session_id") == without(
        balcao.messages.find(), "_id", "session_id"
    )
    for session in reference.sessions.find():
        assert session["activity_key"] == activity_key(session["last_message_at"], session["_id"])
        assert reference.messages.count_documents({"session_id": session["_id"]}) == session["message_count"]


def test_neither_intake_stores_again_a_message_finished_with_its_session(both):
    """A redelivered message whose session an agent finished is answered in that session, not stored again."""
    balcao, reference = both
    seen, new = (
        InboundMessage("telegram", "100", 100, n, "Ana", text, "2026-11-30T12:00:00+00:00")
        for n, text in ((1, "vista"), (2, "nova"))
    )
    gone = ObjectId()
    FinishedMessage.remember([inbound_key(seen)], gone, factories.now())
    reference.finished_messages.insert_one(FinishedMessage.tombstone(inbound_key(seen), gone, factories.now()))

    balcao_stored = store_inbound([seen, new])
    reference_stored = reference_intake.store(reference, [json.loads(m.to_bytes()) for m in (seen, new)])

    assert [(item.key, item.session_id == gone) for item in balcao_stored.messages] == [
        (key, session_id == gone) for _, key, session_id, _ in reference_stored
    ]
    assert (
        [doc["key"] for doc in reference.messages.find()]
        == [doc["key"] for doc in balcao.messages.find()]
        == [inbound_key(new)]
    )
    assert without(reference.sessions.find(), "_id", "created_at", "last_message_at", "activity_key") == without(
        balcao.sessions.find(), "_id", "created_at", "last_message_at", "activity_key"
    )


def test_the_import_reference_stores_what_balcaos_import_stores(both, tmp_path: Path):
    balcao, reference = both
    records = list(generate_sessions(25, messages_per_session=3, seed=5))
    path = tmp_path / "sessions.csv"
    out = io.StringIO()
    write_sessions(iter(records), out, "csv")
    path.write_text(out.getvalue(), encoding="utf-8")

    upsert_sessions([normalise_session(record, record=n) for n, record in enumerate(records, 1)])
    assert importer.load(str(path), reference, 10) == 25

    assert without(reference.sessions.find(), "_id", "activity_key") == without(
        balcao.sessions.find(), "_id", "activity_key"
    )
    assert without(reference.messages.find(), "_id", "session_id") == without(
        balcao.messages.find(), "_id", "session_id"
    )


def test_the_references_index_alike(both):
    balcao, reference = both
    store_inbound([InboundMessage("telegram", "1", 1, 1, "Ana", "oi", "2026-11-30T12:00:00+00:00")])

    def keys(database, collection):
        info = database[collection].index_information()
        return {name: (spec["key"], spec.get("unique", False)) for name, spec in info.items()}

    for collection in ("sessions", "messages"):
        assert keys(reference, collection) == keys(balcao, collection)


def test_the_references_declare_the_work_queues_alike():
    balcao = {config.name: config for config in jetstream.STREAMS}
    for config in documents.STREAMS:
        if config.name not in balcao:
            continue
        theirs = balcao[config.name]
        for field in ("subjects", "retention", "storage", "duplicate_window", "discard"):
            assert getattr(config, field) == getattr(theirs, field), (config.name, field)
