"""Open sessions as agents see them: listed by activity, searched by contact name,
read with their messages, answered by agents, and finished.

These functions block on MongoDB; handlers run them through `Database.run`.

How a page of sessions is read
------------------------------
Every query is at most one equality (a contact-name key or a platform) plus one
range over `activity_key`, sorted by `activity_key` descending: mongod serves it
from the matching compound index, and so does SecantusDB, whose planner scans
the collection for `$or` keysets, `$all` and anchored regexes.

SecantusDB also reads every index entry in a range before it applies the limit,
so an open-ended range costs as much as the whole collection. A page is
therefore gathered from bounded time slices walked backwards from the cursor:
each slice is one index-served query, a slice that comes back short makes the
next one wider, and the cursor carries twice the span the page's sessions took,
so the next page starts with a slice of the right size: one query that reads
about twice the entries it shows. On mongod the limit ends each
scan early anyway; the slices add a few round trips only where activity is sparse.

A query of several words probes the index with its longest word (usually the
rarest prefix) and checks the others against the contact's name here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from mongoengine import NotUniqueError

from contract import clock
from runtime.failpoints import failpoint
from server import names
from server.models.messages import FinishedMessage, Message, preview_text
from server.models.sessions import (
    Session,
    activity_floor,
    activity_key,
    activity_key_time,
    activity_time_prefix,
    preview,
)
from server.models.stored import IdempotencyKeyReused

FIRST_SLICE_MS = 60_000
MIN_SLICE_MS = 1_000
MAX_SLICE_MS = 10**14  # wider than any activity key's range
MAX_WIDENING = 8
# A hint's slice is twice the span the page's sessions took (room for more
# activity since), plus the quiet time above the newest of them.
HINT_MARGIN = 2


@dataclass(frozen=True)
class SessionFilter:
    """What a listing asks for; `words` are folded name prefixes (names.query_keys)."""

    words: tuple[str, ...] = ()
    platform: str | None = None
    active_since: dt.datetime | None = None

    def listing(self) -> str:
        """Identifies the listing, so a cursor is honoured only where it was issued."""
        since = self.active_since.astimezone(clock.UTC).isoformat() if self.active_since else None
        return json.dumps(["sessions", sorted(self.words), self.platform, since])


@dataclass(frozen=True)
class SessionsResume:
    before: str  # activity key of the last session already listed
    slice_ms: int

    def to_position(self) -> dict[str, Any]:
        return {"before": self.before, "slice": self.slice_ms}

    @classmethod
    def from_position(cls, position: dict[str, Any]) -> SessionsResume:
        before, width = position["before"], position["slice"]
        if not isinstance(before, str) or not isinstance(width, int):
            raise ValueError("malformed sessions position")
        activity_key_time(before)  # raises ValueError unless it starts with the time
        return cls(before, _clamped(width))


@dataclass
class SessionsPage:
    sessions: list[dict[str, Any]]
    resume: SessionsResume | None


class SliceHints:
    """The first slice of each access path's next first page: what the last one took, with a margin.

    A cursor carries the width its next page starts with, but a first page has none,
    and from one minute a page over sparse activity widens slice by slice (a
    rare name: seven queries over three months). A first page that filled
    leaves the quiet time above its newest session plus twice its sessions'
    span (HINT_MARGIN); one that reached the oldest session leaves
    the widest slice, which costs only the few index entries the path holds.
    A wrong hint costs one query: the page it fills leaves the span it found.
    Bounded to the `capacity` paths used last; one per process, shared by the
    database threads.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._widths: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def width(self, path: str) -> int:
        with self._lock:
            width = self._widths.get(path)
            if width is not None:
                self._widths.move_to_end(path)
        return FIRST_SLICE_MS if width is None else width

    def remember(self, path: str, width: int) -> None:
        with self._lock:
            self._widths[path] = _clamped(width)
            self._widths.move_to_end(path)
            while len(self._widths) > self._capacity:
                self._widths.popitem(last=False)


