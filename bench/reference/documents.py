"""What Balcão stores and publishes, written by hand with pymongo and nats-py alone.

The references build the same documents (same fields, same indexes), the same
stream messages and the same events as Balcão, so a ratio compares the same
durable work done two ways. Nothing here calls Balcão's code: a reference is
what a strong engineer would write for the work, not Balcão replayed.
`tests/bench/test_references.py` checks that these are what Balcão stores.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from typing import Any

from bson import ObjectId
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from pymongo import ASCENDING, IndexModel

from contract.eventstream import EVENTS_STREAM, EVENTS_SUBJECTS
from contract.messaging import (
    DELIVERED_BUCKET,
    INBOUND_STREAM,
    INBOUND_SUBJECT,
    OUTBOUND_STREAM,
    OUTBOUND_SUBJECT,
)

PLATFORM = "telegram"
REPLY = "Reply: mensagem recebida"
PREVIEW = 120
MAX_PREFIX = 16
DUPLICATE_WINDOW = 600
WORD = re.compile(r"[^\W_]+")

# `background: False` as MongoEngine declares them: an index that differs only in
# its options is refused when the server declares its own on the same collection.
SESSION_INDEXES = [
    IndexModel(
        [("platform", ASCENDING), ("contact_identifier", ASCENDING)], unique=True, name="contact", background=False
    ),
    IndexModel([("activity_key", ASCENDING)], name="activity_order", background=False),
    IndexModel([("name_keys", ASCENDING), ("activity_key", ASCENDING)], name="name_activity", background=False),
    IndexModel([("platform", ASCENDING), ("activity_key", ASCENDING)], name="platform_activity", background=False),
]
MESSAGE_INDEXES = [
    IndexModel([("key", ASCENDING)], name="message_key", background=False, unique=True),
    IndexModel(
        [("session_id", ASCENDING), ("sent_at", ASCENDING), ("_id", ASCENDING)],
        name="session_timeline",
        background=False,
    ),
]

STREAMS = [
    StreamConfig(
        name=INBOUND_STREAM,
        subjects=[INBOUND_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        discard=DiscardPolicy.NEW,
    ),
    StreamConfig(
        name=OUTBOUND_STREAM,
        subjects=[OUTBOUND_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
        discard=DiscardPolicy.NEW,
    ),
    StreamConfig(
        name=EVENTS_STREAM,
        subjects=[EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * 24 * 3600,
        duplicate_window=DUPLICATE_WINDOW,
    ),
]
DELIVERED = KeyValueConfig(bucket=DELIVERED_BUCKET, ttl=7 * 24 * 3600)


def create_indexes(database) -> None:
    database.sessions.create_indexes(SESSION_INDEXES)
    database.messages.create_indexes(MESSAGE_INDEXES)


async def declare_streams(js) -> None:
    for config in STREAMS:
        try:
            await js.add_stream(config=config)
        except Exception:  # noqa: BLE001 - declared already (by the other side of the reference)
            pass


def search_keys(name: str) -> list[str]:
    """Every prefix (up to 16 letters) of every word of the name, accents and case folded."""
    decomposed = unicodedata.normalize("NFKD", name)
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    keys: dict[str, None] = {}
    for word in WORD.findall(folded):
        for end in range(1, min(len(word), MAX_PREFIX) + 1):
            keys[word[:end]] = None
    return list(keys)


def activity_key(at: dt.datetime, session_id: ObjectId) -> str:
    """14 digits of milliseconds since 1970, then the id: newest-first pages walk one index."""
    milliseconds = (at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
    return f"{milliseconds:014d}{session_id}"


def preview(text: str) -> str:
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"


def stored_time(at: dt.datetime) -> dt.datetime:
    """What MongoDB keeps of a time: whole milliseconds."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def session_document(
    session_id: ObjectId,
    contact: str,
    name: str,
    at: dt.datetime,
    *,
    chat_id: str | None,
    created_at: dt.datetime | None = None,
    message_count: int = 0,
    preview_text: str = "",
) -> dict[str, Any]:
    document = {
        "_id": session_id,
        "platform": PLATFORM,
        "contact_identifier": contact,
        "contact_name": name,
        **({"chat_id": chat_id} if chat_id is not None else {}),
        "name_keys": search_keys(name),
        "created_at": created_at or at,
        "last_message_at": at,
        "message_count": message_count,
        "last_message_preview": preview_text,
        "activity_key": activity_key(at, session_id),
    }
    return document


def message_document(
    session_id: ObjectId, key: str, text: str, sent_at: dt.datetime, external_id: str | None
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "key": key,
        "direction": "in",
        "text": text,
        "sent_at": sent_at,
        **({"external_id": external_id} if external_id is not None else {}),
    }


def stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_subject(kind: str, session_id: str) -> str:
    return f"balcao.events.{kind}.{PLATFORM}.{session_id}"


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
