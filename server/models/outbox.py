"""What is promised before JetStream has it: outbound messages and events, kept until relayed.

The one `$setOnInsert` upsert of a promised event is raw pymongo: MongoEngine's
`set_on_insert__` would store its fields without their rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from bson import ObjectId
from mongoengine import (
    DateTimeField,
    DictField,
    Document,
    ListField,
    NotUniqueError,
    ObjectIdField,
    QuerySet,
    StringField,
)

from contract.messaging import OutboundFile, OutboundMessage
from server.models.stored import Stored, save_new, stored_form


class OutboxQuerySet(QuerySet):
    def pending(self, limit: int) -> list[OutboundMessage]:
        """The oldest entries not yet handed to JetStream, as the messages they promise."""
        return [entry.promised() for entry in self.order_by("created_at").limit(limit)]

    def forget(self, keys: list[str]) -> None:
        self.filter(key__in=keys).delete()


class OutboxEntry(Document):
    """A message promised to a contact or channel, kept until JetStream has it.

    Finishing a session deletes it; the goodbye must survive NATS being down at
    that moment, so it is written here first and relayed when NATS answers.
    """

    key = StringField(required=True)
    chat_id = StringField(required=True)
    text = StringField(required=True)
    kind = StringField(required=True)
    details = DictField()
    file = DictField(default=None)  # an agent's file (contract.messaging.OutboundFile)
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "outbox",
        "queryset_class": OutboxQuerySet,
        "indexes": [
            {"fields": ["key"], "unique": True, "name": "outbox_key"},
            {"fields": ["created_at"], "name": "outbox_age"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def for_message(cls, message: OutboundMessage, at: dt.datetime) -> Stored:
        """The entry that keeps `message` until JetStream has it, as stored."""
        return stored_form(
            cls,
            key=message.key,
            chat_id=message.chat_id,
            text=message.text,
            kind=message.kind,
            details=message.meta,
            file=dataclasses.asdict(message.file) if message.file else None,
            created_at=at,
        )

    @classmethod
    def keep(cls, message: OutboundMessage, at: dt.datetime) -> None:
        """Keep `message` in the outbox; one promised before (same key) stands as it was."""
        try:
            save_new(cls, cls.for_message(message, at))
        except NotUniqueError:
            pass  # a retried finish or import ending promised it already

    def promised(self) -> OutboundMessage:
        return OutboundMessage(
            key=self.key,
            chat_id=self.chat_id,
            text=self.text,
            kind=self.kind,
            meta=dict(self.details or {}),
            file=OutboundFile.from_json(self.file) if self.file else None,
        )


class EventPromiseQuerySet(QuerySet):
    def oldest(self, limit: int) -> list[dict[str, Any]]:
        """The oldest promises, as stored: the relay publishes their body as it is."""
        return list(self.order_by("created_at").limit(limit).as_pymongo())

    def forget(self, ids: list[ObjectId]) -> None:
        self.filter(id__in=ids).delete()


class EventPromise(Document):
    """An event promised to BALCAO_EVENTS (session finished, import finished), kept until JetStream has it.

    Written before the change it reports, or in the same step, so a crash before
    the publish loses nothing; `after_session_gone` holds it back until that
    session is deleted, so a finish that failed half-way reports nothing.
    """

    key = StringField(required=True)  # the event's Nats-Msg-Id
    subject = StringField(required=True)
    body = DictField(required=True)
    after_session_gone = ObjectIdField()
    # session.finished: the contact's chat, whose parked messages and dead letters
    # are purged with the session's events before the event is published.
    chat_id = StringField()
    # session.finished: the object-store names of the session's files, deleted with it.
    files = ListField(StringField(), default=None)
    created_at = DateTimeField(required=True)

    @classmethod
    def keep(
        cls,
        key: str,
        subject: str,
        body: dict[str, Any],
        at: dt.datetime,
        after_session_gone: ObjectId | None = None,
        chat_id: str | None = None,
        files: list[str] | None = None,
    ) -> None:
        """Promise this event; promising the same key again (a retried finish) keeps the first promise."""
        document = stored_form(
            cls,
            key=key,
            subject=subject,
            body=body,
            created_at=at,
            after_session_gone=after_session_gone,
            chat_id=chat_id,
            files=files or None,
        )
        document.pop("key")
        # An upsert with $setOnInsert: MongoEngine's `set_on_insert__` would not run the fields' rules.
        cls._get_collection().update_one({"key": key}, {"$setOnInsert": document}, upsert=True)

    meta = {
        "collection": "event_outbox",
        "queryset_class": EventPromiseQuerySet,
        "indexes": [
            {"fields": ["key"], "unique": True, "name": "event_outbox_key"},
            {"fields": ["created_at"], "name": "event_outbox_age"},
        ],
        "auto_create_index": False,
    }
