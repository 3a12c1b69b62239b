"""MongoEngine documents: sessions (open conversations), their messages, the outbox, imports.

Each document kind is built by one classmethod of its own (`Session.open_for`,
`Message.inbound`, `Message.outbound`, `FinishedMessage.tombstone`,
`OutboxEntry.for_message`, `ImportJob.start`, `ImportBatch.record`,
`EventPromise.keep`), which
fills the derived fields (activity key, name keys) and checks the document
against its fields' own rules (defaults, `required`, `choices`, types, bounds)
before anyone writes it; the queries live in each model's QuerySet.

A builder returns the document as MongoDB stores it (`stored_form`): what
`Document(...).validate()` then `.to_mongo()` gives, without a Document object
per row, which cost the import several times its database time (see
`stored_form`). Single documents are saved through MongoEngine (`save_new`).

Most reads hand back the stored documents as dicts (`as_pymongo()`): callers
and the API read them as such, and the listings skip building Documents they
would only turn back into JSON.

Raw pymongo (`_get_collection()`) is used here only for the bulk writes of the
intake and import hot paths, each with its reason: MongoEngine writes one
document per call, and its `insert` is ordered and hides which documents were
duplicates; and for the one `$setOnInsert` upsert of a promised event, whose
fields MongoEngine's `set_on_insert__` would store without their rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from bson import ObjectId
from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    IntField,
    ListField,
    NotUniqueError,
    ObjectIdField,
    QuerySet,
    StringField,
    ValidationError,
)
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from contract import clock
from contract.messaging import OutboundMessage
from runtime.failpoints import failpoint
from server import names

PREVIEW_LENGTH = 120
DUPLICATE_KEY = 11000
# Fourteen digits of milliseconds since 1970 keep the keys' text order equal to
# time order until the year 5138.
_TIME_DIGITS = 14


def activity_time_prefix(at: dt.datetime) -> str:
    """The leading part of every activity key at `at`: a bound for time ranges."""
    milliseconds = min(max(clock.milliseconds(at), 0), 10**_TIME_DIGITS - 1)
    return f"{milliseconds:0{_TIME_DIGITS}d}"


def activity_key(last_message_at: dt.datetime, session_id: ObjectId) -> str:
    """`Session.activity_key`: last activity, then the id, as one sortable string.

    Listing pages by a range over one field is index-served on mongod and on
    SecantusDB alike, where `(last_message_at, _id)` keysets need an `$or` that
    SecantusDB answers with a collection scan. The id suffix makes keys unique,
    and a session's keys only grow, so `$max` keeps the field current.
    """
    return activity_time_prefix(last_message_at) + str(session_id)


def activity_floor(at: dt.datetime) -> str:
    """The smallest activity key at `at`, as long as every key.

    Range bounds are whole keys: SecantusDB 0.7 misplaces a string bound that
    is a prefix of indexed values on a descending index, and equal-length keys
    never stand in that relation.
    """
    return activity_time_prefix(at) + "0" * 24


def activity_key_time(key: str) -> dt.datetime:
    return clock.from_milliseconds(int(key[:_TIME_DIGITS]))


def preview(text: str) -> str:
    """A session's `last_message_preview` of a message's text."""
    return text if len(text) <= PREVIEW_LENGTH else text[: PREVIEW_LENGTH - 1] + "…"


def duplicates_only(exc: BulkWriteError) -> set[int]:
    """The indexes of the documents an unordered insert_many skipped as already stored.

    Re-raises when anything else failed: only a duplicate key is expected. A
    write concern error alone fails too: the documents are on the primary but
    not on a majority, and an election may roll them back, so whoever would
    acknowledge them (the intake, to JetStream) must not.
    """
    if exc.details.get("writeConcernErrors"):
        raise exc
    errors = exc.details["writeErrors"]
    if any(error["code"] != DUPLICATE_KEY for error in errors):
        raise exc
    return {error["index"] for error in errors}


Stored = dict[str, Any]


class IdempotencyKeyReused(ValueError):
    """A client's Idempotency-Key came back with another request than the one it first stored."""


