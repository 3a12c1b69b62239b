"""Upserting validated session records in batches: the one engine behind uploads and the CLI.

A record merges into the open session of its contact (platform + contact
identifier), whether an earlier import or the bot opened it, and its messages
are stored once each under their natural key (`records.message_key`), so
importing a file again changes nothing. A session's counter, preview and last
activity move only with messages actually inserted.

Every batch costs the same few round trips whatever its size: one read of the
contacts' sessions and one of the existing message keys (both `$in` on unique
indexes, index-served on mongod and SecantusDB alike), then unordered bulk
inserts and one bulk update. Nothing is upserted with a filter beyond `_id`:
SecantusDB answers extra predicates in update filters with a collection scan.

These functions block on MongoDB; callers run them through `Database.run`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from contract import clock
from contract.messaging import FILE_KINDS, TEXT_KIND
from runtime.failpoints import failpoint
from server.conversations import (
    MAX_FINISH_RACES,
    SessionFinishedMeanwhile,
    sessions_by_contact,
)
from server.importing.records import ImportedMessage, ImportedSession, message_key
from server.models.messages import FinishedMessage, Message, preview_text
from server.models.sessions import Session, preview
from server.models.stored import Stored

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
_SESSION_FIELDS = ("contact_name", "chat_id", "source_id", "last_message_at", "import_origin")

Contact = tuple[str, str]


@dataclass
class _ContactRecords:
    """One contact's records in a batch, in file order, with their messages merged."""

    contact: Contact
    indexes: list[int] = field(default_factory=list)  # positions of its records in the batch
    keys: list[list[str]] = field(default_factory=list)  # each record's message keys
    messages: dict[str, ImportedMessage] = field(default_factory=dict)  # by key, first wins
    names: list[str] = field(default_factory=list)
    source_ids: list[str | None] = field(default_factory=list)
    session_id: ObjectId | None = None  # the session its messages were stored under

    def add(self, index: int, session: ImportedSession) -> None:
        keys = []
        for message in session.messages:
            key = message_key(session.platform, session.contact_identifier, message)
            self.messages.setdefault(key, message)
            keys.append(key)
        self.indexes.append(index)
        self.keys.append(keys)
        self.names.append(session.name)
        self.source_ids.append(session.source_id)

    @property
    def source_id(self) -> str | None:
        return next((source_id for source_id in self.source_ids if source_id), None)


@dataclass
class _Change:
    """What a batch does to one existing session."""

    session_id: ObjectId
    last_message_at: dt.datetime
    new_keys: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)


def upsert_sessions(batch: Sequence[ImportedSession], origin: str | None = None, races: int = 0) -> list[str]:
    """Store a batch of validated records; return each one's outcome, in order.

    A record is `created` when it opened its contact's session, `updated` when
    it added messages or changed the session's name or source id, `unchanged`
    otherwise (a later record of the same contact in the batch is judged
    against what the earlier ones already brought).

    `origin` names the batch (an import's chunk) in the sessions it opens, so
    the same batch sent again after a crash still reports the sessions its
    first try opened as `created`, not as `updated` or `unchanged`.

    A session finished while the batch stores into it would leave its messages
    orphans: they are taken back and stored in the contact's next session (see
    `_store_again_after_finish`); `races` counts how often that happened.
    """
    now = clock.now()
    groups = _grouped(batch)
    outcomes = [UNCHANGED] * len(batch)
    existing = sessions_by_contact(groups, _SESSION_FIELDS)
    new = [group for contact, group in groups.items() if contact not in existing]
    taken = _create_sessions(new, now, outcomes, origin)
    if taken:  # another writer opened these contacts' sessions meanwhile
        existing.update(sessions_by_contact([group.contact for group in taken], _SESSION_FIELDS))
    _merge_into_existing([groups[contact] for contact in existing], existing, outcomes, origin)
    _store_again_after_finish(batch, groups, outcomes, origin, races)
    return outcomes


def _grouped(batch: Sequence[ImportedSession]) -> dict[Contact, _ContactRecords]:
    groups: dict[Contact, _ContactRecords] = {}
    for index, session in enumerate(batch):
        contact = (session.platform, session.contact_identifier)
        groups.setdefault(contact, _ContactRecords(contact)).add(index, session)
    return groups


