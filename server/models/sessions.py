"""Sessions: a contact's open conversation, its activity key, and how its message count is kept.

The builder (`Session.open_for`) fills the derived fields (activity key, name
keys) and checks the document against its fields' own rules before anyone
writes it (server.models.stored); the queries live in `SessionQuerySet`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from bson import ObjectId
from mongoengine import DateTimeField, Document, IntField, ListField, QuerySet, StringField
from pymongo import DESCENDING

from contract import clock
from runtime.failpoints import failpoint
from server import names
from server.models.messages import Message
from server.models.stored import Contended, Stored, in_slices, insert_unordered, stored_form, update_each

Contact = tuple[str, str]  # (platform, contact identifier)

PREVIEW_LENGTH = 120
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


class SessionQuerySet(QuerySet):
    def for_contact(self, platform: str, *contact_identifiers: str) -> SessionQuerySet:
        """The open sessions of these contacts of a platform: one `$in` on the unique contact index."""
        if len(contact_identifiers) == 1:
            return self.filter(platform=platform, contact_identifier=contact_identifiers[0])
        return self.filter(platform=platform, contact_identifier__in=list(contact_identifiers))

    def by_contact(self, contacts: Iterable[Contact], fields: Sequence[str]) -> dict[Contact, dict[str, Any]]:
        """The open sessions of these contacts (platform, identifier), with these fields.

        `$in` reads per platform on the unique contact index: index-served everywhere.
        """
        by_platform: dict[str, list[str]] = {}
        for platform, identifier in contacts:
            by_platform.setdefault(platform, []).append(identifier)
        found: dict[Contact, dict[str, Any]] = {}
        for platform, identifiers in by_platform.items():
            for some in in_slices(identifiers):
                for doc in self.for_contact(platform, *some).only("contact_identifier", *fields).as_pymongo():
                    found[(platform, doc["contact_identifier"])] = doc
        return found

    def _by_ids(self, session_ids: Iterable[ObjectId], *fields: str) -> list[dict]:
        found: list[dict] = []
        for some in in_slices(session_ids):
            found += self.filter(id__in=some).only(*fields).as_pymongo()
        return found

    def count_states(self, session_ids: Iterable[ObjectId]) -> dict[ObjectId, tuple[int, int | None]]:
        """The recorded `message_count` and `count_version` of each of these sessions that exists."""
        found = self._by_ids(session_ids, "message_count", "count_version")
        return {doc["_id"]: (doc.get("message_count", 0), doc.get("count_version")) for doc in found}

    def present(self, session_ids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of these sessions exist (the others were finished)."""
        return {doc["_id"] for doc in self._by_ids(session_ids, "id")}

    def newest_first(self, query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        """A page of sessions by `activity_key` descending, without the name keys no reader needs.

        `query` is at most one equality and a range over `activity_key`, the shape
        every index serves on SecantusDB too (see server.sessions).
        """
        # Straight to pymongo: this is every listing's read, and a MongoEngine
        # queryset adds its building and cloning to each for the same documents.
        # `query` is the whole filter: the queryset's own is not applied.
        cursor = self._collection.find(query, {"name_keys": 0}).sort("activity_key", DESCENDING).limit(limit)
        return list(cursor)

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
    # When Telegram answered that the contact blocked the bot; absent otherwise.
    # Agent replies are refused meanwhile; the contact writing again clears it.
    contact_blocked_at = DateTimeField()

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
        return insert_unordered(cls, sessions)

    @classmethod
    def mark_contact_blocked(cls, session_id: ObjectId, chat_id: str, at: dt.datetime) -> bool:
        """Mark the contact of this session blocked as of `at`; False when there is no such session
        reached at `chat_id`, or its contact wrote since (a late report must not undo that)."""
        return bool(
            cls.objects(id=session_id, chat_id=chat_id, last_message_at__lte=at).update_one(max__contact_blocked_at=at)
        )

    @classmethod
    def update_each(cls, updates: Sequence[tuple[ObjectId, dict[str, Any]]]) -> int:
        """One update document per session id, in one round trip; how many sessions matched."""
        return update_each(cls, updates)

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
        matched = update_each(
            cls, [({"_id": sid, "count_version": version}, update) for sid, version, update in updates]
        )
        if matched == len(updates):
            return set()
        states = cls.objects.count_states(sid for sid, _, _ in updates)
        # Those whose version moved were recounted (before this update, or just
        # after it, when redoing the rest of the update and recounting is harmless).
        recounted = [(sid, update) for sid, version, update in updates if sid in states and states[sid][1] != version]
        update_each(cls, [(sid, _without_inc(update)) for sid, update in recounted])
        cls.recount(sid for sid, _ in recounted)
        return {sid for sid, _, _ in updates if sid not in states}

    @classmethod
    def recount(
        cls, session_ids: Iterable[ObjectId], read: dict[ObjectId, tuple[int, int | None]] | None = None
    ) -> set[ObjectId]:
        """Set each session's message_count to what it holds; the sessions whose count changed.

        Reads the count and version, then counts, then replaces the count only if
        both are unchanged: a writer that added meanwhile makes it read again.
        `read` holds (count, version) of sessions the caller read already, which
        saves reading them again; an outdated one costs another round.
        """
        pending = set(session_ids)
        changed: set[ObjectId] = set()
        for _ in range(RECOUNT_TRIES):
            if not pending:
                break
            known = {sid: read[sid] for sid in pending if sid in read} if read else {}
            read = None
            states = {**known, **cls.objects.count_states(pending - known.keys())}
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
            matched = update_each(cls, updates)
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


class RecountContended(Contended):
    """Sessions kept being written to while they were recounted."""


def _without_inc(update: dict[str, Any]) -> dict[str, Any]:
    return {operator: fields for operator, fields in update.items() if operator != "$inc"}