def stored_form(document: type[Document], **values: Any) -> Stored:
    """`document` with these field values as MongoDB stores it, checked by its fields' own rules.

    The rules are MongoEngine's: each field's default, `required`, and its
    `_validate` (type, `choices`, bounds); a breach raises the ValidationError
    `Document.validate()` would, naming every field at fault. Building a
    Document per row, validating it and calling `to_mongo()` did the same at
    several times the cost (0.5 ms against 0.1 ms a document on a busy
    machine), which the intake's and import's batches cannot afford.
    """
    unknown = values.keys() - document._fields.keys()
    if unknown:
        raise ValidationError(f"{document.__name__} has no field {', '.join(sorted(unknown))}")
    stored: Stored = {}
    errors: dict[str, ValidationError] = {}
    for name, db_field, field, converts in _plan(document):
        value = values.get(name)
        if value is None and field.default is not None:
            value = field.default() if callable(field.default) else field.default
        if value is None:
            if field.required:
                errors[name] = ValidationError("Field is required", field_name=name)
            continue
        if type(value) is ObjectId and isinstance(field, ObjectIdField):
            # What ObjectIdField's rule and conversion come to, without parsing its text again.
            stored[db_field] = value
            continue
        try:
            field._validate(value)
        except ValidationError as error:
            errors[name] = error
            continue
        stored[db_field] = field.to_mongo(value) if converts else value
    if errors:
        raise ValidationError(f"ValidationError ({document.__name__}:{values.get('id')})", errors=errors)
    return stored


# Fields whose Python value is what pymongo stores: their to_mongo() is a copy at most.
_PLAIN = (StringField, IntField, BooleanField, DateTimeField)


_Plan = tuple[tuple[str, str, Any, bool], ...]
_plans: dict[str, _Plan] = {}


def _plan(document: type[Document]) -> _Plan:
    """Each field of `document`, in order: name, stored name, field, and whether its value needs to_mongo()."""
    plan = _plans.get(document.__name__)
    if plan is None:

        def converts(field: Any) -> bool:
            if isinstance(field, ListField):
                return not isinstance(field.field, _PLAIN)
            return not isinstance(field, _PLAIN)

        fields = [(name, document._fields[name]) for name in document._fields_ordered]
        plan = _plans[document.__name__] = tuple((name, f.db_field, f, converts(f)) for name, f in fields)
    return plan


def _save_new(document: type[Document], stored: Stored) -> None:
    """Insert one built document through MongoEngine (NotUniqueError when its unique key is taken)."""
    document._from_son(stored, created=True).save(force_insert=True)


def _insert_unordered(document: type[Document], built: Sequence[Stored]) -> set[int]:
    """Insert built documents in one round trip; the indexes skipped as duplicates.

    Raw insert_many (unordered): one round trip per batch, every document tried,
    and the duplicates told apart, where MongoEngine's `insert` stops at the
    first duplicate and does not say which.
    """
    if not built:
        return set()
    try:
        document._get_collection().insert_many(built, ordered=False)
    except BulkWriteError as exc:
        return duplicates_only(exc)
    return set()


def _update_each(document: type[Document], updates: Sequence[tuple[dict[str, Any] | ObjectId, dict[str, Any]]]) -> int:
    """Apply one update per document (an id, or a filter holding one) in one round trip; how many matched.

    Raw bulk_write: a batch's sessions are updated in one round trip, where
    MongoEngine sends one update per document.
    """
    if not updates:
        return 0
    result = document._get_collection().bulk_write(
        [UpdateOne(which if isinstance(which, dict) else {"_id": which}, update) for which, update in updates],
        ordered=False,
    )
    return result.matched_count


# How long the keys of finished messages are kept: two days.
FINISHED_MESSAGE_SECONDS = 2 * 24 * 3600


