"""Publishing the live events of what the server stored, to BALCAO_EVENTS.

Events are published after the data is stored. Message events are published
before the inbound batch is acknowledged, so a failure means redelivery and a
second try (at least once); each event's Nats-Msg-Id is derived from what it is
about, so the second try within JetStream's duplicate window stores nothing
(exactly once in the stream). Events with nothing upstream to redeliver them
(a session finished, an import finished) are retried in the background for a
while, and logged if NATS stays away that long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from bson import ObjectId
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from contract import events, jetstream
from contract.failpoints import failpoint
from contract.messaging import DUPLICATE_WINDOW_SECONDS
from server.metrics import EVENTS_PUBLISHED
from server.models import Session

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0
BACKGROUND_RETRY_SECONDS = 120.0


async def ensure_stream(js: JetStreamContext, max_age: float, max_bytes: int, *, replicas: int = 1) -> None:
    """Declare BALCAO_EVENTS: kept by age and size; the oldest events go first."""
    config = StreamConfig(
        name=events.EVENTS_STREAM,
        subjects=[events.EVENTS_SUBJECTS],
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
        log.info("stream %s exists with different settings; left as is", events.EVENTS_STREAM)
        await jetstream.ensure_replicas(js, events.EVENTS_STREAM, replicas)


async def publish(js: JetStreamContext, body: dict[str, Any], key: str) -> None:
    """Publish one event and wait for JetStream to store it (raises on failure)."""
    kind = body["type"]
    ack = await js.publish(
        events.subject(kind, body.get("platform"), body.get("session_id")),
        events.to_bytes(body),
        timeout=PUBLISH_TIMEOUT,
        headers={"Nats-Msg-Id": events.dedup_id(kind, key)},
    )
    if not ack.duplicate:
        EVENTS_PUBLISHED.labels(type=kind).inc()


def publish_soon(js: JetStreamContext, body: dict[str, Any], key: str) -> None:
    """Publish in the background, retrying while NATS is away, so a request need not wait."""

    async def keep_trying() -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BACKGROUND_RETRY_SECONDS
        while True:
            try:
                await publish(js, body, key)
                return
            except (NatsError, asyncio.TimeoutError) as exc:
                if loop.time() > give_up:
                    log.warning("event %s %s not published, NATS unavailable: %r", body["type"], key, exc)
                    return
                await asyncio.sleep(1.0)

    task = asyncio.ensure_future(keep_trying())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future] = set()


async def publish_received(js: JetStreamContext, db, stored: Sequence) -> None:
    """`session.opened` and `message.received` for an inbound batch just stored.

    `stored` holds `conversations.StoredInbound`; a message stored before may
    lack its events as it may lack its reply (JetStream's de-duplication drops
    a repeat within its window). A session counts as opened
    by this batch when it holds exactly the messages the batch brought it: the
    intake creates sessions empty, and only the batch's own messages are in it.
    """
    fresh = list(stored)
    if not fresh:
        return
    counts: dict[ObjectId, int] = {}
    for item in fresh:
        counts[item.session_id] = counts.get(item.session_id, 0) + 1
    sessions = await db.run(_message_counts, list(counts))
    opened: set[ObjectId] = {sid for sid, count in counts.items() if sessions.get(sid) == count}
    bodies: list[tuple[dict[str, Any], str]] = []
    for item in fresh:
        m = item.message
        common = {
            "platform": m.platform,
            "session_id": str(item.session_id),
            "contact": {"identifier": m.contact_identifier, "name": m.name},
        }
        if item.session_id in opened:
            opened.discard(item.session_id)  # before the session's first message
            bodies.append((events.event(events.SESSION_OPENED, **common), str(item.session_id)))
        bodies.append(
            (
                events.event(
                    events.MESSAGE_RECEIVED,
                    **common,
                    message={
                        "key": item.key,
                        "text": m.text,
                        "direction": "in",
                        "kind": "contact",
                        "sent_at": m.sent_at,
                    },
                ),
                item.key,
            )
        )
    # One connection writes publishes in call order, so the stream keeps this order.
    await asyncio.gather(*(publish(js, body, key) for body, key in bodies))
    failpoint("server.events.after_published")  # published, the inbound batch not yet acknowledged


def _message_counts(session_ids: list[ObjectId]) -> dict[ObjectId, int]:
    return Session.objects.message_counts(session_ids)


def session_finished(session: dict[str, Any]) -> dict[str, Any]:
    return events.event(
        events.SESSION_FINISHED,
        platform=session.get("platform"),
        session_id=str(session["_id"]),
        contact={"identifier": session.get("contact_identifier", ""), "name": session.get("contact_name", "")},
    )


def import_finished(job: dict[str, Any]) -> dict[str, Any]:
    return events.event(
        events.IMPORT_FINISHED,
        **{"import": {"id": str(job["_id"]), "status": job.get("status"), "counts": job.get("counts") or {}}},
    )
