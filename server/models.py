"""MongoEngine documents: sessions (open conversations), their messages, the outbox."""

from __future__ import annotations

import datetime as dt

from bson import ObjectId
from mongoengine import (
    BooleanField,
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
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)
# Fourteen digits of milliseconds since 1970 keep the keys' text order equal to
# time order until the year 5138.
_TIME_DIGITS = 14


def activity_time_prefix(at: dt.datetime) -> str:
    """The leading part of every activity key at `at`: a bound for time ranges."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    milliseconds = min(max((at - _EPOCH) // _MILLISECOND, 0), 10**_TIME_DIGITS - 1)
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
    return _EPOCH + int(key[:_TIME_DIGITS]) * _MILLISECOND


# How long the keys of finished messages are kept: two days.
FINISHED_MESSAGE_SECONDS = 2 * 24 * 3600


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
        "indexes": [
            # Longer than any redelivery (max_deliver at intake's retry cap is hours)
            # and than Telegram keeps an unconfirmed update (24 h).
            {"fields": ["finished_at"], "expireAfterSeconds": FINISHED_MESSAGE_SECONDS, "name": "finished_ttl"},
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


class ImportJob(Document):
    """One import of session records, from an upload or from the CLI's chunks.

    Kept in MongoDB so that any replica answers `GET /v1/imports/{id}`. While
    the import runs, its counts and errors are the sum of its ImportBatch
    documents; when it ends they are copied here.
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
    announce_pending = BooleanField()  # failed by the reaper, announcement not yet promised
    bytes_received = IntField(default=0)
    next_chunk = IntField(default=0)  # chunks mode: every chunk below it is stored
    counts = DictField()
    errors = ListField(DictField())
    # Why a failed import stopped: {"reason", "message", "offset", "line", "record"}.
    failure = DictField()

    meta = {
        "collection": "import_jobs",
        "indexes": [
            {"fields": ["status", "last_activity_at"], "name": "status_activity"},
            {"fields": ["announce_pending"], "sparse": True, "name": "announce_pending"},
        ],
        "auto_create_index": False,
    }


class ImportBatch(Document):
    """The commit record of one batch of an upload, or of one chunk from the CLI.

    Written after the batch's sessions and messages, and unique per job and
    sequence number: a chunk sent again finds its record and is not applied
    twice, and the job's counts are the sum of these.
    """

    job_id = ObjectIdField(required=True)
    seq = IntField(required=True, min_value=0)
    counts = DictField()
    errors = ListField(DictField())  # at most the report's limit per batch
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "import_batches",
        "indexes": [{"fields": ["job_id", "seq"], "unique": True, "name": "job_batch"}],
        "auto_create_index": False,
    }


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
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "event_outbox",
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
