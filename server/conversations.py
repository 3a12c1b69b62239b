"""Storing contacts' messages in their open session, idempotently and in batches: the intake's side of
the session writer (server/sessionwriter.py).

These functions block on MongoDB; callers run them through `Database.run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from contract import clock
from contract.messaging import InboundMessage
from server import sessionwriter
from server.models.messages import Message
from server.sessionwriter import ContactMessages, NewMessage


def inbound_key(message: InboundMessage) -> str:
    return f"{message.platform}:{message.contact_identifier}:tg{message.message_id}"


@dataclass(frozen=True)
class StoredInbound:
    message: InboundMessage
    key: str
    session_id: ObjectId
    inserted: bool = False  # stored by this call, not found stored already


@dataclass(frozen=True)
class StoredBatch:
    """An inbound batch as stored: each message once, in arrival order, and the sessions the batch opened."""

    messages: list[StoredInbound]
    # Opened by this batch, or by an earlier try of it that died before its events
    # were published: their `session.opened` is owed (its Nats-Msg-Id keeps it single).
    opened: frozenset[ObjectId]


def store_inbound(batch: Sequence[InboundMessage]) -> StoredBatch:
    """Store each message once in its contact's open session.

    Every message is answered, whether stored now or before: one stored before
    may be a redelivery whose first attempt died between storing and replying,
    and JetStream's delivery count cannot tell (it starts again at one when
    nats-server restarts before persisting it). The reply's Nats-Msg-Id and the
    bot's delivered-key store keep the contact from getting it twice. A message
    stored, then finished with its session before this delivery, is answered
    and not stored again: the agent saw it, and storing it would open a session
    nobody asked for.
    """
    now = clock.now()
    unique: dict[str, InboundMessage] = {}
    for message in batch:
        unique.setdefault(inbound_key(message), message)
    contacts: dict[tuple[str, str], ContactMessages] = {}
    for key, message in unique.items():
        contact = contacts.setdefault(
            (message.platform, message.contact_identifier),
            ContactMessages(message.platform, message.contact_identifier, message.name, at=now),
        )
        contact.name, contact.chat_id = message.name, str(message.chat_id)  # the latest profile wins
        contact.messages[key] = NewMessage(
            message.text, clock.parse(message.sent_at, now), str(message.message_id), inbound_content(message)
        )
    filed = sessionwriter.write(list(contacts.values()), failpoints="server.intake", skip_finished=True)
    stored = []
    opened = set()
    for key, message in unique.items():
        outcome = filed[(message.platform, message.contact_identifier)]
        stored.append(StoredInbound(message, key, outcome.session_of(key), key in outcome.inserted))
        session = outcome.session
        # A session that holds exactly messages of this batch, stored before, was
        # opened by an earlier try of it.
        if outcome.opened or (session and 0 < len(outcome.present) == session.get("message_count")):
            opened.add(outcome.session_id)
    return StoredBatch(stored, frozenset(opened))


def inbound_content(message: InboundMessage) -> dict[str, Any]:
    """What a contact's message holds besides its text, as Message stores it (nothing for a text)."""
    if message.kind == "text":
        return {}
    content = {
        "kind": message.kind,
        "file": dataclasses.asdict(message.file) if message.file else None,
        "location": message.location,
        "contact": message.contact,
    }
    return {name: value for name, value in content.items() if value is not None}


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
