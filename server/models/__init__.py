"""MongoEngine documents: sessions (open conversations), their messages, the outbox, imports.

One module per family: `sessions`, `messages` (with the keys of finished
messages), `outbox` (promised messages and events), `imports` (jobs and their
batches), and `stored`, how every one of them is built and written.

Each document kind is built by one classmethod of its own (`Session.open_for`,
`Message.inbound`, `Message.outbound`, `FinishedMessage.tombstone`,
`OutboxEntry.for_message`, `ImportJob.start`, `ImportBatch.record`,
`EventPromise.keep`), which
fills the derived fields (activity key, name keys) and checks the document
against its fields' own rules (defaults, `required`, `choices`, types, bounds)
before anyone writes it; the queries live in each model's QuerySet.

Most reads hand back the stored documents as dicts (`as_pymongo()`): callers
and the API read them as such, and the listings skip building Documents they
would only turn back into JSON.
"""

from __future__ import annotations

from server.models.imports import ImportBatch, ImportJob
from server.models.messages import FinishedMessage, Message
from server.models.outbox import EventPromise, OutboxEntry
from server.models.sessions import Session

DOCUMENTS = (Session, Message, FinishedMessage, OutboxEntry, ImportJob, ImportBatch, EventPromise)


def ensure_indexes() -> None:
    for document in DOCUMENTS:
        document.ensure_indexes()
