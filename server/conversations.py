"""Storing contacts' messages in their open session, idempotently and in batches.

These functions block on MongoDB; callers run them through `Database.run`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from contract import clock
from contract.messaging import InboundMessage
from runtime.failpoints import failpoint
from server.models.messages import FinishedMessage, Message, preview_text
from server.models.sessions import Session, preview
from server.models.stored import Contended, Stored


def inbound_key(message: InboundMessage) -> str:
    return f"{message.platform}:{message.contact_identifier}:tg{message.message_id}"


@dataclass(frozen=True)
class StoredInbound:
    message: InboundMessage
    key: str
    session_id: ObjectId
    inserted: bool = False  # stored by this call, not found stored already


def _open_sessions(batch: Sequence[InboundMessage], now: dt.datetime) -> dict[tuple[str, str], dict]:
    """Find or create the open session of every contact in the batch: its id and count_version.

    Reads first and writes only what is missing, renamed or unreachable:
    matching sessions by `$in` on the unique contact index is index-served
    everywhere, where `$or` or extra predicates in an update filter are
    collection scans on SecantusDB.
    """
    latest: dict[tuple[str, str], InboundMessage] = {}
    for message in batch:
        latest[(message.platform, message.contact_identifier)] = message  # latest name wins
    fields = ("contact_name", "chat_id", "count_version")
    sessions = sessions_by_contact(latest, fields)
    missing = [contact for contact in latest if contact not in sessions]
    if missing:
        _create_sessions([latest[contact] for contact in missing], now)
        sessions.update(sessions_by_contact(missing, fields))
    updates = []
    for contact, session in sessions.items():
        message, changes = latest[contact], {}
        if session.get("contact_name", "") != message.name:
            changes.update(Session.naming(message.name))
        if not session.get("chat_id"):
            # An imported session: now that the contact wrote, goodbyes and replies can reach them.
            changes["chat_id"] = str(message.chat_id)
        if changes:
            updates.append((session["_id"], {"$set": changes}))
    Session.update_each(updates)
    return sessions


def sessions_by_contact(
    contacts: Iterable[tuple[str, str]], fields: Iterable[str] = ("contact_name",)
) -> dict[tuple[str, str], dict]:
    """The open sessions of these contacts (platform, identifier), with the given fields.

    One `$in` per platform on the unique contact index: index-served everywhere.
    """
    by_platform: dict[str, list[str]] = {}
    for platform, identifier in contacts:
        by_platform.setdefault(platform, []).append(identifier)
    found: dict[tuple[str, str], dict] = {}
    for platform, identifiers in by_platform.items():
        cursor = Session.objects.for_contact(platform, *identifiers).only("contact_identifier", *fields)
        for doc in cursor.as_pymongo():
            found[(platform, doc["contact_identifier"])] = doc
    return found


def _create_sessions(messages: Sequence[InboundMessage], now: dt.datetime) -> None:
    # Another replica may open the same contact's session first: theirs is used.
    Session.insert_new(
        [Session.open_for(m.platform, m.contact_identifier, m.name, now, chat_id=str(m.chat_id)) for m in messages]
    )


# A finish that keeps deleting the session a message was resolved to is retried
# this often in one call; then the batch goes back to JetStream for another try.
MAX_FINISH_RACES = 3


class SessionFinishedMeanwhile(Contended):
    """The open session a message was about to be stored in kept being finished."""


def store_inbound(batch: Sequence[InboundMessage], races: int = 0) -> list[StoredInbound]:
    """Store each message once in its contact's open session.

    Every message is answered, whether stored now or before: one stored before
    may be a redelivery whose first attempt died between storing and replying,
    and JetStream's delivery count cannot tell (it starts again at one when
    nats-server restarts before persisting it). The reply's Nats-Msg-Id and the
    bot's delivered-key store keep the contact from getting it twice.

    A session finished between being found here and its messages being stored
    would leave them orphans whose unique key blocks storing them again: they
    are taken back and stored in the contact's next session instead.
    """
    now = clock.now()
    unique: dict[str, InboundMessage] = {}
    for message in batch:
        unique.setdefault(inbound_key(message), message)
    # Stored, then finished with their session before this delivery: the agent
    # saw them; storing them again would open a session nobody asked for.
    finished = FinishedMessage.objects.sessions_of(unique)
    live = {key: value for key, value in unique.items() if key not in finished}
    resolved = _open_sessions(list(live.values()), now)
    sessions = {contact: session["_id"] for contact, session in resolved.items()}
    # Read before the messages are stored: see Session.add_counts.
    versions = {session["_id"]: session.get("count_version") for session in resolved.values()}
    failpoint("server.intake.after_sessions_resolved")
    done = [StoredInbound(m, key, finished[key]) for key, m in unique.items() if key in finished]
    unique = live
    documents = [
        Message.inbound(
            sessions[(m.platform, m.contact_identifier)],
            key,
            m.text,
            clock.parse(m.sent_at, now),
            external_id=str(m.message_id),
            **inbound_content(m),
        )
        for key, m in unique.items()
    ]
    inserted = Message.insert_new(documents)
    failpoint("server.intake.after_messages_inserted")
    gone = _touch_sessions(
        [(doc["session_id"], preview_text(doc)) for doc in documents if doc["key"] in inserted], versions, now
    )
    failpoint("server.intake.after_sessions_updated")
    if gone:
        return _store_again_after_finish(batch, documents, inserted, gone, races)
    # A message found stored: the attempt that stored it may have died before
    # counting it in its session, and nothing else ever would.
    _recount_sessions({doc["session_id"] for doc in documents if doc["key"] not in inserted}, now)
    return done + [
        StoredInbound(m, key, sessions[(m.platform, m.contact_identifier)], key in inserted)
        for key, m in unique.items()
    ]


def inbound_content(message: InboundMessage) -> dict[str, Any]:
    """What a contact's message holds besides its text, as Message stores it."""
    return {
        "kind": message.kind,
        "file": dataclasses.asdict(message.file) if message.file else None,
        "location": message.location,
        "contact": message.contact,
    }


