"""JetStream streams, subjects and the payloads that travel on them."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

INBOUND_STREAM = "BALCAO_INBOUND"
INBOUND_SUBJECT = "balcao.inbound.message"
INBOUND_CONSUMER = "server-inbound"

OUTBOUND_STREAM = "BALCAO_OUTBOUND"
OUTBOUND_SUBJECT = "balcao.outbound.message"
OUTBOUND_CONSUMER = "bot-outbound"

# Messages Telegram refused for good, on `balcao.outbound.parked.<chat>` (see
# parked_subject), so finishing a session can purge its contact's chat.
PARKED_STREAM = "BALCAO_PARKED"
PARKED_SUBJECT = "balcao.outbound.parked"

# Messages no consumer could ever handle (undecodable, or delivered too often),
# kept with their original subject and headers for people to inspect or replay,
# on `balcao.dead.<original subject>[.<chat>]` (see dead_subject).
DEAD_STREAM = "BALCAO_DEAD"
DEAD_SUBJECT_PREFIX = "balcao.dead"

# Each process gets its replies under its own inbox prefix (nats.py's default is
# _INBOX for everyone): a NATS user allowed `_INBOX_server.>` reads the server's
# replies and nobody else's (deploy/nats/accounts.conf).
SERVER_INBOX_PREFIX = "_INBOX_server"
BOT_INBOX_PREFIX = "_INBOX_bot"

# How long parked messages and dead letters are kept (PARKED_MAX_AGE_SECONDS,
# DEAD_LETTER_MAX_AGE_SECONDS): they hold contacts' texts, and a month is long
# enough for someone to look at what failed and replay it.
PARKED_MAX_AGE_SECONDS = 30 * 24 * 3600
DEAD_LETTER_MAX_AGE_SECONDS = 30 * 24 * 3600

# A chat id as one subject token: Telegram's are digits, "-100..." or "@name".
_CHAT_TOKEN = re.compile(r"[A-Za-z0-9_@-]{1,64}")


def chat_token(chat_id: object) -> str | None:
    """`chat_id` as a subject token, or None when it cannot be one (the subject then names no chat)."""
    text = str(chat_id) if chat_id is not None else ""
    return text if _CHAT_TOKEN.fullmatch(text) else None


def parked_subject(chat_id: object) -> str:
    """Where a message to `chat_id` is parked."""
    token = chat_token(chat_id)
    return f"{PARKED_SUBJECT}.{token}" if token else PARKED_SUBJECT


def dead_subject(subject: str, chat_id: object = None) -> str:
    """Where a message of `subject` is dead-lettered, with its chat when the payload names one."""
    token = chat_token(chat_id)
    return f"{DEAD_SUBJECT_PREFIX}.{subject}.{token}" if token else f"{DEAD_SUBJECT_PREFIX}.{subject}"


# Key-value bucket of outbound keys already delivered to Telegram, so a bot that
# crashed between sending and acknowledging does not send the message again.
DELIVERED_BUCKET = "BALCAO_DELIVERED"

# Key-value bucket of groups that became supergroups: the old chat id (the key)
# and the new one (the value), kept for good, so announcements to a channel
# given by its old id reach the new one after a restart too.
MOVED_CHATS_BUCKET = "BALCAO_MOVED_CHATS"

# JetStream drops a repeated Nats-Msg-Id within this window; the server's
# idempotent storage covers anything older.
DUPLICATE_WINDOW_SECONDS = 600

# Default caps per stream (STREAM_MAX_BYTES, STREAM_MAX_AGE_SECONDS): a day-long
# outage at a few messages per second (well under 1 KiB each) stays far below
# them, a runaway does not fill the disk. Telegram itself keeps unconfirmed
# updates for about 24 h. nats-server reserves each stream's max_bytes in its
# store when the stream is created, so the caps must fit the volume together.
STREAM_MAX_BYTES = 256 * 1024 * 1024
STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600

PLATFORM_TELEGRAM = "telegram"

# What one inbound message may hold, from Telegram's own limits with room to
# spare. The server refuses anything past them (the consume loop dead-letters it
# with the reason) instead of storing it: one huge field would fail its whole
# batch's writes, and the batch would be retried for hours.
MAX_TEXT_LENGTH = 4096  # Telegram's limit for the text of one message
# An agent's reply may be longer than one Telegram message: the bot sends it as
# several (bot/parts.py). The server's REPLY_MAX_CHARACTERS (32,768 by default)
# may be raised up to this; events carry the whole text up to it too.
MAX_REPLY_LENGTH = 65536
MAX_NAME_LENGTH = 200  # Telegram: a first name and a last name of 64 characters each
# E.164 numbers have at most 15 digits and Telegram user ids fit in 52 bits (16
# digits); the margin accepts other platforms' numeric ids.
MAX_CONTACT_DIGITS = 20
MAX_TIMESTAMP_LENGTH = 40  # RFC 3339 with microseconds and an offset is 32
# Telegram's chat and message ids fit in 52 bits; anything past 64 is no id.
MAX_ID = 2**63 - 1
# What a contact's message may be. A file kind carries `file`; location and
# contact cards carry their own fields; a caption is the message's `text`.
TEXT_KIND = "text"
FILE_KINDS = ("photo", "document", "voice", "audio", "video", "video_note", "animation", "sticker")
KINDS = (TEXT_KIND, *FILE_KINDS, "location", "contact")
# The Bot API lets a bot download files of up to 20 MB (getFile); larger ones
# stay messages whose file is not kept.
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
MAX_FILE_NAME_LENGTH = 255  # what most file systems take as one name
MAX_MIME_TYPE_LENGTH = 127  # RFC 6838: type and subtype of 127 characters at most together here
MAX_REASON_LENGTH = 200
MAX_OBJECT_NAME_LENGTH = 128
MAX_PHONE_LENGTH = 32
MAX_VCARD_NAME_LENGTH = 64  # Telegram's first and last name limit
# The object store holding the files contacts sent (see docs/media.md): the bot
# puts, the server reads and deletes.
FILES_BUCKET = "BALCAO_FILES"
PLATFORM = re.compile(r"[a-z0-9_-]{1,32}", re.ASCII)
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_CONTACT_DIGITS}}}", re.ASCII)


def file_object_name(platform: str, chat_id: int, message_id: int) -> str:
    """Where the bytes of a contact's file are kept: the same message always names
    the same object, so a redelivered or re-relayed update overwrites it."""
    return f"{platform}/{chat_id}/{message_id}"


class PayloadError(ValueError):
    """A message on the wire does not match the contract."""


def _decode(data: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8 and integers past Python's
        # 4,300-digit limit; RecursionError deep nesting. All the sender's fault.
        raise PayloadError(f"payload is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(body, dict):
        raise PayloadError("payload is not a JSON object")
    missing = [name for name in required if name not in body]
    if missing:
        raise PayloadError(f"payload lacks {', '.join(missing)}")
    return body


def _encode(payload: Any) -> bytes:  # a dataclass instance
    # What `asdict` would give, without its deep copy of every field: json.dumps
    # walks the values itself and asks `_fields` only for the dataclasses among
    # them (a message's file). Every message relayed, replied and delivered is
    # encoded here, and the copy was most of the cost.
    return json.dumps(_fields(payload), ensure_ascii=False, separators=(",", ":"), default=_fields).encode()


def _fields(value: Any) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return {name: getattr(value, name) for name in _field_names(type(value))}
    raise TypeError(f"{type(value).__name__} is not part of the message contract")


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(item.name for item in fields(kind))


@dataclass(frozen=True)
class InboundFile:
    """A file a contact sent: what Telegram said of it, and whether its bytes are kept.

    `size` is the size of the bytes kept when `available`, else the size Telegram
    stated (which a hostile client may have made up); `object_name` names the bytes in
    FILES_BUCKET; `reason` says why they are not kept.
    """

    name: str
    mime_type: str
    size: int
    available: bool = True
    reason: str = ""
    object_name: str = ""

    @classmethod
    def from_json(cls, value: object) -> InboundFile:
        if not isinstance(value, dict):
            raise ValueError("must be an object")
        available = value.get("available", True)
        if not isinstance(available, bool):
            raise ValueError("available must be true or false")
        size = value.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_ID:
            raise ValueError("size must be a whole number of bytes")
        return cls(
            name=_nested(value, "name", _bounded_text(MAX_FILE_NAME_LENGTH)),
            mime_type=_nested(value, "mime_type", _bounded_text(MAX_MIME_TYPE_LENGTH)),
            size=size,
            available=available,
            reason=_nested(value, "reason", _bounded_text(MAX_REASON_LENGTH)),
            object_name=_nested(value, "object_name", _bounded_text(MAX_OBJECT_NAME_LENGTH)),
        )


@dataclass(frozen=True)
class InboundMessage:
    """A message a contact sent (text, a file with its caption, a location or a
    contact card), or an edit of one, as the bot relays it to the server."""

    platform: str
    contact_identifier: str
    chat_id: int
    message_id: int
    name: str
    text: str  # the text, or a file's caption ("" when none)
    sent_at: str  # ISO-8601, UTC
    kind: str = TEXT_KIND
    file: InboundFile | None = None
    location: dict[str, float] | None = None  # {"latitude", "longitude"}
    contact: dict[str, str] | None = None  # {"phone_number", "first_name", "last_name", "user_id"}
    # An edit: when the contact edited message `message_id`, and the update that
    # said so (Telegram's update ids grow, so a later edit has a larger one).
    edited_at: str = ""
    edit_update_id: int = 0

    @property
    def is_edit(self) -> bool:
        return bool(self.edited_at)

    @property
    def dedup_id(self) -> str:
        """Nats-Msg-Id: the same Telegram message (or edit) always maps to the same id."""
        if self.is_edit:
            return f"{self.platform}:{self.chat_id}:{self.message_id}:edit:{self.edit_update_id}"
        return f"{self.platform}:{self.chat_id}:{self.message_id}"

    def to_bytes(self) -> bytes:
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> InboundMessage:
        """The message, every field checked against its type and bound; PayloadError naming the first bad one."""
        body = _decode(data, ("platform", "contact_identifier", "chat_id", "message_id", "text"))
        return cls(
            platform=_field(body, "platform", _platform),
            contact_identifier=_field(body, "contact_identifier", _contact_identifier),
            chat_id=_field(body, "chat_id", _id),
            message_id=_field(body, "message_id", _id),
            name=_field(body, "name", _bounded_text(MAX_NAME_LENGTH), optional=True),
            text=_field(body, "text", _bounded_text(MAX_TEXT_LENGTH)),
            sent_at=_field(body, "sent_at", _bounded_text(MAX_TIMESTAMP_LENGTH), optional=True),
            kind=_field(body, "kind", _kind, optional=True) or TEXT_KIND,
            file=_field(body, "file", InboundFile.from_json, absent=None),
            location=_field(body, "location", _location, absent=None),
            contact=_field(body, "contact", _contact_card, absent=None),
            edited_at=_field(body, "edited_at", _bounded_text(MAX_TIMESTAMP_LENGTH), optional=True),
            edit_update_id=_field(body, "edit_update_id", _id, absent=0),
        )


# Telegram's limits for what a bot sends with a file: a caption of 1,024
# characters, and 50 MB uploaded through the Bot API.
MAX_CAPTION_LENGTH = 1024
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
SEND_AS = ("photo", "document")


@dataclass(frozen=True)
class OutboundFile:
    """A file an agent sends: where the server put it in FILES_BUCKET, and how it goes out
    (`photo` through sendPhoto, `document` through sendDocument)."""

    object_name: str
    name: str
    mime_type: str
    size: int
    send_as: str = "document"

    @classmethod
    def from_json(cls, value: object) -> OutboundFile:
        if not isinstance(value, dict):
            raise PayloadError("outbound file is not an object")
        send_as = str(value.get("send_as") or "document")
        if send_as not in SEND_AS:
            raise PayloadError(f"outbound file send_as must be one of {', '.join(SEND_AS)}")
        try:
            size = int(value.get("size") or 0)
        except (TypeError, ValueError):
            raise PayloadError("outbound file size is not a number") from None
        return cls(
            object_name=str(value.get("object_name") or ""),
            name=str(value.get("name") or ""),
            mime_type=str(value.get("mime_type") or ""),
            size=size,
            send_as=send_as,
        )


@dataclass(frozen=True)
class OutboundMessage:
    """What the server wants said on Telegram: a reply, a goodbye, an announcement,
    or an agent's file (`file`, with `text` as its caption)."""

    key: str  # unique per intended delivery; Nats-Msg-Id and the bot's delivered-key
    chat_id: str  # a user id, "@channel" or "-100..." channel id
    text: str
    kind: str = "reply"
    meta: dict[str, str] = field(default_factory=dict)
    file: OutboundFile | None = None

    def to_bytes(self) -> bytes:
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> OutboundMessage:
        body = _decode(data, ("key", "chat_id", "text"))
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise PayloadError("outbound meta is not an object")
        return cls(
            key=str(body["key"]),
            chat_id=str(body["chat_id"]),
            text=str(body["text"]),
            kind=str(body.get("kind") or "reply"),
            meta={str(k): str(v) for k, v in meta.items()},
            file=OutboundFile.from_json(body["file"]) if body.get("file") is not None else None,
        )