class SessionQuerySet(QuerySet):
    def for_contact(self, platform: str, *contact_identifiers: str) -> SessionQuerySet:
        """The open sessions of these contacts of a platform: one `$in` on the unique contact index."""
        if len(contact_identifiers) == 1:
            return self.filter(platform=platform, contact_identifier=contact_identifiers[0])
        return self.filter(platform=platform, contact_identifier__in=list(contact_identifiers))

    def by_ids(self, session_ids: Iterable[ObjectId]) -> SessionQuerySet:
        return self.filter(id__in=list(session_ids))

    def message_counts(self, session_ids: Iterable[ObjectId]) -> dict[ObjectId, int]:
        """The recorded `message_count` of each of these sessions that exists."""
        found = self.by_ids(session_ids).only("message_count").as_pymongo()
        return {doc["_id"]: doc.get("message_count", 0) for doc in found}

    def count_states(self, session_ids: Iterable[ObjectId]) -> dict[ObjectId, tuple[int, int | None]]:
        """The recorded `message_count` and `count_version` of each of these sessions that exists."""
        found = self.by_ids(session_ids).only("message_count", "count_version").as_pymongo()
        return {doc["_id"]: (doc.get("message_count", 0), doc.get("count_version")) for doc in found}

    def recounted(self, session_ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of these sessions were recounted at least once (see Session.recount)."""
        ids = list(session_ids)
        if not ids:
            return set()
        return {doc["_id"] for doc in self.by_ids(ids).filter(count_version__exists=True).only("id").as_pymongo()}

    def present(self, session_ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of these sessions exist (the others were finished)."""
        return {doc["_id"] for doc in self.by_ids(session_ids).only("id").as_pymongo()}

    def newest_first(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """A page of sessions by `activity_key` descending, without the name keys no reader needs.

        `query` is at most one equality and a range over `activity_key`, the shape
        every index serves on SecantusDB too (see server.sessions).
        """
        cursor = self.filter(__raw__=query).exclude("name_keys").order_by("-activity_key").limit(limit)
        return list(cursor.as_pymongo())

    def find_one(self, session_id: ObjectId) -> dict[str, Any] | None:
        return self.filter(id=session_id).exclude("name_keys").as_pymongo().first()


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
    # Bumped by each recount (Session.recount); absent until the first. A writer
    # adds to message_count only if no recount ran since it read the session.
    count_version = IntField(min_value=1)
    last_message_preview = StringField(default="")
    source_id = StringField()  # the `_id` a session had in an imported file
    # "<import id>:<chunk>" of the chunk that opened it: that chunk sent again after
    # a crash reports it as created (server.importing.upsert).
    import_origin = StringField()
    # activity_key(last_message_at, id); every writer of a session sets it, or the
    # session is missing from the listings. See server.sessions for the queries.
    activity_key = StringField(required=True)

    meta = {
        "collection": "sessions",
        "queryset_class": SessionQuerySet,
        "indexes": [
            {"fields": ["platform", "contact_identifier"], "unique": True, "name": "contact"},
            # Ascending, walked backwards for newest-first pages: SecantusDB 0.7 gets
            # some string ranges wrong on descending indexes (see activity_floor).
            {"fields": ["activity_key"], "name": "activity_order"},
            {"fields": ["name_keys", "activity_key"], "name": "name_activity"},
            {"fields": ["platform", "activity_key"], "name": "platform_activity"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def open_for(
        cls,
        platform: str,
        contact_identifier: str,
        name: str,
        at: dt.datetime,
        *,
        chat_id: str | None = None,
        created_at: dt.datetime | None = None,
        message_count: int = 0,
        last_message_preview: str = "",
        source_id: str | None = None,
        import_origin: str | None = None,
        session_id: ObjectId | None = None,
    ) -> Stored:
        """A contact's new open session, last active `at`, as stored.

        The id is chosen here because the activity key holds it; the name's
        search keys and the activity key are derived here, so no writer forgets
        them. `chat_id` is absent for a contact known only from an import.
        """
        session_id = session_id or ObjectId()
        return stored_form(
            cls,
            id=session_id,
            platform=platform,
            contact_identifier=contact_identifier,
            contact_name=name,
            chat_id=chat_id,
            name_keys=names.search_keys(name),
            created_at=created_at or at,
            last_message_at=at,
            activity_key=activity_key(at, session_id),
            message_count=message_count,
            last_message_preview=last_message_preview,
            source_id=source_id,
            import_origin=import_origin,
        )

    @staticmethod
    def naming(name: str) -> dict[str, Any]:
        """The fields that hold a contact's name: as shown, and as searched (for `$set`)."""
        return {"contact_name": name, "name_keys": names.search_keys(name)}

    @staticmethod
    def active_at(session_id: ObjectId, at: dt.datetime) -> dict[str, Any]:
        """The fields that move with a session's activity (for `$max`: they only grow)."""
        return {"last_message_at": at, "activity_key": activity_key(at, session_id)}

    @classmethod
    def insert_new(cls, sessions: Sequence[Stored]) -> set[int]:
        """Insert built sessions; the indexes of those whose contact had one already."""
        return _insert_unordered(cls, sessions)

    @classmethod
    def update_each(cls, updates: Sequence[tuple[ObjectId, dict[str, Any]]]) -> int:
        """One update document per session id, in one round trip; how many sessions matched."""
        return _update_each(cls, updates)

    # message_count is kept two ways: a writer stores messages, then adds them
    # (`$inc`, add_counts); a recount sets it to what is stored, for messages
    # whose writer died in between (recount). Mixed naively, either undoes the
    # other: a recount that read the count before a writer's `$inc` and sets it
    # after drops that increment, and a recount that counted a writer's stored
    # messages before its `$inc` lands counts them twice. So a recount replaces
    # the count only if it is still the one it read, and bumps count_version;
    # a writer adds only if count_version is still the one it read before
    # storing, and otherwise recounts. Both are single-document atomic updates.

    @classmethod
    def add_counts(cls, updates: Sequence[tuple[ObjectId, int | None, dict[str, Any]]]) -> set[ObjectId]:
        """Apply (session id, count_version read before storing, update with an `$inc`); the sessions gone.

        A session recounted since its version was read gets the update without
        its `$inc`, then a recount: that recount may have counted the messages.
        """
        if not updates:
            return set()
        matched = _update_each(
            cls, [({"_id": sid, "count_version": version}, update) for sid, version, update in updates]
        )
        if matched == len(updates):
            return set()
        states = cls.objects.count_states(sid for sid, _, _ in updates)
        # Those whose version moved were recounted (before this update, or just
        # after it, when redoing the rest of the update and recounting is harmless).
        recounted = [(sid, update) for sid, version, update in updates if sid in states and states[sid][1] != version]
        _update_each(cls, [(sid, _without_inc(update)) for sid, update in recounted])
        cls.recount(sid for sid, _ in recounted)
        return {sid for sid, _, _ in updates if sid not in states}

    @classmethod
    def recount(cls, session_ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Set each session's message_count to what it holds; the sessions whose count changed.

        Reads the count and version, then counts, then replaces the count only if
        both are unchanged: a writer that added meanwhile makes it read again.
        """
        pending = set(session_ids)
        changed: set[ObjectId] = set()
        for _ in range(RECOUNT_TRIES):
            if not pending:
                break
            states = cls.objects.count_states(pending)
            held = Message.objects.counts_by_session(states)
            failpoint("session.recount.after_counting")
            stale = {sid: state for sid, state in states.items() if state[0] != held.get(sid, 0)}
            if not stale:
                break
            updates = [
                (
                    {"_id": sid, "message_count": count, "count_version": version},
                    {"$set": {"message_count": held.get(sid, 0)}, "$inc": {"count_version": 1}},
                )
                for sid, (count, version) in stale.items()
            ]
            matched = _update_each(cls, updates)
            changed |= stale.keys()
            if matched == len(updates):
                break
            pending = set(stale)  # some were written meanwhile: read them again
        else:
            raise RecountContended(f"{len(pending)} sessions kept changing while they were recounted")
        return changed


# A recount whose sessions keep changing under it reads them again this often,
# then gives up: intake leaves its batch to JetStream's redelivery, and an API
# request that was recounting is answered 503 (server/problems.py), to be retried.
RECOUNT_TRIES = 10


class Contended(RuntimeError):
    """Other writers kept changing what this write depends on; the same request a moment later will likely pass."""


class RecountContended(Contended):
    """Sessions kept being written to while they were recounted."""


def _without_inc(update: dict[str, Any]) -> dict[str, Any]:
    return {operator: fields for operator, fields in update.items() if operator != "$inc"}


class MessageQuerySet(QuerySet):
    def for_session(self, session_id: ObjectId) -> MessageQuerySet:
        return self.filter(session_id=session_id)

    def stored_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of these message keys are stored: one `$in` on the unique key index."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return set()
        return {doc["key"] for doc in self.filter(key__in=wanted).only("key").as_pymongo()}

    def holders(self, keys: Iterable[str]) -> dict[str, ObjectId]:
        """The session each of these stored message keys is in."""
        found = self.filter(key__in=list(keys)).only("key", "session_id").as_pymongo()
        return {doc["key"]: doc["session_id"] for doc in found}

    def counts_by_session(self, session_ids: Iterable[ObjectId]) -> dict[ObjectId, int]:
        """How many messages each of these sessions holds (absent: none); one aggregation."""
        grouped = self.filter(session_id__in=list(session_ids)).aggregate(
            [{"$group": {"_id": "$session_id", "count": {"$sum": 1}}}]
        )
        return {doc["_id"]: doc["count"] for doc in grouped}

    def latest_text(self, session_id: ObjectId) -> str | None:
        latest = self.for_session(session_id).order_by("-sent_at", "-id").only("text").as_pymongo().first()
        return None if latest is None else latest["text"]

    def timeline(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """Messages oldest first, by (sent_at, id) on the session_timeline index."""
        return list(self.filter(__raw__=query).order_by("sent_at", "id").limit(limit).as_pymongo())

    def keys_of(self, session_id: ObjectId) -> list[str]:
        return [doc["key"] for doc in self.for_session(session_id).only("key").as_pymongo()]


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
    ) -> Stored:
        """A message from the contact (sent to the bot, or read from an import), as stored.

        Without `message_id` the database chooses the id when it is inserted.
        """
        return cls._built(session_id, key, "in", text, sent_at, external_id=external_id, message_id=message_id)

    @classmethod
    def outbound(
        cls, session_id: ObjectId, key: str, text: str, sent_at: dt.datetime, message_id: ObjectId | None = None
    ) -> Stored:
        """A message from an agent to the contact, as stored."""
        return cls._built(session_id, key, "out", text, sent_at, message_id=message_id)

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
    ) -> Stored:
        return stored_form(
            cls,
            id=message_id,
            session_id=session_id,
            key=key,
            direction=direction,
            text=text,
            sent_at=sent_at,
            external_id=external_id,
        )

    @classmethod
    def insert_new(cls, messages: Sequence[Stored]) -> set[str]:
        """Insert the messages not stored yet; the keys actually inserted."""
        skipped = _insert_unordered(cls, messages)
        return {message["key"] for index, message in enumerate(messages) if index not in skipped}

    @classmethod
    def save_new(cls, message: Stored) -> None:
        """Insert one message through MongoEngine (NotUniqueError when its key is stored)."""
        _save_new(cls, message)


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
        _insert_unordered(cls, [cls.tombstone(key, session_id, at) for key in keys])


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
            created_at=at,
        )

    @classmethod
    def keep(cls, message: OutboundMessage, at: dt.datetime) -> None:
        """Keep `message` in the outbox; one promised before (same key) stands as it was."""
        try:
            _save_new(cls, cls.for_message(message, at))
        except NotUniqueError:
            pass  # a retried finish or import ending promised it already

    def promised(self) -> OutboundMessage:
        return OutboundMessage(
            key=self.key, chat_id=self.chat_id, text=self.text, kind=self.kind, meta=dict(self.details or {})
        )


class ImportJobQuerySet(QuerySet):
    def running(self, job_id: ObjectId) -> ImportJobQuerySet:
        return self.filter(id=job_id, status="running")

    def idle_since(self, cutoff: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """Running jobs with no progress since `cutoff`; jobs from before
        `last_activity_at` existed are judged by their start."""
        query = {
            "status": "running",
            "$or": [
                {"last_activity_at": {"$lt": cutoff}},
                {"last_activity_at": None, "created_at": {"$lt": cutoff}},
            ],
        }
        return list(self.filter(__raw__=query).limit(limit).as_pymongo())

    def ended_before(self, cutoff: dt.datetime, limit: int) -> list[ObjectId]:
        """Jobs that ended before `cutoff` (their records are past retention), oldest first."""
        query = {"finished_at": {"$lt": cutoff}, "status": {"$ne": "running"}}
        return [doc["_id"] for doc in self.filter(__raw__=query).only("id").limit(limit).as_pymongo()]

    def announcement_pending(self, limit: int) -> list[dict[str, Any]]:
        return list(self.filter(announce_pending=True).limit(limit).as_pymongo())

    def find_one(self, job_id: ObjectId) -> dict[str, Any] | None:
        return self.filter(id=job_id).as_pymongo().first()

    def started_with(self, idempotency_key: str) -> dict[str, Any] | None:
        return self.filter(idempotency_key=idempotency_key).as_pymongo().first()


class ImportJob(Document):
    """One import of session records, from an upload or from the CLI's chunks.

    Kept in MongoDB so that any replica answers `GET /v1/imports/{id}`. Its
    counts and errors are running totals: each ImportBatch is added once
    (`tallied` counts them), see server.importing.jobs.
    """

    channel = StringField(required=True)  # "@name" or "-100..." id: where the summary goes
    source = StringField(default="")  # the file name the client gave
    file_format = StringField()  # json, ndjson or csv; None for the CLI's chunks
    mode = StringField(required=True, choices=("upload", "chunks"))
    status = StringField(required=True, choices=("running", "succeeded", "failed"))
    created_at = DateTimeField(required=True)
    finished_at = DateTimeField()
    # Set at each batch or chunk: the reaper fails a running job idle for too long.
    last_activity_at = DateTimeField()
    announce_pending = BooleanField()  # ended (by a client, a shutdown or the reaper), announcement not yet promised
    bytes_received = IntField(default=0)
    next_chunk = IntField(default=0)  # chunks mode: every chunk below it is stored
    counts = DictField()
    errors = ListField(DictField())
    # Batches added to counts and errors: those with seq below it. Absent on jobs
    # started before running totals, which count none.
    tallied = IntField(default=0, min_value=0)
    # Why a failed import stopped: {"reason", "message", "offset", "line", "record"}.
    failure = DictField()
    # The client's Idempotency-Key when it started the import: a retry finds this job.
    idempotency_key = StringField()

    meta = {
        "collection": "import_jobs",
        "queryset_class": ImportJobQuerySet,
        "indexes": [
            {"fields": ["status", "last_activity_at"], "name": "status_activity"},
            {"fields": ["finished_at"], "sparse": True, "name": "finished_order"},
            {"fields": ["announce_pending"], "sparse": True, "name": "announce_pending"},
            {"fields": ["idempotency_key"], "unique": True, "sparse": True, "name": "idempotency_key"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def start(
        cls,
        channel: str,
        source: str,
        mode: str,
        file_format: str | None,
        counts: dict[str, int],
        at: dt.datetime,
        started_at: dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Stored:
        """A running import, started at `started_at` (default `at`) and last active `at`, validated.

        Times are kept at MongoDB's precision, so a report reads the same before
        and after the job is stored.
        """
        return stored_form(
            cls,
            id=ObjectId(),
            channel=channel,
            source=source,
            mode=mode,
            file_format=file_format,
            status="running",
            created_at=clock.stored(started_at or at),
            last_activity_at=clock.stored(at),
            bytes_received=0,
            next_chunk=0,
            counts=counts,
            errors=[],
            tallied=0,
            idempotency_key=idempotency_key,
        )

    @classmethod
    def save_new(cls, job: Stored) -> None:
        """Insert the job (NotUniqueError when its idempotency key started another)."""
        _save_new(cls, job)


class ImportBatchQuerySet(QuerySet):
    def find_one(self, job_id: ObjectId, seq: int) -> dict[str, Any] | None:
        return self.filter(job_id=job_id, seq=seq).as_pymongo().first()

    def from_seq(self, job_id: ObjectId, seq: int) -> Iterable[dict[str, Any]]:
        """The seq, counts and errors of the job's batches from `seq` on, in order.

        One range of the `job_batch` index, which readers keep short (from the
        batches a job counts, or its next chunk). Not hinted: under the hint
        SecantusDB reads every entry of the job (seconds for tens of thousands
        of batches, where the range alone takes milliseconds); mongod plans the
        same index range either way.
        """
        return self.filter(job_id=job_id, seq__gte=seq).order_by("seq").only("seq", "counts", "errors").as_pymongo()


class ImportBatch(Document):
    """The commit record of one batch of an upload, or of one chunk from the CLI.

    Written after the batch's sessions and messages, and unique per job and
    sequence number: a chunk sent again finds its record and is not applied
    twice, and each is added once to the job's running totals.
    """

    job_id = ObjectIdField(required=True)
    seq = IntField(required=True, min_value=0)
    counts = DictField()
    errors = ListField(DictField())  # at most the report's limit per batch
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "import_batches",
        "queryset_class": ImportBatchQuerySet,
        "indexes": [{"fields": ["job_id", "seq"], "unique": True, "name": "job_batch"}],
        "auto_create_index": False,
    }

    @classmethod
    def record(
        cls, job_id: ObjectId, seq: int, counts: dict[str, int], errors: list[dict[str, Any]], at: dt.datetime
    ) -> Stored:
        """The commit record of batch or chunk `seq` of a job, as stored."""
        return stored_form(cls, job_id=job_id, seq=seq, counts=counts, errors=errors, created_at=at)

    @classmethod
    def save_new(cls, batch: Stored) -> bool:
        """Insert the record; False when this job's batch `seq` was recorded before."""
        try:
            _save_new(cls, batch)
        except NotUniqueError:
            return False
        return True


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


DOCUMENTS = (Session, Message, FinishedMessage, OutboxEntry, ImportJob, ImportBatch, EventPromise)


def ensure_indexes() -> None:
    for document in DOCUMENTS:
        document.ensure_indexes()