@dataclass(frozen=True)
class EditedInbound:
    message: InboundMessage  # the edit
    session_id: ObjectId
    stored: dict[str, Any]  # the message as it now is


def apply_edits(edits: Sequence[InboundMessage]) -> list[EditedInbound]:
    """Apply contacts' edits to their stored messages; the ones that changed something.

    An edit of a message finished with its session, of one never stored, or one
    applied already (a redelivery) changes nothing and is not reported again.
    """
    now = clock.now()
    applied = []
    for edit in edits:
        stored = Message.objects.edit(
            inbound_key(edit), edit.text, clock.parse(edit.edited_at, now), edit.edit_update_id
        )
        if stored is not None:
            applied.append(EditedInbound(edit, stored["session_id"], stored))
    return applied


def _store_again_after_finish(
    batch: Sequence[InboundMessage],
    documents: list[Stored],
    inserted: set[str],
    gone: set[ObjectId],
    races: int,
) -> list[StoredInbound]:
    """Take back what was stored in sessions finished meanwhile, and store the batch again.

    Deleting by key and session id takes only this call's orphans; the second
    pass finds the contacts' new sessions (or opens them) and stores the rest
    as already stored, so nothing is counted or answered twice.
    """
    orphans = [doc["key"] for doc in documents if doc["session_id"] in gone and doc["key"] in inserted]
    if orphans:
        Message.objects(key__in=orphans, session_id__in=list(gone)).delete()
    if races >= MAX_FINISH_RACES:
        raise SessionFinishedMeanwhile(f"{len(gone)} sessions finished while their messages were stored")
    return store_inbound(batch, races + 1)


def _recount_sessions(session_ids: set[ObjectId], now: dt.datetime) -> None:
    """Set the counter and preview of those sessions whose counter is not what they hold.

    Sessions that count right are left alone: their preview is the last message
    that arrived, which a read by time cannot tell apart from another one sent
    in the same second.
    """
    if not session_ids:
        return
    updates = []
    for session_id in Session.recount(session_ids):
        update: dict[str, Any] = {"$max": Session.active_at(session_id, now)}
        latest = Message.objects.latest_text(session_id)
        if latest is not None:
            update["$set"] = {"last_message_preview": preview(latest)}
        updates.append((session_id, update))
    Session.update_each(updates)


def _touch_sessions(
    new_messages: Iterable[tuple[ObjectId, str]], versions: dict[ObjectId, int | None], now: dt.datetime
) -> set[ObjectId]:
    """Count new messages in their sessions; the sessions that are gone (finished meanwhile).

    `versions` holds each session's count_version as read before the messages
    were stored (see Session.add_counts).
    """
    counts: dict[ObjectId, int] = {}
    last_text: dict[ObjectId, str] = {}
    for session_id, text in new_messages:
        counts[session_id] = counts.get(session_id, 0) + 1
        last_text[session_id] = text
    if not counts:
        return set()
    return Session.add_counts(
        [
            (
                session_id,
                versions.get(session_id),
                {
                    "$inc": {"message_count": count},
                    "$max": Session.active_at(session_id, now),
                    "$set": {"last_message_preview": preview(last_text[session_id])},
                },
            )
            for session_id, count in counts.items()
        ]
    )