_NOTHING = object()


def _field(body: dict[str, Any], name: str, check: Any, *, optional: bool = False, absent: Any = _NOTHING) -> Any:
    value = body.get(name)
    if value is None and absent is not _NOTHING:
        return absent
    if optional and value is None:
        return ""
    try:
        return check(value)
    except ValueError as exc:
        raise PayloadError(f"inbound payload has a bad field: {name} {exc}") from None


def _platform(value: object) -> str:
    if not isinstance(value, str) or not PLATFORM.fullmatch(value):
        raise ValueError("must be 1 to 32 of a-z, 0-9, '_' and '-'")
    return value


def _contact_identifier(value: object) -> str:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise ValueError(f"must be a string of 1 to {MAX_CONTACT_DIGITS} ASCII digits")
    return value


def _id(value: object) -> int:
    # JSON numbers are ASCII digits by grammar; a string, a float or a bool is no id.
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_ID <= value <= MAX_ID:
        raise ValueError("must be a whole number within 64 bits")
    return value


def _bounded_text(limit: int) -> Any:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long, more than {limit}")
        return value

    return check


def _nested(body: dict[str, Any], name: str, check: Any) -> Any:
    value = body.get(name)
    if value is None:
        return ""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


def _kind(value: object) -> str:
    if value not in KINDS:
        raise ValueError(f"must be one of {', '.join(KINDS)}")
    return str(value)


def _location(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    found = {}
    for name, bound in (("latitude", 90.0), ("longitude", 180.0)):
        number = value.get(name)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not -bound <= number <= bound:
            raise ValueError(f"{name} must be a number from -{bound:g} to {bound:g}")
        found[name] = float(number)
    return found


def _contact_card(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    return {
        "phone_number": _nested(value, "phone_number", _bounded_text(MAX_PHONE_LENGTH)),
        "first_name": _nested(value, "first_name", _bounded_text(MAX_VCARD_NAME_LENGTH)),
        "last_name": _nested(value, "last_name", _bounded_text(MAX_VCARD_NAME_LENGTH)),
        "user_id": _nested(value, "user_id", _bounded_digits),
    }


def _bounded_digits(value: object) -> str:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise ValueError(f"must be a string of 1 to {MAX_CONTACT_DIGITS} ASCII digits")
    return value
