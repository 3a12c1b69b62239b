"""Upserting validated session records in batches: the imports' side of the session writer.

A record merges into the open session of its contact (platform + contact
identifier), whether an earlier import or the bot opened it, and its messages
are stored once each under their natural key (`records.message_key`), so
importing a file again changes nothing. The session writer
(server/sessionwriter.py) stores them; here the records of a batch become one
`ContactMessages` per contact, and each record is judged by what the writer did.

These functions block on MongoDB; callers run them through `Database.run`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from contract import clock
from contract.messaging import FILE_KINDS, TEXT_KIND
from server import sessionwriter
from server.importing.records import ImportedMessage, ImportedSession, message_key
from server.models.sessions import Contact
from server.sessionwriter import ContactMessages, Filed, NewMessage

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


@dataclass
class _ContactRecords:
    """One contact's records in a batch, in file order."""

    indexes: list[int] = field(default_factory=list)  # positions of its records in the batch
    keys: list[list[str]] = field(default_factory=list)  # each record's message keys
    names: list[str] = field(default_factory=list)
    source_ids: list[str | None] = field(default_factory=list)


def upsert_sessions(batch: Sequence[ImportedSession], origin: str | None = None) -> list[str]:
    """Store a batch of validated records; return each one's outcome, in order.

    A record is `created` when it opened its contact's session, `updated` when
    it added messages or changed the session's name or source id, `unchanged`
    otherwise (a later record of the same contact in the batch is judged
    against what the earlier ones already brought).

    `origin` names the batch (an import's chunk) in the sessions it opens, so
    the same batch sent again after a crash still reports the sessions its
    first try opened as `created`, not as `updated` or `unchanged`.

    Outcomes say where the records are once the batch is written: a record
    whose session a finish took meanwhile is judged in the contact's next
    session, less the messages the finish took with it.
    """
    contacts, records = _grouped(batch, origin, clock.now())
    filed = sessionwriter.write(contacts, failpoints="import", read_stored_first=True)
    outcomes = [UNCHANGED] * len(batch)
    for contact in contacts:
        _judge_records(records[contact.contact], filed[contact.contact], origin, outcomes)
    return outcomes


def _grouped(
    batch: Sequence[ImportedSession], origin: str | None, now: dt.datetime
) -> tuple[list[ContactMessages], dict[Contact, _ContactRecords]]:
    """The batch as the writer takes it, one contact at a time, and each contact's records."""
    contacts: dict[Contact, ContactMessages] = {}
    records: dict[Contact, _ContactRecords] = {}
    for index, session in enumerate(batch):
        contact = (session.platform, session.contact_identifier)
        merged = contacts.setdefault(contact, ContactMessages(*contact, session.name, origin=origin))
        merged.name = session.name  # the latest name in the file wins
        merged.source_id = merged.source_id or session.source_id
        keys = []
        for message in session.messages:
            key = message_key(session.platform, session.contact_identifier, message)
            merged.messages.setdefault(
                key, NewMessage(message.content, message.date, message.id, imported_content(message))
            )
            keys.append(key)
        group = records.setdefault(contact, _ContactRecords())
        group.indexes.append(index)
        group.keys.append(keys)
        group.names.append(session.name)
        group.source_ids.append(session.source_id)
    for merged in contacts.values():
        if not merged.messages:
            # Without messages, the session's own time: its file `_id` is an ObjectId,
            # which holds when the session was created; failing that, the import's.
            merged.at = ObjectId(merged.source_id).generation_time if merged.source_id else now
    return list(contacts.values()), records


def _judge_records(group: _ContactRecords, filed: Filed, origin: str | None, outcomes: list[str]) -> None:
    """Set each record's outcome against what the session held before that record.

    A session this batch opened (or its first try did, after a crash) is
    `created` by the contact's first record. Otherwise a record adds what the
    session did not hold; a name from a file renames only a session nobody
    wrote to the bot from (one without a chat), and a source id is added once.
    """
    session = filed.session
    opened = filed.opened or (session is not None and origin is not None and session.get("import_origin") == origin)
    known = set(filed.present) | set(filed.elsewhere)
    added = set(filed.added)
    name = None
    if not opened and session is not None and not session.get("chat_id"):
        name = session.get("contact_name")
    adds_source = not opened and session is not None and not session.get("source_id")
    first_source = next((i for i, source_id in enumerate(group.source_ids) if source_id), None)
    for position, (index, keys, record_name) in enumerate(zip(group.indexes, group.keys, group.names)):
        # What a finish took with a session before this batch wrote it: not in the record's session now.
        keys = [key for key in keys if key not in filed.finished or key in added]
        adds = any(key not in known for key in keys)
        renames = name is not None and record_name != name
        if opened and position == 0:
            outcomes[index] = CREATED
        elif adds or renames or (adds_source and position == first_source):
            outcomes[index] = UPDATED
        known.update(keys)
        if name is not None or (opened and position == 0):
            name = record_name


# An import carries what a message was, never a file's bytes.
IMPORTED_FILE = {"name": "", "mime_type": "", "size": 0, "available": False, "reason": "imported without its bytes"}


def imported_content(message: ImportedMessage) -> dict[str, Any]:
    """What an imported message holds besides its text: its kind, and for a file kind a file not kept."""
    if message.kind == TEXT_KIND:
        return {}
    content: dict[str, Any] = {"kind": message.kind}
    if message.kind in FILE_KINDS:
        content["file"] = dict(IMPORTED_FILE)
    return content
