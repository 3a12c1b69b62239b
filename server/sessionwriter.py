"""The session writer: contacts' messages into their open sessions, each stored once and counted.

The intake (server/conversations.py) and imports (server/importing/upsert.py)
are adapters over `write`: each hands it one `ContactMessages` per contact and
reads what became of them from a `Filed` each. The writer owns one open session
per contact (platform + identifier), found or opened here; each message stored
once under its natural key (the unique `message_key`); a session's count,
preview and activity moved only by messages it gained (the `count_version`
protocol, `Session.add_counts`); and nothing left in a session a finish
deleted meanwhile.

A batch costs the same few commands whatever its size: a read of the contacts'
sessions, an insert of the messages, an insert of the new sessions and a bulk
update of the known ones; the intake reads the finished keys first, an import
the keys its known sessions hold (a file imported again writes nothing).

A new session is inserted once, after its messages, with its final count,
preview, activity and name keys: no reader, finish or recount sees one
half-made, and none costs an insert and an update (which would write its
multikey name index twice). Until then its messages point to an id no session
has; a writer that dies in between leaves them so, and the next try of the
same messages finds their keys held by a session that does not exist and
adopts them. A known session gets its messages, then one update counting them;
a finish in between leaves them orphans, taken back and written again into the
contact's next session.

These functions block on MongoDB; callers run them through `Database.run`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from contract import clock
from runtime.failpoints import failpoint
from server.models.messages import FinishedMessage, Message, preview_text
from server.models.sessions import Contact, Session, preview
from server.models.stored import Contended, Stored

# What is read of a known session: enough to rename it, judge what a batch
# changed, and count into it.
SESSION_FIELDS = ("contact_name", "chat_id", "source_id", "import_origin", "last_message_at", "contact_blocked_at")
COUNT_FIELDS = ("message_count", "count_version")

# A finish that keeps deleting the session a batch's messages were resolved to
# is raced this often in one call; then the batch is left to be tried again.
MAX_FINISH_RACES = 3


class SessionFinishedMeanwhile(Contended):
    """The open session messages were about to be stored in kept being finished."""


@dataclass(frozen=True)
class NewMessage:
    text: str  # the text, or a caption
    sent_at: dt.datetime
    external_id: str | None = None
    # What it is when not a text: `kind`, and `file`, `location` or `contact` (Message.inbound).
    content: dict[str, Any] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """What a preview shows of it (server.models.messages.preview_text)."""
        return preview_text({"text": self.text, **self.content})


@dataclass
class ContactMessages:
    """One contact's messages in a batch, by key (in arrival or file order), and what to set with them.

    `chat_id` is where a contact writing to the bot is reached: their name then
    comes from their live profile and always wins; a name from a file renames
    only a session nobody has written from (one without a chat). `at` is when
    the contact was last active, when the messages' own dates do not say it:
    the intake's arrival, or the time of an imported session without messages.
    """

    platform: str
    contact_identifier: str
    name: str
    messages: dict[str, NewMessage] = field(default_factory=dict)
    chat_id: str | None = None
    at: dt.datetime | None = None
    source_id: str | None = None  # the session's `_id` in an imported file
    origin: str | None = None  # the import chunk writing it (Session.import_origin)

    @property
    def contact(self) -> Contact:
        return (self.platform, self.contact_identifier)


@dataclass
class Filed:
    """What became of one contact's messages."""

    session_id: ObjectId  # the contact's session now
    opened: bool  # this call inserted that session
    session: dict[str, Any] | None  # that session as read before this call wrote to it; None when opened
    inserted: set[str] = field(default_factory=set)  # keys inserted by this call
    added: list[str] = field(default_factory=list)  # keys the session gained: inserted, or adopted
    present: set[str] = field(default_factory=set)  # keys the session held already
    elsewhere: dict[str, ObjectId] = field(default_factory=dict)  # keys held by another live session
    finished: dict[str, ObjectId] = field(default_factory=dict)  # keys finished with a session: not stored again

    def session_of(self, key: str) -> ObjectId:
        return self.finished.get(key) or self.elsewhere.get(key) or self.session_id


