"""The live event stream: its JetStream stream, subjects and event payloads.

Dependency-free like the rest of `contract`, because two processes publish
events: the server (sessions opened and finished, messages received, imports
finished) and the bot (`message.sent`, once Telegram accepted or refused a
reply: only the bot knows that).

An event travels as a JSON object on the subject
`balcao.events.<kind>.<platform>.<session>` (`kind` is two tokens, such as
`message.received`; `-` stands for "none" in platform and session), so NATS
itself filters a connection's events by type, platform or session. The event
id clients see is the stream sequence of BALCAO_EVENTS: every replica reads the
same stream, so every replica gives an event the same id, and ids only grow.

Event fields (the `id` is added when the event is served):

| field | in | meaning |
|---|---|---|
| `id` | every event | stream sequence, strictly increasing |
| `type` | every event | `session.opened`, `message.received`, `message.sent`, `session.finished`, `import.finished` |
| `at` | every event | when it happened, RFC 3339 UTC |
| `platform` | session and message events | `telegram` |
| `session_id` | session and message events | the session |
| `contact` | session and message events | `{"identifier", "name"}` (name may be empty on `message.sent`) |
| `message` | message events | `{"key", "text", "direction": "in" or "out", "kind": "reply" or "agent"}` |
| `delivery` | `message.sent` | `sent` (Telegram accepted it) or `parked` (Telegram refused it for good) |
| `import` | `import.finished` | `{"id", "status", "counts"}` |
"""

from __future__ import annotations

import json
from typing import Any

from contract import clock

EVENTS_STREAM = "BALCAO_EVENTS"
EVENTS_SUBJECT_ROOT = "balcao.events"
EVENTS_SUBJECTS = f"{EVENTS_SUBJECT_ROOT}.>"

SESSION_OPENED = "session.opened"
MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
SESSION_FINISHED = "session.finished"
IMPORT_FINISHED = "import.finished"
KINDS = (SESSION_OPENED, MESSAGE_RECEIVED, MESSAGE_SENT, SESSION_FINISHED, IMPORT_FINISHED)

DELIVERY_SENT = "sent"
DELIVERY_PARKED = "parked"

NONE_TOKEN = "-"


def subject(kind: str, platform: str | None = None, session_id: str | None = None) -> str:
    """The subject an event is published on."""
    return f"{EVENTS_SUBJECT_ROOT}.{kind}.{_token(platform)}.{_token(session_id)}"


def filter_subject(kind: str | None = None, platform: str | None = None, session_id: str | None = None) -> str:
    """The subject filter that selects events of a kind, platform and session (None: any)."""
    kind_part = kind if kind else "*.*"
    return f"{EVENTS_SUBJECT_ROOT}.{kind_part}.{platform or '*'}.{session_id or '*'}"


def erased_with_session(platform: str | None, session_id: str) -> tuple[str, ...]:
    """The subject filters of a session's events that finishing it erases: all but `session.finished`."""
    where = f"{_token(platform)}.{_token(session_id)}"
    return (f"{EVENTS_SUBJECT_ROOT}.{SESSION_OPENED}.{where}", f"{EVENTS_SUBJECT_ROOT}.message.*.{where}")


def _token(value: str | None) -> str:
    # Subject tokens cannot be empty or hold '.', '*', '>' or spaces.
    if not value:
        return NONE_TOKEN
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in value)


def dedup_id(kind: str, key: str) -> str:
    """Nats-Msg-Id: publishing the same event again within the window stores nothing."""
    return f"event:{kind}:{key}"


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "at": clock.stamp(), **fields}


def message_sent(
    *, platform: str, session_id: str, contact_identifier: str, key: str, text: str, kind: str, delivery: str
) -> dict[str, Any]:
    """The event the bot publishes once a reply was delivered or parked."""
    return event(
        MESSAGE_SENT,
        platform=platform,
        session_id=session_id,
        contact={"identifier": contact_identifier, "name": ""},
        message={"key": key, "text": text, "direction": "out", "kind": kind},
        delivery=delivery,
    )


def to_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def with_id(data: bytes, event_id: int) -> bytes:
    """The stored event with its id as first field, without parsing it again per client."""
    return b'{"id":%d,' % event_id + data[1:] if data[:1] == b"{" else data