def list_sessions(
    criteria: SessionFilter,
    limit: int,
    resume: SessionsResume | None = None,
    now: dt.datetime | None = None,
    max_examined: int | None = None,
    hints: SliceHints | None = None,
) -> SessionsPage:
    """The open sessions matching `criteria`, most recent activity first.

    Keyset pages over `activity_key`: a page holds only sessions whose key is below
    the previous page's last one. A session that gets a message moves up past the
    reader and is not listed again; every session without new activity is listed
    exactly once, however much the others move.

    A search of several common words may read many candidates for each match;
    once `max_examined` documents were read, the page ends short (even empty)
    with a cursor past the last one read, so no single request walks every
    session the probe word matches.

    With `hints`, a first page starts with the slice the last first page of the
    same access path took, and leaves its own (SliceHints).
    """
    # A listing holding a database thread (a slow query), or failing unexpectedly (a 500).
    failpoint("server.sessions.list")
    equality, wanted = _access_path(criteria)
    floor = activity_floor(criteria.active_since) if criteria.active_since else ""
    upper = resume.before if resume else None
    top = _milliseconds(activity_key_time(upper) if upper else (now or clock.now()))
    # The floor is part of the path: a short listing since yesterday says nothing of older activity.
    path = json.dumps([equality, floor], sort_keys=True, default=str)
    learning = hints if resume is None else None  # a cursor carries its own width
    width = resume.slice_ms if resume else learning.width(path) if learning else FIRST_SLICE_MS
    start = top
    found: list[dict[str, Any]] = []
    examined = 0
    while True:
        bottom = top - width
        lower = max(activity_floor(clock.from_milliseconds(bottom)), floor) if bottom > 0 else floor
        bounds = {**({"$gte": lower} if lower else {}), **({"$lt": upper} if upper else {})}
        # Re-checked candidates may be dropped, so those queries take a full page.
        batch = limit + 1 if wanted is not None else limit + 1 - len(found)
        docs = Session.objects.newest_first({**equality, **({"activity_key": bounds} if bounds else {})}, batch)
        kept = [doc for doc in docs if wanted is None or wanted(doc)]
        found += kept
        examined += len(docs)
        if len(found) > limit:
            break
        if max_examined is not None and examined >= max_examined and docs:
            # Resume below the last document read: everything above it was looked at.
            return SessionsPage(found, SessionsResume(docs[-1]["activity_key"], width))
        if len(docs) == batch:  # the slice may hold more: continue inside it
            upper = docs[-1]["activity_key"]
            continue
        if lower == floor:  # reached the oldest activity asked for
            break
        upper, top = lower, bottom
        width = _widen(width, len(kept), limit + 1 - len(found))
    if len(found) <= limit:
        if learning:
            learning.remember(path, MAX_SLICE_MS)
        return SessionsPage(found, None)
    # The next page is sized by this page's own span, not by the slice that
    # happened to fill it: a slice widened eightfold over a quiet stretch would
    # make every later page read up to eight times what it shows. The margin
    # covers the sessions' span only: the quiet time above the newest of them
    # (a desk at night, the next first page) holds none, and doubled it would
    # make the slice hold many pages. A session active after `start` (a clock
    # ahead, an import from the future) adds no quiet time.
    newest = _milliseconds(activity_key_time(found[0]["activity_key"]))
    span = newest - _milliseconds(activity_key_time(found[limit]["activity_key"]))
    learned = _clamped(max(start - newest, 0) + HINT_MARGIN * span)
    if learning:
        learning.remember(path, learned)
    page = found[:limit]
    return SessionsPage(page, SessionsResume(page[-1]["activity_key"], learned))


def _access_path(criteria: SessionFilter) -> tuple[dict[str, Any], Callable[[dict], bool] | None]:
    """The index equality to query with, and the check of whatever it leaves out."""
    if not criteria.words:
        return ({"platform": criteria.platform} if criteria.platform else {}), None
    probe = max(criteria.words, key=len)
    others = [word for word in criteria.words if word != probe]
    if not others and not criteria.platform:
        return {"name_keys": probe}, None

    def wanted(doc: dict[str, Any]) -> bool:
        if criteria.platform and doc.get("platform") != criteria.platform:
            return False
        keys = set(names.search_keys(doc.get("contact_name") or ""))
        return all(word in keys for word in others)

    return {"name_keys": probe}, wanted


def _widen(width: int, kept: int, missing: int) -> int:
    """The next slice's width: grow by the density seen so far, within bounds."""
    factor = MAX_WIDENING if kept == 0 else min(MAX_WIDENING, max(2, math.ceil(2 * missing / kept)))
    return min(width * factor, MAX_SLICE_MS)


def _clamped(width: int) -> int:
    return min(max(width, MIN_SLICE_MS), MAX_SLICE_MS)


def _milliseconds(at: dt.datetime) -> int:
    return int(activity_time_prefix(at))


def find_session(session_id: ObjectId) -> dict[str, Any] | None:
    return Session.objects.find_one(session_id)


@dataclass(frozen=True)
class MessagesResume:
    sent_at: dt.datetime
    message_id: ObjectId

    def to_position(self) -> dict[str, Any]:
        return {"at": _milliseconds(self.sent_at), "id": str(self.message_id)}

    @classmethod
    def from_position(cls, position: dict[str, Any]) -> MessagesResume:
        at, message_id = position["at"], position["id"]
        if not isinstance(at, int) or not isinstance(message_id, str):
            raise ValueError("malformed messages position")
        return cls(clock.from_milliseconds(at), ObjectId(message_id))