@dataclass
class _Plan:
    """One contact's way through a call: where its messages go, and what happened to them."""

    contact: ContactMessages
    filed: Filed
    messages: dict[str, NewMessage]  # the contact's messages less the finished ones
    held: dict[str, ObjectId] = field(default_factory=dict)  # of those, the stored ones: the session each is in
    recount: bool = False  # the session's count is to be checked against what it holds
    retry: bool = False  # written again by the next pass (its session went, or a message did)

    @property
    def session_id(self) -> ObjectId:
        return self.filed.session_id

    def newest_added(self) -> NewMessage | None:
        return _newest(self.messages[key] for key in self.filed.added)


def _newest(messages: Iterable[NewMessage]) -> NewMessage | None:
    """The latest of these messages by date; of a tie, the later one."""
    newest = None
    for message in messages:
        if newest is None or message.sent_at >= newest.sent_at:
            newest = message
    return newest


def write(
    contacts: Sequence[ContactMessages],
    *,
    failpoints: str,
    skip_finished: bool = False,
    read_stored_first: bool = False,
    finished: dict[str, ObjectId] | None = None,
    races: int = 0,
) -> dict[Contact, Filed]:
    """Store each contact's messages in their open session, opening it if need be; what became of each.

    `failpoints` prefixes the fail points of each window (`<prefix>.after_sessions_resolved`,
    `.after_messages_inserted`, `.after_sessions_inserted`, `.after_sessions_updated`).
    `skip_finished`: messages finished with their session before are not stored
    again (the intake: a redelivery of a message the agent already saw and
    finished). `read_stored_first`: read which keys the known sessions hold
    before inserting (an import, whose files are often imported again); else
    the insert tells, which costs nothing when none are stored (the intake).
    `finished`: keys known to be finished already (key -> session), not stored.
    """
    finished = dict(finished or {})
    keys = [key for contact in contacts for key in contact.messages if key not in finished]
    if skip_finished and keys:
        finished.update(FinishedMessage.objects.sessions_of(keys))
    known = Session.objects.by_contact([contact.contact for contact in contacts], SESSION_FIELDS + COUNT_FIELDS)
    plans = []
    for contact in contacts:
        session = known.get(contact.contact)
        filed = Filed(session["_id"] if session else ObjectId(), False, session)
        filed.finished = {key: finished[key] for key in contact.messages if key in finished}
        messages = {key: message for key, message in contact.messages.items() if key not in finished}
        plans.append(_Plan(contact, filed, messages))
    failpoint(f"{failpoints}.after_sessions_resolved")

    _insert_messages(plans, read_stored_first)
    failpoint(f"{failpoints}.after_messages_inserted")
    _sort_held(plans)

    _open_sessions(plans)
    failpoint(f"{failpoints}.after_sessions_inserted")

    gone, updated = _update_known([plan for plan in plans if plan.filed.session is not None and not plan.retry])
    _recount([plan for plan in plans if plan.recount and plan.session_id not in gone], updated)
    failpoint(f"{failpoints}.after_sessions_updated")

    again = [plan for plan in plans if plan.retry or plan.session_id in gone]
    if again:
        _write_again(again, gone, failpoints, skip_finished, read_stored_first, races)
    return {plan.contact.contact: plan.filed for plan in plans}


def _insert_messages(plans: list[_Plan], read_stored_first: bool) -> None:
    """Insert the messages not stored yet, each under its contact's session; note where the others are."""
    if read_stored_first:
        known = [plan for plan in plans if plan.filed.session is not None]
        held = Message.objects.holders(key for plan in known for key in plan.messages)
        for plan in known:
            plan.held = {key: held[key] for key in plan.messages if key in held}
    documents = [
        Message.inbound(
            plan.session_id, key, message.text, message.sent_at, external_id=message.external_id, **message.content
        )
        for plan in plans
        for key, message in plan.messages.items()
        if key not in plan.held
    ]
    inserted = Message.insert_new(documents)
    owner = {key: plan for plan in plans for key in plan.messages}
    taken = []
    for document in documents:
        key = document["key"]
        if key in inserted:
            owner[key].filed.inserted.add(key)
            owner[key].filed.added.append(key)
        else:
            taken.append(key)
    if taken:
        held = Message.objects.holders(taken)
        for key in taken:
            if key in held:
                owner[key].held[key] = held[key]
            else:  # stored by another writer, then deleted with its session
                owner[key].retry = True


