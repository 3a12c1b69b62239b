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
| `type` | every event | `session.opened`, `message.received`, `message.edited`, `message.sent`, |
| | | `session.finished`, `import.finished`, `contact.blocked`, `channel.moved` |
| `at` | every event | when it happened, RFC 3339 UTC |
| `platform` | session and message events | `telegram` |
| `session_id` | session and message events | the session |
| `contact` | session and message events | `{"identifier", "name"}` (name may be empty on `message.sent`) |
| `message` | message events | `{"key", "text", "direction": "in" or "out", "kind": "contact", "reply" or "agent"}` |
| | contacts' messages | also `content_kind` (contract.messaging.KINDS) and for a file `file`: |
| | | `{"name", "mime_type", "size", "available"[, "reason"]}` |
| | `message.edited` | also the message's `id` and `edited_at` |
| `delivery` | `message.sent` | `sent` (Telegram accepted it) or `parked` (Telegram refused it for good) |
| `import` | `import.finished`, `channel.moved` | `{"id", "status", "counts"}`; `{"id"}` on `channel.moved` |
| `reason` | `contact.blocked` | Telegram's refusal, such as `Forbidden: bot was blocked by the user` |
| `channel`, `moved_to` | `channel.moved` | the chat id a message was sent to, and the supergroup's id now |

