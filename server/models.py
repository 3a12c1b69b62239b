"""MongoEngine documents: sessions (open conversations), their messages, the outbox."""

from __future__ import annotations

from mongoengine import (
    DateTimeField,
    DictField,
    Document,
    IntField,
    ListField,
    ObjectIdField,
    QuerySet,
    StringField,
)

PREVIEW_LENGTH = 120


class SessionQuerySet(QuerySet):
    def for_contact(self, platform: str, contact_identifier: str) -> SessionQuerySet:
        return self.filter(platform=platform, contact_identifier=contact_identifier)


class Session(Document):
    """One open conversation; at most one per contact (platform + identifier)."""

    platform = StringField(required=True)
    contact_identifier = StringField(required=True)
    contact_name = StringField(default="")
    chat_id = StringField()  # where the contact is reached; absent for imported sessions
    name_keys = ListField(StringField())  # see server.names.search_keys
    created_at = DateTimeField(required=True)
    last_message_at = DateTimeField(required=True)
    message_count = IntField(default=0, min_value=0)
    last_message_preview = StringField(default="")
    source_id = StringField()  # the `_id` a session had in an imported file

    meta = {
        "collection": "sessions",
        "queryset_class": SessionQuerySet,
        "indexes": [
            {"fields": ["platform", "contact_identifier"], "unique": True, "name": "contact"},
            {"fields": ["-last_message_at", "-id"], "name": "activity"},
            {"fields": ["name_keys", "-last_message_at", "-id"], "name": "name_search"},
        ],
        "auto_create_index": False,
    }


class Message(Document):
    """A message in a session, inbound from the contact or outbound from an agent."""

    session_id = ObjectIdField(required=True)
    # Natural key: platform, contact and the message's own id (or content hash).
    # Unique, so a redelivered or re-imported message is stored once.
    key = StringField(required=True)
    direction = StringField(required=True, choices=("in", "out"))
    text = StringField(required=True)
    sent_at = DateTimeField(required=True)
    external_id = StringField()

    meta = {
        "collection": "messages",
        "indexes": [
            {"fields": ["key"], "unique": True, "name": "message_key"},
            {"fields": ["session_id", "sent_at", "id"], "name": "session_timeline"},
        ],
        "auto_create_index": False,
    }


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
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "outbox",
        "indexes": [
            {"fields": ["key"], "unique": True, "name": "outbox_key"},
            {"fields": ["created_at"], "name": "outbox_age"},
        ],
        "auto_create_index": False,
    }


DOCUMENTS = (Session, Message, OutboxEntry)


def ensure_indexes() -> None:
    for document in DOCUMENTS:
        document.ensure_indexes()