def _sort_held(plans: list[_Plan]) -> None:
    """File each stored key: in its contact's session already, in another live one, or adopted.

    A key held by a session that does not exist was stored by a writer that
    died before inserting that session: its message moves to the contact's
    session now, which gains it as if it were inserted.
    """
    foreign: dict[ObjectId, list[tuple[_Plan, str]]] = {}
    for plan in plans:
        for key, holder in plan.held.items():
            if holder == plan.session_id:
                plan.filed.present.add(key)
                plan.recount = True  # the try that stored it may have died before counting it
            else:
                foreign.setdefault(holder, []).append((plan, key))
    if not foreign:
        return
    alive = Session.objects.present(foreign)
    moves: dict[tuple[ObjectId, ObjectId], list[str]] = {}
    for holder, held in foreign.items():
        for plan, key in held:
            if holder in alive:
                plan.filed.elsewhere[key] = holder
            else:
                plan.filed.added.append(key)
                moves.setdefault((holder, plan.session_id), []).append(key)
    moved = Message.move([(keys, source, target) for (source, target), keys in moves.items()])
    if moved != sum(len(keys) for keys in moves.values()):
        # Another writer moved some of them first: count what each session holds.
        for holder, held in foreign.items():
            for plan, _ in held:
                plan.recount = plan.recount or holder not in alive


def _open_sessions(plans: list[_Plan]) -> None:
    """Insert a session, complete, for each contact without one that gained messages (or is an
    imported session without any); a contact given one by another writer meanwhile joins it."""
    new = [
        plan
        for plan in plans
        if plan.filed.session is None and not plan.retry and (plan.filed.added or not plan.contact.messages)
    ]
    lost = Session.insert_new([_new_session(plan.contact, plan.filed.added, plan.session_id) for plan in new])
    for index, plan in enumerate(new):
        plan.filed.opened = index not in lost
    if lost:
        _join_winners([plan for index, plan in enumerate(new) if index in lost])
    for plan in plans:
        if plan.filed.session is None and not plan.filed.opened and plan.filed.elsewhere:
            plan.filed.session_id = next(iter(plan.filed.elsewhere.values()))  # its messages' session


def _new_session(contact: ContactMessages, keys: Sequence[str], session_id: ObjectId | None = None) -> Stored:
    """The session a contact without one is opened with, holding the messages `keys`, as stored."""
    messages = [contact.messages[key] for key in keys]
    oldest = min((message.sent_at for message in messages), default=None)
    newest = _newest(messages)
    at = contact.at or (newest.sent_at if newest else clock.now())
    return Session.open_for(
        contact.platform,
        contact.contact_identifier,
        contact.name,
        at,
        chat_id=contact.chat_id,
        created_at=contact.at or oldest or at,
        message_count=len(messages),
        last_message_preview=preview(newest.shown) if newest else "",
        source_id=contact.source_id,
        import_origin=contact.origin,
        session_id=session_id,
    )


def _join_winners(lost: list[_Plan]) -> None:
    """Move the messages of contacts another writer opened a session for meanwhile into that session.

    Their count is then taken from what the session holds: the other writer
    counted its own, and may have adopted some of these.
    """
    winners = Session.objects.by_contact([plan.contact.contact for plan in lost], SESSION_FIELDS + COUNT_FIELDS)
    moves = []
    for plan in lost:
        winner = winners.get(plan.contact.contact)
        if winner is None:  # opened and finished already: the next pass adopts the messages
            plan.retry = True
            continue
        if plan.filed.added:
            moves.append((plan.filed.added, plan.session_id, winner["_id"]))
        plan.filed.session_id, plan.filed.session, plan.recount = winner["_id"], winner, True
    Message.move(moves)


