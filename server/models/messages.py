"""Messages: what a contact and an agent said in a session, and the keys of finished ones.

Built by `Message.inbound`, `Message.outbound` and `FinishedMessage.tombstone`,
checked by their fields' own rules (server.models.stored); the queries live in
each model's QuerySet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from bson import ObjectId
from mongoengine import DateTimeField, DictField, Document, IntField, ListField, ObjectIdField, QuerySet, StringField

from server.models.stored import Stored, in_slices, insert_unordered, save_new, stored_form, update_many_each

# How long the keys of finished messages are kept: two days.
FINISHED_MESSAGE_SECONDS = 2 * 24 * 3600
# Earlier versions of an edited message kept with it: the latest ones. A
# contact who edits one message thousands of times makes it no larger.
MAX_EARLIER_VERSIONS = 10


def preview_text(message: dict) -> str:
    """What a stored message shows in a preview: its text, or for anything else its
    kind with the caption, file name or place (`[photo] receipt`, `[location] -23.5, -46.6`)."""
    kind = message.get("kind") or "text"
    if kind == "text":
        return message.get("text", "")
    shown = message.get("text") or (message.get("file") or {}).get("name") or ""
    if not shown and message.get("location"):
        shown = "{latitude:g}, {longitude:g}".format(**message["location"])
    if not shown and message.get("contact"):
        card = message["contact"]
        shown = " ".join(part for part in (card.get("first_name"), card.get("last_name")) if part)
    return f"[{kind}] {shown}".rstrip()


class MessageQuerySet(QuerySet):
    def for_session(self, session_id: ObjectId) -> MessageQuerySet:
        return self.filter(session_id=session_id)

    def holders(self, keys: Iterable[str]) -> dict[str, ObjectId]:
        """The session each of these stored message keys is in: `$in` reads on the unique key index."""
        found: dict[str, ObjectId] = {}
        for some in in_slices(keys):
            found.update(
                (doc["key"], doc["session_id"])
                for doc in self.filter(key__in=some).only("key", "session_id").as_pymongo()
            )
        return found

    def counts_by_session(self, session_ids: Iterable[ObjectId]) -> dict[ObjectId, int]:
        """How many messages each of these sessions holds (absent: none): aggregations on the timeline index."""
        counts: dict[ObjectId, int] = {}
        for some in in_slices(session_ids):
            grouped = self.filter(session_id__in=some).aggregate(
                [{"$group": {"_id": "$session_id", "count": {"$sum": 1}}}]
            )
            counts.update((doc["_id"], doc["count"]) for doc in grouped)
        return counts

    def latest_text(self, session_id: ObjectId) -> str | None:
        """What the session's latest message shows in a preview (server.models.sessions.preview_text)."""
        fields = ("text", "kind", "file", "location", "contact")
        latest = self.for_session(session_id).order_by("-sent_at", "-id").only(*fields).as_pymongo().first()
        return None if latest is None else preview_text(latest)

    def timeline(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """Messages oldest first, by (sent_at, id) on the session_timeline index."""
        return list(self.filter(__raw__=query).order_by("sent_at", "id").limit(limit).as_pymongo())

    def keys_of(self, session_id: ObjectId) -> list[str]:
        return [doc["key"] for doc in self.for_session(session_id).only("key").as_pymongo()]

    def file_objects_of(self, session_id: ObjectId) -> list[str]:
        """The object-store names of the files kept for this session's messages."""
        found = self.for_session(session_id).filter(file__object_name__gt="").only("file").as_pymongo()
        return [doc["file"]["object_name"] for doc in found if doc.get("file", {}).get("object_name")]

    def edit(self, key: str, text: str, edited_at: dt.datetime, edit_update_id: int) -> dict[str, Any] | None:
        """Apply a contact's edit to message `key`: the new text, the one it replaces kept
        among the latest MAX_EARLIER_VERSIONS; the message as it now is, or None when
        there is no such message or this edit (or a later one) was applied already.

        Read, then written only if no other edit came between (compare and set on
        `edit_update_id`), so each edit is applied once and in order.
        """
        collection = Message._get_collection()
        while True:
            doc = collection.find_one({"key": key})
            if doc is None or doc.get("edit_update_id", 0) >= edit_update_id:
                return None
            earlier = {"text": doc["text"], "at": doc.get("edited_at") or doc["sent_at"]}
            changes = {"text": text, "edited_at": edited_at, "edit_update_id": edit_update_id}
            result = collection.update_one(
                {"_id": doc["_id"], "edit_update_id": doc.get("edit_update_id")},
                {"$set": changes, "$push": {"versions": {"$each": [earlier], "$slice": -MAX_EARLIER_VERSIONS}}},
            )
            if result.matched_count:
                versions = [*(doc.get("versions") or []), earlier][-MAX_EARLIER_VERSIONS:]
                return {**doc, **changes, "versions": versions}


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
    # What the message is (contract.messaging.KINDS); a file kind has `file`
    # ({name, mime_type, size, available, reason, object_name}), a location `location`,
    # a contact card `contact`. Absent means a text.
    kind = StringField()
    file = DictField(default=None)
    location = DictField(default=None)
    contact = DictField(default=None)
    edited_at = DateTimeField()
    edit_update_id = IntField()
    versions = ListField(DictField(), default=None)  # earlier texts, oldest first

    meta = {
        "collection": "messages",
        "queryset_class": MessageQuerySet,
        "indexes": [
            {"fields": ["key"], "unique": True, "name": "message_key"},
            {"fields": ["session_id", "sent_at", "id"], "name": "session_timeline"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def inbound(
        cls,
        session_id: ObjectId,
        key: str,
        text: str,
        sent_at: dt.datetime,
        external_id: str | None = None,
        message_id: ObjectId | None = None,
        **content: Any,
    ) -> Stored:
        """A message from the contact (sent to the bot, or read from an import), as stored.

        Without `message_id` the database chooses the id when it is inserted;
        `content` holds `kind` and `file`, `location` or `contact` for what is not a text.
        """
        return cls._built(
            session_id, key, "in", text, sent_at, external_id=external_id, message_id=message_id, **content
        )

    @classmethod
    def outbound(
        cls,
        session_id: ObjectId,
        key: str,
        text: str,
        sent_at: dt.datetime,
        message_id: ObjectId | None = None,
        **content: Any,
    ) -> Stored:
        """A message from an agent to the contact, as stored."""
        return cls._built(session_id, key, "out", text, sent_at, message_id=message_id, **content)

    @classmethod
    def _built(
        cls,
        session_id: ObjectId,
        key: str,
        direction: str,
        text: str,
        sent_at: dt.datetime,
        *,
        external_id: str | None = None,
        message_id: ObjectId | None = None,
        **content: Any,
    ) -> Stored:
        if content.get("kind") == "text":
            del content["kind"]  # the default: texts are stored as they always were
        return stored_form(
            cls,
            id=message_id,
            session_id=session_id,
            key=key,
            direction=direction,
            text=text,
            sent_at=sent_at,
            external_id=external_id,
            **{name: value for name, value in content.items() if value is not None},
        )

    @classmethod
    def insert_new(cls, messages: Sequence[Stored]) -> set[str]:
        """Insert the messages not stored yet; the keys actually inserted."""
        skipped = insert_unordered(cls, messages)
        return {message["key"] for index, message in enumerate(messages) if index not in skipped}

    @classmethod
    def move(cls, moves: Sequence[tuple[Sequence[str], ObjectId, ObjectId]]) -> int:
        """Move messages (keys, from this session, to that one) in one round trip; how many moved.

        A message no longer in the session it is moved from (another writer moved
        it first) stays where it is.
        """
        return update_many_each(
            cls,
            [
                ({"key": {"$in": some}, "session_id": source}, {"$set": {"session_id": target}})
                for keys, source, target in moves
                for some in in_slices(keys)
            ],
        )

    @classmethod
    def save_new(cls, message: Stored) -> None:
        """Insert one message through MongoEngine (NotUniqueError when its key is stored)."""
        save_new(cls, message)


class FinishedMessageQuerySet(QuerySet):
    def sessions_of(self, keys: Iterable[str]) -> dict[str, ObjectId]:
        """Of these message keys, those finished with their session: key -> that session."""
        found = self.filter(key__in=list(keys)).only("session_id").as_pymongo()
        return {doc["_id"]: doc["session_id"] for doc in found}


class FinishedMessage(Document):
    """The key of a message deleted by a finish, kept while JetStream or Telegram may hand it again.

    A message stored, then finished with its session before the intake acknowledged
    it, comes back on redelivery (or as an update Telegram re-sends within 24 h);
    its unique key is gone with it, so without this record it would be stored
    again in a new session the agent never opened.
    """

    key = StringField(primary_key=True)
    session_id = ObjectIdField(required=True)
    finished_at = DateTimeField(required=True)

    meta = {
        "collection": "finished_messages",
        "queryset_class": FinishedMessageQuerySet,
        "indexes": [
            # Longer than any redelivery (max_deliver at intake's retry cap is hours)
            # and than Telegram keeps an unconfirmed update (24 h).
            {"fields": ["finished_at"], "expireAfterSeconds": FINISHED_MESSAGE_SECONDS, "name": "finished_ttl"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def tombstone(cls, key: str, session_id: ObjectId, at: dt.datetime) -> Stored:
        """The record that message `key` was finished with `session_id` at `at`, as stored."""
        return stored_form(cls, key=key, session_id=session_id, finished_at=at)

    @classmethod
    def remember(cls, keys: Sequence[str], session_id: ObjectId, at: dt.datetime) -> None:
        """Record these keys as finished; those a finish retried after a failure recorded stay."""
        insert_unordered(cls, [cls.tombstone(key, session_id, at) for key in keys])
