"""Publishing the live events of what the server stored, to BALCAO_EVENTS.

Events are published after the data is stored. Message events are published
before the inbound batch is acknowledged, so a failure means redelivery and a
second try (at least once); each event's Nats-Msg-Id is derived from what it is
about, so the second try within JetStream's duplicate window stores nothing
(exactly once in the stream). Events with nothing upstream to redeliver them
(a session finished, an import finished) are promised: kept in MongoDB
(`EventPromise`) before or with the change they report, and published by the
outbox relay (`server/outbound.py`) under the same Nats-Msg-Id, so neither a
crash nor NATS being away loses one, and a relay that publishes again after a
crash stores nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from bson import ObjectId
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from contract import clock, eventstream, messaging
from contract.messaging import DUPLICATE_WINDOW_SECONDS
from runtime import jetstream
from runtime.failpoints import failpoint
from runtime.filestore import FileStore
from server.conversations import StoredBatch
from server.metrics import EVENTS_PUBLISHED
from server.models.outbox import EventPromise
from server.models.sessions import Session

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0
# A promise held for a session that was never deleted (its finish failed and
# nobody tried again) must not be published; after this long it is dropped. A
# finish tried again later promises the event anew.
HELD_PROMISE_SECONDS = 3600.0


async def ensure_stream(js: JetStreamContext, max_age: float, max_bytes: int, *, replicas: int = 1) -> None:
    """Declare BALCAO_EVENTS: kept by age and size; the oldest events go first.

    An existing stream is brought to `max_age` and `max_bytes` (EVENTS_MAX_*),
    smaller ones included: the oldest events then go at once, as they would
    have with those limits from the start.
    """
    config = StreamConfig(
        name=eventstream.EVENTS_STREAM,
        subjects=[eventstream.EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config=config)
    except BadRequestError:
        await jetstream.ensure_replicas(js, eventstream.EVENTS_STREAM, replicas)
        await jetstream.update_limits(js, config, keep_stored=False)


async def publish(js: JetStreamContext, body: dict[str, Any], key: str) -> None:
    """Publish one event and wait for JetStream to store it (raises on failure)."""
    kind = body["type"]
    ack = await jetstream.publish_through_election(
        js,
        eventstream.subject(kind, body.get("platform"), body.get("session_id")),
        eventstream.to_bytes(body),
        timeout=PUBLISH_TIMEOUT,
        headers={"Nats-Msg-Id": eventstream.dedup_id(kind, key)},
    )
    if not ack.duplicate:
        EVENTS_PUBLISHED.labels(type=kind).inc()


def received(stored: StoredBatch) -> list[tuple[dict[str, Any], str]]:
    """The events of an inbound batch just stored, in order, each with what its Nats-Msg-Id derives from.

    `session.opened` comes before its session's first `message.received`. A
    message stored before may lack its events as it may lack its reply
    (JetStream's de-duplication drops a repeat within its window).
    """
    opened = set(stored.opened)
    bodies: list[tuple[dict[str, Any], str]] = []
    for item in stored.messages:
        m = item.message
        common = {
            "platform": m.platform,
            "session_id": str(item.session_id),
            "contact": {"identifier": m.contact_identifier, "name": m.name},
        }
        if item.session_id in opened:
            opened.discard(item.session_id)  # before the session's first message
            bodies.append((eventstream.event(eventstream.SESSION_OPENED, **common), str(item.session_id)))
        bodies.append(
            (
                eventstream.event(
                    eventstream.MESSAGE_RECEIVED,
                    **common,
                    message={
                        "key": item.key,
                        "text": m.text,
                        "direction": "in",
                        "kind": "contact",
                        "sent_at": m.sent_at,
                        **eventstream.message_content(m.kind, dataclasses.asdict(m.file) if m.file else None),
                    },
                ),
                item.key,
            )
        )
    return bodies


async def publish_edited(js: JetStreamContext, edited: Sequence) -> None:
    """`message.edited` for each edit the intake applied (`conversations.EditedInbound`).

    Keyed by the edit's update, so a redelivered edit is one event, as it is one change.
    """
    bodies = []
    for item in edited:
        m, doc = item.message, item.stored
        body = eventstream.event(
            eventstream.MESSAGE_EDITED,
            platform=m.platform,
            session_id=str(item.session_id),
            contact={"identifier": m.contact_identifier, "name": m.name},
            message={
                "key": doc["key"],
                "id": str(doc["_id"]),
                "text": doc["text"],
                "direction": "in",
                "kind": "contact",
                "sent_at": clock.rfc3339(doc["sent_at"]),
                "edited_at": clock.rfc3339(doc["edited_at"]),
                **eventstream.message_content(doc.get("kind") or "text", doc.get("file")),
            },
        )
        bodies.append((body, f"{doc['key']}:{m.edit_update_id}"))
    await asyncio.gather(*(publish(js, body, key) for body, key in bodies))


def session_finished(session: dict[str, Any]) -> dict[str, Any]:
    return eventstream.event(
        eventstream.SESSION_FINISHED,
        platform=session.get("platform"),
        session_id=str(session["_id"]),
        contact={"identifier": session.get("contact_identifier", ""), "name": session.get("contact_name", "")},
    )


def import_finished(job: dict[str, Any]) -> dict[str, Any]:
    return eventstream.event(
        eventstream.IMPORT_FINISHED,
        **{"import": {"id": str(job["_id"]), "status": job.get("status"), "counts": job.get("counts") or {}}},
    )


def promise(
    body: dict[str, Any],
    key: str,
    after_session_gone: ObjectId | None = None,
    chat_id: str | None = None,
    files: list[str] | None = None,
) -> None:
    """Keep an event to publish (blocking: run it through `Database.run`).

    Written before the change it reports; with `after_session_gone` the relay
    holds it back until that session is deleted. Promising again (a retried
    finish) keeps the first promise. A `session.finished` promise erases what
    the streams hold of its session when it is relayed (`erase_session`), and
    of its contact's chat `chat_id`, and deletes its `files` from the object store.
    """
    kind = body["type"]
    subject = eventstream.subject(kind, body.get("platform"), body.get("session_id"))
    EventPromise.keep(eventstream.dedup_id(kind, key), subject, body, clock.now(), after_session_gone, chat_id, files)


async def erase_session(
    js: JetStreamContext, platform: str | None, session_id: str, chat_id: str | None, files: Sequence[str] = ()
) -> None:
    """Purge what JetStream keeps of a finished session: its events (but `session.finished`),
    the parked messages and dead letters of its contact's chat, and its files.

    The session and its messages are deleted from MongoDB by then; these copies
    hold the same names and texts. Each purge is by subject, one request each,
    whatever the streams hold. A stream that does not exist holds nothing.
    """
    filters = [
        (eventstream.EVENTS_STREAM, subject) for subject in eventstream.erased_with_session(platform, session_id)
    ]
    if messaging.chat_token(chat_id):
        filters += [
            (messaging.PARKED_STREAM, messaging.parked_subject(chat_id)),
            (messaging.DEAD_STREAM, messaging.dead_subject(messaging.INBOUND_SUBJECT, chat_id)),
            (messaging.DEAD_STREAM, messaging.dead_subject(messaging.OUTBOUND_SUBJECT, chat_id)),
        ]
    for stream, subject in filters:
        with contextlib.suppress(NotFoundError):
            await js.purge_stream(stream, subject=subject)
    await FileStore(js).delete(files)


async def relay_promised(js: JetStreamContext, db, limit: int = 500) -> int:
    """Publish the promised events whose change is done, oldest first; how many were published.

    Each is forgotten only once JetStream has it; its Nats-Msg-Id makes a
    second publish after a crash (or by another replica's relay) a no-op.
    """
    ready, dropped = await db.run(_promised, limit)
    published = []
    for doc in ready:
        failpoint("server.events.promise_before_publish")
        try:
            body = doc["body"]
            if body.get("type") == eventstream.SESSION_FINISHED and body.get("session_id"):
                # Before the event: its own subject is not among those purged, and a
                # relay that publishes again after a crash purges again, harmlessly.
                await erase_session(
                    js, body.get("platform"), body["session_id"], doc.get("chat_id"), doc.get("files") or ()
                )
            ack = await js.publish(
                doc["subject"],
                eventstream.to_bytes(doc["body"]),
                timeout=PUBLISH_TIMEOUT,
                headers={"Nats-Msg-Id": doc["key"]},
            )
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("event relay paused, NATS unavailable: %r", exc)
            break
        if not ack.duplicate:
            EVENTS_PUBLISHED.labels(type=doc["body"]["type"]).inc()
        published.append(doc["_id"])
    if published:
        failpoint("server.events.promise_after_publish_before_forget")
    if published or dropped:
        await db.run(_forget_promised, published + dropped)
    return len(published)


def _promised(limit: int) -> tuple[list[dict[str, Any]], list[ObjectId]]:
    """(promises ready to publish, promises to drop): those whose session still exists wait."""
    found = EventPromise.objects.oldest(limit)
    held = [doc["after_session_gone"] for doc in found if doc.get("after_session_gone")]
    alive = Session.objects.present(held) if held else set()
    too_old = clock.now() - dt.timedelta(seconds=HELD_PROMISE_SECONDS)
    ready: list[dict[str, Any]] = []
    dropped: list[ObjectId] = []
    for doc in found:
        if doc.get("after_session_gone") not in alive:
            ready.append(doc)
        elif clock.aware(doc["created_at"]) < too_old:
            log.info("event %s dropped: its session was never deleted", doc["key"])
            dropped.append(doc["_id"])
    return ready, dropped


def _forget_promised(ids: list[ObjectId]) -> None:
    EventPromise.objects.forget(ids)