def _new_documents(
    groups: list[_ContactRecords], now: dt.datetime, origin: str | None = None
) -> tuple[list[Stored], list[Stored]]:
    """A session per contact, written with its final counter, preview and activity.

    Worked out from the batch, so a new session costs one write, not an insert
    and an update.
    """
    sessions: list[Stored] = []
    messages: list[Stored] = []
    for group in groups:
        dates = [message.date for message in group.messages.values()]
        # Without messages, the session's own time: its file `_id` is an ObjectId,
        # which holds when the session was created; failing that, the import's.
        undated = ObjectId(group.source_id).generation_time if group.source_id else now
        # No chat_id: an imported contact has no chat until they write to the bot.
        session = Session.open_for(
            group.contact[0],
            group.contact[1],
            group.names[-1],  # the latest name in the file wins
            max(dates, default=undated),
            created_at=min(dates, default=undated),
            message_count=len(group.messages),
            last_message_preview=_latest_text(group.messages.values()),
            source_id=group.source_id,
            import_origin=origin,
        )
        sessions.append(session)
        messages += _message_documents(session["_id"], group.messages.items())
    return sessions, messages


def _create_sessions(
    groups: list[_ContactRecords], now: dt.datetime, outcomes: list[str], origin: str | None = None
) -> list[_ContactRecords]:
    """Open a session per contact with its messages; return the groups that lost a race."""
    if not groups:
        return []
    sessions, messages = _new_documents(groups, now, origin)
    lost = Session.insert_new(sessions)
    failpoint("import.after_sessions_inserted")
    created = {doc["_id"] for index, doc in enumerate(sessions) if index not in lost}
    inserted = Message.insert_new([doc for doc in messages if doc["session_id"] in created])
    failpoint("import.after_messages_inserted")
    _uncount_duplicates(messages, created, inserted)
    for index, group in enumerate(groups):
        if index not in lost:
            group.session_id = sessions[index]["_id"]
            _judge_records(group, outcomes, opened=True)
    return [group for index, group in enumerate(groups) if index in lost]


def _uncount_duplicates(messages: list[Stored], created: set[ObjectId], inserted: set[str]) -> None:
    """Take back from a new session's counter the messages another writer stored first.

    Only a concurrent import of the same contact can do that, and it counts
    them in the session itself; the net count stays exact.
    """
    skipped: dict[ObjectId, int] = {}
    for doc in messages:
        if doc["session_id"] in created and doc["key"] not in inserted:
            skipped[doc["session_id"]] = skipped.get(doc["session_id"], 0) + 1
    # New sessions have no count_version until their first recount.
    Session.add_counts(
        [(session_id, None, {"$inc": {"message_count": -count}}) for session_id, count in skipped.items()]
    )
    # A new session is written with its final count before its messages are
    # stored: a recount in between (a concurrent import merging into it) counted
    # fewer. Those have a count_version now, and count again.
    Session.recount(Session.objects.recounted(created - skipped.keys()))


def _merge_into_existing(
    groups: list[_ContactRecords], existing: dict[Contact, dict], outcomes: list[str], origin: str | None = None
) -> None:
    if not groups:
        return
    stored = Message.objects.stored_keys(key for group in groups for key in group.messages)
    changes: list[_Change] = []
    documents: list[Stored] = []
    for group in groups:
        session = existing[group.contact]
        group.session_id = session["_id"]
        change = _Change(session["_id"], session["last_message_at"])
        change.new_keys = [key for key in group.messages if key not in stored]
        # A name the bot saw comes from the contact's live profile, newer than any file.
        imported = not session.get("chat_id")
        if imported and group.names[-1] != session.get("contact_name"):
            change.fields.update(Session.naming(group.names[-1]))
        if group.source_id and not session.get("source_id"):
            change.fields["source_id"] = group.source_id
        if origin is not None and session.get("import_origin") == origin:
            _judge_records(group, outcomes, opened=True)  # this batch's first try opened it
        else:
            _judge_records(
                group,
                outcomes,
                stored=stored,
                name=session.get("contact_name") if imported else None,
                adds_source="source_id" in change.fields,
            )
        documents += _message_documents(change.session_id, ((key, group.messages[key]) for key in change.new_keys))
        changes.append(change)
    inserted = Message.insert_new(documents)
    by_key = {doc["key"]: doc for doc in documents}
    updates = []
    recount: list[ObjectId] = []
    for change in changes:
        added = [by_key[key] for key in change.new_keys if key in inserted]
        update: dict[str, Any] = {"$set": change.fields} if change.fields else {}
        if added:
            newest = max(added, key=lambda doc: doc["sent_at"])
            recount.append(change.session_id)
            update["$max"] = Session.active_at(change.session_id, newest["sent_at"])
            if newest["sent_at"] >= change.last_message_at:
                update.setdefault("$set", {})["last_message_preview"] = preview(newest["text"])
        if update:
            updates.append((change.session_id, update))
    Session.update_each(updates)
    if recount:
        # Counted from what is stored rather than incremented: a batch retried after
        # a crash finds sessions that already count messages it had not stored yet.
        Session.recount(recount)