def _update_known(plans: list[_Plan]) -> tuple[set[ObjectId], set[ObjectId]]:
    """Count what each known session gained and set what changed; the sessions gone meanwhile, and those written."""
    updates = []
    for plan in plans:
        session = plan.filed.session
        assert session is not None
        update: dict[str, Any] = {}
        changes = _changed_fields(plan.contact, session)
        newest = plan.newest_added()
        if newest is not None:
            at = plan.contact.at or newest.sent_at
            update["$max"] = Session.active_at(plan.session_id, at)
            if plan.contact.at is not None or newest.sent_at >= clock.aware(session["last_message_at"]):
                changes["last_message_preview"] = preview(newest.shown)
            if not plan.recount:
                update["$inc"] = {"message_count": len(plan.filed.added)}
        if changes:
            update["$set"] = changes
        if plan.contact.chat_id is not None and session.get("contact_blocked_at"):
            # The contact wrote, so the bot may write to them again.
            update["$unset"] = {"contact_blocked_at": ""}
        if update:
            updates.append((plan.session_id, session.get("count_version"), update))
    return Session.add_counts(updates), {session_id for session_id, _, _ in updates}


def _changed_fields(contact: ContactMessages, session: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    live = contact.chat_id is not None
    if (live or not session.get("chat_id")) and session.get("contact_name", "") != contact.name:
        changes.update(Session.naming(contact.name))
    if live and not session.get("chat_id"):
        # An imported session: now that the contact wrote, goodbyes and replies can reach them.
        changes["chat_id"] = contact.chat_id
    if contact.source_id and not session.get("source_id"):
        changes["source_id"] = contact.source_id
    return changes


def _recount(plans: list[_Plan], updated: set[ObjectId]) -> None:
    """Count what these sessions hold; those that counted wrong get their preview and activity too.

    A count can be wrong only after a writer died between storing messages
    and counting them, or where writers raced for a contact; what else that
    writer would have set is then set here, from what is stored. The count and
    version read of a session not `updated` since are taken as they were read.
    """
    if not plans:
        return
    by_session = {plan.session_id: plan for plan in plans}
    read = {
        plan.session_id: (plan.filed.session.get("message_count", 0), plan.filed.session.get("count_version"))
        for plan in plans
        if plan.filed.session is not None and plan.session_id not in updated
    }
    updates = []
    for session_id in Session.recount(by_session, read):
        plan = by_session[session_id]
        at = plan.contact.at or max((message.sent_at for message in plan.messages.values()), default=None)
        update: dict[str, Any] = {"$max": Session.active_at(session_id, at)} if at else {}
        latest = Message.objects.latest_text(session_id)
        if latest is not None:
            update["$set"] = {"last_message_preview": preview(latest)}
        if update:
            updates.append((session_id, update))
    Session.update_each(updates)


def _write_again(
    plans: list[_Plan], gone: set[ObjectId], failpoints: str, skip_finished: bool, read_stored_first: bool, races: int
) -> None:
    """Take back what went into sessions finished meanwhile, and write those contacts again.

    Judged from what is stored, as a finish before or after the batch would
    have left it: a message the finish swept and recorded (`finished_messages`)
    was seen by the agent and goes with the session; one still in the gone
    session arrived after the finish looked and is an orphan, taken back
    (deleting by key and gone session takes only those) and written again. The
    next pass finds or opens each contact's next session for the rest; its
    outcome replaces this one.
    """
    holders = Message.objects.holders(key for plan in plans for key in plan.messages)
    orphans = [key for key, holder in holders.items() if holder in gone]
    if orphans:
        Message.objects(key__in=orphans, session_id__in=list(gone)).delete()
    swept = [key for plan in plans for key in plan.messages if key not in holders]
    taken = FinishedMessage.objects.sessions_of(swept) if swept else {}
    if races >= MAX_FINISH_RACES:
        raise SessionFinishedMeanwhile(f"{len(plans)} contacts' sessions kept being finished while they were written")
    again_filed = write(
        [plan.contact for plan in plans],
        failpoints=failpoints,
        skip_finished=skip_finished,
        read_stored_first=read_stored_first,
        finished={**{key: held for plan in plans for key, held in plan.filed.finished.items()}, **taken},
        races=races + 1,
    )
    for plan in plans:
        filed = again_filed[plan.contact.contact]
        if filed.opened or filed.added or filed.present or filed.elsewhere:
            plan.filed = filed
        else:  # the finish took every message it had gained: they stay where this pass put them
            plan.filed.finished.update(filed.finished)