`contact.blocked` and `channel.moved` come from the bot, like `message.sent`:
only it sees Telegram's answer. The server consumes them too
(`server/deliveryreports.py`): it marks the session's contact blocked, and notes
the move in the import's report.
"""

from __future__ import annotations

import json
import re
from typing import Any

from contract import clock
from contract.messaging import MAX_NAME_LENGTH, MAX_REPLY_LENGTH, MAX_TIMESTAMP_LENGTH, PLATFORM

EVENTS_STREAM = "BALCAO_EVENTS"
EVENTS_SUBJECT_ROOT = "balcao.events"
EVENTS_SUBJECTS = f"{EVENTS_SUBJECT_ROOT}.>"

SESSION_OPENED = "session.opened"
MESSAGE_RECEIVED = "message.received"
MESSAGE_EDITED = "message.edited"
MESSAGE_SENT = "message.sent"
SESSION_FINISHED = "session.finished"
IMPORT_FINISHED = "import.finished"
CONTACT_BLOCKED = "contact.blocked"
CHANNEL_MOVED = "channel.moved"
KINDS = (
    SESSION_OPENED,
    MESSAGE_RECEIVED,
    MESSAGE_EDITED,
    MESSAGE_SENT,
    SESSION_FINISHED,
    IMPORT_FINISHED,
    CONTACT_BLOCKED,
    CHANNEL_MOVED,
)
# What the bot publishes; each is rebuilt from its checked fields before a client sees it.
BOT_KINDS = (MESSAGE_SENT, CONTACT_BLOCKED, CHANNEL_MOVED)

DELIVERY_SENT = "sent"
DELIVERY_PARKED = "parked"

NONE_TOKEN = "-"

REPLY_KINDS = ("reply", "agent")
DELIVERIES = (DELIVERY_SENT, DELIVERY_PARKED)
# An outbound key: `agent:<message id>`, `reply:<platform>:<chat>:<message>`.
MAX_KEY_LENGTH = 256
MAX_REASON_LENGTH = 200
# A chat id as Telegram gives it: a user or group id, "-100…" or "@name".
_CHAT_ID = re.compile(r"-?[0-9]{1,20}|@[A-Za-z0-9_]{1,64}", re.ASCII)
_SESSION_ID = re.compile(r"[0-9a-f]{24}", re.ASCII)


def message_content(content_kind: str, file: dict[str, Any] | None) -> dict[str, Any]:
    """What a message event says of its content: its kind and, for a file, what is
    known of the file (never where it is stored: the API serves the bytes)."""
    found: dict[str, Any] = {"content_kind": content_kind}
    if file:
        found["file"] = file_summary(file)
    return found


def file_summary(file: dict[str, Any]) -> dict[str, Any]:
    """A stored file as the API and events show it."""
    summary = {
        "name": file.get("name", ""),
        "mime_type": file.get("mime_type", ""),
        "size": file.get("size", 0),
        "available": bool(file.get("available", True)),
    }
    if not summary["available"]:
        summary["reason"] = file.get("reason") or "not kept"
    return summary


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
    return (
        f"{EVENTS_SUBJECT_ROOT}.{SESSION_OPENED}.{where}",
        f"{EVENTS_SUBJECT_ROOT}.message.*.{where}",
        f"{EVENTS_SUBJECT_ROOT}.{CONTACT_BLOCKED}.{where}",
    )


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
    *,
    platform: str,
    session_id: str,
    contact_identifier: str,
    key: str,
    text: str,
    kind: str,
    delivery: str,
    at: str | None = None,
) -> dict[str, Any]:
    """The event the bot publishes once a reply was delivered or parked."""
    return {
        **event(
            MESSAGE_SENT,
            platform=platform,
            session_id=session_id,
            contact={"identifier": contact_identifier, "name": ""},
            message={"key": key, "text": text, "direction": "out", "kind": kind},
            delivery=delivery,
        ),
        **({"at": at} if at is not None else {}),
    }


def contact_blocked(
    *, platform: str, session_id: str, contact_identifier: str, key: str, reason: str, at: str | None = None
) -> dict[str, Any]:
    """The event the bot publishes when Telegram answers that the contact blocked the bot."""
    return {
        **event(
            CONTACT_BLOCKED,
            platform=platform,
            session_id=session_id,
            contact={"identifier": contact_identifier, "name": ""},
            message={"key": key},
            reason=reason[:MAX_REASON_LENGTH],
        ),
        **({"at": at} if at is not None else {}),
    }


def channel_moved(
    *, platform: str, channel: str, moved_to: str, import_id: str | None, at: str | None = None
) -> dict[str, Any]:
    """The event the bot publishes when a group became a supergroup and a message followed it there."""
    return {
        **event(
            CHANNEL_MOVED,
            platform=platform,
            channel=channel,
            moved_to=moved_to,
            **({"import": {"id": import_id}} if import_id else {}),
        ),
        **({"at": at} if at is not None else {}),
    }


def relayable(stored_on: str, data: bytes) -> bytes | None:
    """A stored event as clients may be sent it, or None when it is not one.

    The stream is written by two publishers, and the bot is trusted less than
    the server (its NATS user may publish `message.sent` only): what a client
    gets must not be whatever bytes were stored there. So an event is parsed,
    its type must be the one its subject names, a `message.sent` is rebuilt
    from its known fields, each checked (its platform and session those of its
    subject too), and the event is serialised again, so no raw line break
    (which would end an SSE frame early and start a forged one) or other field
    survives.
    """
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    kind = body.get("type")
    if kind not in KINDS or ".".join(stored_on.split(".")[2:4]) != kind:
        return None
    if kind in BOT_KINDS:
        rebuilt = bot_event_checked(body)
        if rebuilt is None or stored_on != subject(kind, rebuilt.get("platform"), rebuilt.get("session_id")):
            return None
        body = rebuilt
    return to_bytes(body)


def bot_event_checked(body: dict[str, Any]) -> dict[str, Any] | None:
    """An event the bot publishes, rebuilt from its known fields when each holds what the bot
    publishes; None otherwise."""
    kind = body.get("type")
    if kind == MESSAGE_SENT:
        return _message_sent_checked(body)
    if kind == CONTACT_BLOCKED:
        return _contact_blocked_checked(body)
    if kind == CHANNEL_MOVED:
        return _channel_moved_checked(body)
    return None


def _contact_blocked_checked(body: dict[str, Any]) -> dict[str, Any] | None:
    contact, message = body.get("contact"), body.get("message")
    if not isinstance(contact, dict) or not isinstance(message, dict):
        return None
    read = {
        "platform": body.get("platform"),
        "session_id": body.get("session_id"),
        "contact_identifier": contact.get("identifier"),
        "key": message.get("key"),
        "reason": body.get("reason"),
        "at": body.get("at"),
    }
    fields = {name: value for name, value in read.items() if isinstance(value, str)}
    if (
        len(fields) != len(read)
        or not PLATFORM.fullmatch(fields["platform"])
        or not _SESSION_ID.fullmatch(fields["session_id"])
        or not _CHAT_ID.fullmatch(fields["contact_identifier"])
        or not 1 <= len(fields["key"]) <= MAX_KEY_LENGTH
        or len(fields["reason"]) > MAX_REASON_LENGTH
        or not 1 <= len(fields["at"]) <= MAX_TIMESTAMP_LENGTH
    ):
        return None
    return contact_blocked(**fields)


def _channel_moved_checked(body: dict[str, Any]) -> dict[str, Any] | None:
    details = body.get("import")
    import_id = details.get("id") if isinstance(details, dict) else None
    read = {
        "platform": body.get("platform"),
        "channel": body.get("channel"),
        "moved_to": body.get("moved_to"),
        "at": body.get("at"),
    }
    fields = {name: value for name, value in read.items() if isinstance(value, str)}
    if (
        len(fields) != len(read)
        or not PLATFORM.fullmatch(fields["platform"])
        or not _CHAT_ID.fullmatch(fields["channel"])
        or not _CHAT_ID.fullmatch(fields["moved_to"])
        or (details is not None and not (isinstance(import_id, str) and _SESSION_ID.fullmatch(import_id)))
        or not 1 <= len(fields["at"]) <= MAX_TIMESTAMP_LENGTH
    ):
        return None
    return channel_moved(**fields, import_id=import_id)


def _message_sent_checked(body: dict[str, Any]) -> dict[str, Any] | None:
    """`message.sent` from its known fields, when each holds what the bot publishes."""
    contact, message = body.get("contact"), body.get("message")
    if not isinstance(contact, dict) or not isinstance(message, dict):
        return None
    read = {
        "platform": body.get("platform"),
        "session_id": body.get("session_id"),
        "contact_identifier": contact.get("identifier"),
        "key": message.get("key"),
        "text": message.get("text"),
        "kind": message.get("kind"),
        "delivery": body.get("delivery"),
        "at": body.get("at"),
    }
    fields = {name: value for name, value in read.items() if isinstance(value, str)}
    if len(fields) != len(read):
        return None
    if (
        not PLATFORM.fullmatch(fields["platform"])
        or not _SESSION_ID.fullmatch(fields["session_id"])
        # A user id, or the chat as the outbound message named it (`@name`, `-100…`).
        or not 1 <= len(fields["contact_identifier"]) <= MAX_NAME_LENGTH
        or not 1 <= len(fields["key"]) <= MAX_KEY_LENGTH
        or len(fields["text"]) > MAX_REPLY_LENGTH  # an agent's reply, sent in parts when long
        or fields["kind"] not in REPLY_KINDS
        or fields["delivery"] not in DELIVERIES
        or message.get("direction") != "out"
        or not 1 <= len(fields["at"]) <= MAX_TIMESTAMP_LENGTH
    ):
        return None
    return message_sent(**fields)


def to_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def with_id(data: bytes, event_id: int) -> bytes:
    """The stored event with its id as first field, without parsing it again per client."""
    return b'{"id":%d,' % event_id + data[1:] if data[:1] == b"{" else data