def _store_again_after_finish(
    batch: Sequence[ImportedSession],
    groups: dict[Contact, _ContactRecords],
    outcomes: list[str],
    origin: str | None,
    races: int,
) -> None:
    """Store again, in the contact's next session, what a finish racing the batch left astray.

    The batch resolves each contact's session, then inserts its messages under
    it; a `DELETE /v1/sessions/{id}` in between deletes the session and leaves
    the messages inserted after it orphans, whose unique keys would block ever
    storing them again, or sweeps them with the session without recording
    them. Checked once the batch is written, from what is stored: each key must
    be held by a live session or have been finished (recorded in
    `finished_messages`: the finish saw it, as it arrived before the finish).
    The rest are taken back (deleting by key and gone session takes only the
    orphans) and their contacts' records go through the engine again, which
    finds or opens the contact's next session; their outcomes replace the first
    ones, so the report says where the records are now. Either way the outcome
    is one a finish before or after the batch would have given: what the
    finish saw went with it, the rest is stored as if it came after.

    Checking costs one `_id` read of the sessions written under per batch; the
    batch's keys are read back only when one of them is gone.
    """
    if _all_sessions_live(groups.values()):
        return
    owner = {key: contact for contact, group in groups.items() for key in group.messages}
    holders = Message.objects.holders(owner)
    live = Session.objects.present(set(holders.values()))
    orphans = {key: session_id for key, session_id in holders.items() if session_id not in live}
    missing = [key for key in owner if key not in holders]
    finished = FinishedMessage.objects.sessions_of(missing) if missing else {}
    astray = set(orphans) | {key for key in missing if key not in finished}
    if not astray:
        return
    if orphans:
        Message.objects(key__in=list(orphans), session_id__in=list(set(orphans.values()))).delete()
    if races >= MAX_FINISH_RACES:
        raise SessionFinishedMeanwhile(f"{len(astray)} imported messages kept losing their session to a finish")
    indexes = sorted(index for contact in {owner[key] for key in astray} for index in groups[contact].indexes)
    again = [_without(batch[index], finished.keys()) for index in indexes]
    for index, outcome in zip(indexes, upsert_sessions(again, origin, races + 1)):
        outcomes[index] = outcome


def _all_sessions_live(groups: Iterable[_ContactRecords]) -> bool:
    """Whether every session the batch stored messages under is still there: one `_id` read.

    The common case; only when one is gone are the batch's keys read back.
    """
    written = set()
    for group in groups:
        if group.messages:
            if group.session_id is None:
                return False  # lost its contact to another writer whose session then went
            written.add(group.session_id)
    if not written:
        return True
    return len(Session.objects.present(written)) == len(written)


def _without(session: ImportedSession, finished: Set[str]) -> ImportedSession:
    """The record less the messages a finish took: they are not stored again."""
    if not finished:
        return session
    kept = tuple(
        message
        for message in session.messages
        if message_key(session.platform, session.contact_identifier, message) not in finished
    )
    return dataclasses.replace(session, messages=kept)


def _judge_records(
    group: _ContactRecords,
    outcomes: list[str],
    *,
    opened: bool = False,
    stored: Set[str] = frozenset(),
    name: str | None = None,
    adds_source: bool = False,
) -> None:
    """Set each record's outcome against what the session held before that record.

    `opened`: this batch created the session with the group's first record.
    `name`: the stored name when the import may rename the session, else None.
    `adds_source`: the session had no source id and the group brings one.
    """
    known = set(stored)
    first_source = next((i for i, source_id in enumerate(group.source_ids) if source_id), None)
    for position, (index, keys, record_name) in enumerate(zip(group.indexes, group.keys, group.names)):
        adds = any(key not in known for key in keys)
        renames = name is not None and record_name != name
        if opened and position == 0:
            outcomes[index] = CREATED
        elif adds or renames or (adds_source and position == first_source):
            outcomes[index] = UPDATED
        known.update(keys)
        if name is not None or (opened and position == 0):
            name = record_name


def _message_documents(session_id: ObjectId, messages: Iterable[tuple[str, ImportedMessage]]) -> list[Stored]:
    return [
        Message.inbound(
            session_id, key, message.content, message.date, external_id=message.id, **imported_content(message)
        )
        for key, message in messages
    ]


# An import carries what a message was, never a file's bytes.
IMPORTED_FILE = {"name": "", "mime_type": "", "size": 0, "available": False, "reason": "imported without its bytes"}


def imported_content(message: ImportedMessage) -> dict[str, Any]:
    """What an imported message holds besides its text: its kind, and for a file kind a file not kept."""
    if message.kind == TEXT_KIND:
        return {}
    return {"kind": message.kind, "file": dict(IMPORTED_FILE) if message.kind in FILE_KINDS else None}


def _latest_text(messages: Iterable[ImportedMessage]) -> str:
    latest = None
    for message in messages:
        if latest is None or message.date >= latest.date:
            latest = message
    if latest is None:
        return ""
    return preview(preview_text({"text": latest.content, **imported_content(latest)}))
