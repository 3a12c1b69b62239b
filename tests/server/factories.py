"""Test data: sessions and messages built by the models' own builders, as the intake builds them.

Factories build documents with `Session.open_for`, `Message.inbound` and
`Message.outbound` (so the derived fields and the fields' rules are the ones the
server's writers get) and insert them with pymongo into the database bound by
`bind` (the API fixtures bind the test database).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import factory
from bson import ObjectId
from pymongo.database import Database

from contract import clock
from server.models.messages import Message
from server.models.sessions import Session, preview

_bound: dict[str, Database] = {}


def bind(database: Database) -> None:
    _bound["database"] = database


def _insert(collection: str, document: dict[str, Any]) -> None:
    _bound["database"][collection].insert_one(document)


def now() -> dt.datetime:
    """The current time at MongoDB's precision, so documents read back unchanged."""
    return clock.stored_now()


def _session(
    *,
    id: ObjectId,
    platform: str,
    contact_identifier: str,
    contact_name: str,
    last_message_at: dt.datetime,
    **fields: Any,
) -> dict[str, Any]:
    return Session.open_for(platform, contact_identifier, contact_name, last_message_at, session_id=id, **fields)


def _message(*, id: ObjectId, session_id: ObjectId, key: str, direction: str, text: str, sent_at: dt.datetime) -> dict:
    builder = Message.inbound if direction == "in" else Message.outbound
    return builder(session_id, key, text, sent_at, message_id=id)


class SessionFactory(factory.Factory):
    """An open session; `last_message_at` decides its place in the listings."""

    class Meta:
        model = _session

    id = factory.LazyFunction(ObjectId)
    platform = "telegram"
    contact_identifier = factory.Sequence(lambda n: str(700_000 + n))
    chat_id = factory.SelfAttribute("contact_identifier")  # None: imported, no chat
    contact_name = factory.Faker("name", locale="pt_BR")
    last_message_at = factory.LazyFunction(now)
    created_at = factory.LazyAttribute(lambda o: o.last_message_at - dt.timedelta(minutes=5))
    message_count = 1
    last_message_preview = factory.Faker("sentence", locale="pt_BR")

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        document = model_class(*args, **kwargs)
        _insert("sessions", document)
        return document


class MessageFactory(factory.Factory):
    """A message of `session` (a SessionFactory document), from the contact by default."""

    class Meta:
        model = _message
        exclude = ("session",)

    session = factory.SubFactory(SessionFactory)
    id = factory.LazyFunction(ObjectId)
    session_id = factory.LazyAttribute(lambda o: o.session["_id"])
    key = factory.LazyAttribute(lambda o: f"{o.session['platform']}:{o.session['contact_identifier']}:test{o.id}")
    direction = "in"
    text = factory.Faker("sentence", locale="pt_BR")
    sent_at = factory.LazyFunction(now)

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        document = model_class(*args, **kwargs)
        _insert("messages", document)
        return document


def conversation(
    texts: list[str],
    start: dt.datetime | None = None,
    step: dt.timedelta = dt.timedelta(seconds=1),
    **session_fields: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A session holding `texts` as consecutive messages, its counters consistent with them."""
    start = start or now() - step * len(texts)
    last = start + step * (len(texts) - 1)
    session = SessionFactory.create(
        last_message_at=last,
        message_count=len(texts),
        last_message_preview=preview(texts[-1]) if texts else "",
        created_at=start,
        **session_fields,
    )
    messages = [
        MessageFactory.create(session=session, text=text, sent_at=start + step * n) for n, text in enumerate(texts)
    ]
    return session, messages