@dataclass
class MessagesPage:
    messages: list[dict[str, Any]]
    resume: MessagesResume | None


def list_messages(session_id: ObjectId, limit: int, resume: MessagesResume | None = None) -> MessagesPage:
    """A session's messages, oldest first, in keyset pages over (sent_at, id).

    Messages sharing the cursor's instant are read by their own query rather than
    by an `$or` keyset, which SecantusDB answers with a collection scan.
    """
    found: list[dict[str, Any]] = []
    later: dict[str, Any] = {"session_id": session_id}
    if resume is not None:
        same_instant = {"session_id": session_id, "sent_at": resume.sent_at, "_id": {"$gt": resume.message_id}}
        found += Message.objects.timeline(same_instant, limit + 1)
        later["sent_at"] = {"$gt": resume.sent_at}
    if len(found) <= limit:
        found += Message.objects.timeline(later, limit + 1 - len(found))
    if len(found) <= limit:
        return MessagesPage(found, None)
    page = found[:limit]
    return MessagesPage(page, MessagesResume(page[-1]["sent_at"], page[-1]["_id"]))


def find_message(session_id: ObjectId, message_id: ObjectId) -> dict[str, Any] | None:
    return Message.objects(id=message_id, session_id=session_id).as_pymongo().first()


def file_objects(session_id: ObjectId) -> list[str]:
    """Where the files of the session's messages are kept, to delete them with it."""
    return Message.objects.file_objects_of(session_id)


def finish(session_id: ObjectId) -> bool:
    """Delete the session and its messages; False if it was gone already.

    Messages go first, so a failure half-way leaves a session a retry can finish
    rather than messages nothing points to; the second pass takes what the intake
    stored in the session meanwhile (the intake stores those again in the
    contact's next session). The keys of the messages finished are kept
    (`FinishedMessage`), so a redelivery of one of them is not stored again.
    """
    keys = Message.objects.keys_of(session_id)
    if keys:
        FinishedMessage.remember(keys, session_id, clock.now())
        Message.objects(session_id=session_id, key__in=keys).delete()
    deleted = Session.objects(id=session_id).delete()
    Message.objects(session_id=session_id).delete()
    return deleted == 1


def idempotent_message_key(session: dict[str, Any], idempotency_key: str) -> str:
    # Hashed: the client's key is opaque text; the stored key stays short and plain.
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"{session['platform']}:{session['contact_identifier']}:agent-key:{digest}"


def add_agent_reply(
    session: dict[str, Any],
    text: str,
    idempotency_key: str | None = None,
    message_id: ObjectId | None = None,
    file: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Store an agent's message (a text, or a `file` with `text` as its caption) in the
    session; None if the session was finished meanwhile.

    With an idempotency key, a retry (the client saw a 503 or lost the answer)
    returns the message the first try stored instead of storing another, and
    counts it in the session in case that try died before; the same key with
    another text, or another file's bytes, raises IdempotencyKeyReused.
    """
    now = clock.stored_now()  # what MongoDB keeps, so the reply reads back the same
    message_id = message_id or ObjectId()
    key = (
        idempotent_message_key(session, idempotency_key)
        if idempotency_key
        else f"{session['platform']}:{session['contact_identifier']}:agent:{message_id}"
    )
    content: dict[str, Any] = {"kind": file["kind"], "file": file["record"]} if file else {}
    message = Message.outbound(session["_id"], key, text, now, message_id=message_id, **content)
    try:
        Message.save_new(message)
        failpoint("server.reply.after_message_stored")  # stored, neither counted nor promised
    except NotUniqueError:
        if idempotency_key is None:
            raise
        earlier = Message.objects(key=key).as_pymongo().first()
        same_file = (earlier or {}).get("file", {}).get("sha256") == (message.get("file") or {}).get("sha256")
        if earlier is None or earlier["session_id"] != session["_id"] or earlier["text"] != text or not same_file:
            raise IdempotencyKeyReused(key) from None
        touched = Session.objects(id=session["_id"]).update_one(
            max__last_message_at=earlier["sent_at"],
            max__activity_key=activity_key(earlier["sent_at"], session["_id"]),
        )
        Session.recount([session["_id"]])
        return earlier if touched else None
    # `session` was read before the message was stored, as add_counts needs.
    gone = Session.add_counts(
        [
            (
                session["_id"],
                session.get("count_version"),
                {
                    "$inc": {"message_count": 1},
                    "$set": {"last_message_preview": preview(preview_text(message))},
                    "$max": Session.active_at(session["_id"], now),
                },
            )
        ]
    )
    if gone:
        Message.objects(id=message_id).delete()
        return None
    return message
