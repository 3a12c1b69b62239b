"""JetStream streams, subjects and the payloads that travel on them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

INBOUND_STREAM = "BALCAO_INBOUND"
INBOUND_SUBJECT = "balcao.inbound.message"
INBOUND_CONSUMER = "server-inbound"

OUTBOUND_STREAM = "BALCAO_OUTBOUND"
OUTBOUND_SUBJECT = "balcao.outbound.message"
OUTBOUND_CONSUMER = "bot-outbound"

PARKED_STREAM = "BALCAO_PARKED"
PARKED_SUBJECT = "balcao.outbound.parked"

# Messages no consumer could ever handle (undecodable, or delivered too often),
# kept with their original subject and headers for people to inspect or replay.
DEAD_STREAM = "BALCAO_DEAD"
DEAD_SUBJECT_PREFIX = "balcao.dead"

# Each process gets its replies under its own inbox prefix (nats.py's default is
# _INBOX for everyone): a NATS user allowed `_INBOX_server.>` reads the server's
# replies and nobody else's (deploy/nats/accounts.conf).
SERVER_INBOX_PREFIX = "_INBOX_server"
BOT_INBOX_PREFIX = "_INBOX_bot"

# Key-value bucket of outbound keys already delivered to Telegram, so a bot that
# crashed between sending and acknowledging does not send the message again.
DELIVERED_BUCKET = "BALCAO_DELIVERED"

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
    return json.dumps(asdict(payload), ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class InboundMessage:
    """A text a contact sent, as the bot relays it to the server."""

    platform: str
    contact_identifier: str
    chat_id: int
    message_id: int
    name: str
    text: str
    sent_at: str  # ISO-8601, UTC

    @property
    def dedup_id(self) -> str:
        """Nats-Msg-Id: the same Telegram message always maps to the same id."""
        return f"{self.platform}:{self.chat_id}:{self.message_id}"

    def to_bytes(self) -> bytes:
        return _encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> InboundMessage:
        body = _decode(data, ("platform", "contact_identifier", "chat_id", "message_id", "text"))
        try:
            return cls(
                platform=str(body["platform"]),
                contact_identifier=str(body["contact_identifier"]),
                chat_id=int(body["chat_id"]),
                message_id=int(body["message_id"]),
                name=str(body.get("name") or ""),
                text=str(body["text"]),
                sent_at=str(body.get("sent_at") or ""),
            )
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"inbound payload has a bad field: {exc}") from exc


@dataclass(frozen=True)
class OutboundMessage:
    """A text the server wants said on Telegram: a reply, a goodbye, an announcement."""

    key: str  # unique per intended delivery; Nats-Msg-Id and the bot's delivered-key
    chat_id: str  # a user id, "@channel" or "-100..." channel id
    text: str
    kind: str = "reply"
    meta: dict[str, str] = field(default_factory=dict)

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
        )
