"""From the bytes of a file, as they arrive, to upserted batches and a tally of outcomes.

The memory an import takes is one network chunk, the record being parsed and
one batch of validated sessions, whatever the size of the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from contract.importformat import FileFormatError
from server.database import Database
from server.importing.parsers import ParsedRecord, SessionParser
from server.importing.records import ImportedSession, RecordError, RecordInvalid
from server.importing.upsert import upsert_sessions
from server.metrics import IMPORT_RECORDS

OUTCOMES = ("created", "updated", "unchanged", "rejected")
# The report shows this many errors; the counts cover every record.
MAX_REPORTED_ERRORS = 100
# A batch is written when it holds this many records or messages, whichever
# comes first: a few round trips per batch, and a bounded size for the bulk
# writes (and the memory) when sessions carry long histories.
BATCH_RECORDS = 500
BATCH_MESSAGES = 5000
# The parsers run on the event loop. A network chunk is 64 KiB, and one full of
# tiny JSON values is some 40,000 parser events: read in slices of this size,
# yielding between them, so one hostile upload holds the loop (and every other
# request) for milliseconds at a time, not a tenth of a second.
FEED_SLICE = 8192


@dataclass
class Tally:
    """Records read and what became of them, with the first errors found."""

    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"received": self.received, **{outcome: getattr(self, outcome) for outcome in OUTCOMES}}

    def count(self, outcome: str, records: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + records)

    def reject(self, problems: Iterable[RecordError]) -> None:
        self.rejected += 1
        for problem in problems:
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(error_entry(problem))

    def add(self, other: Tally) -> None:
        self.received += other.received
        for outcome in OUTCOMES:
            self.count(outcome, getattr(other, outcome))
        self.errors += other.errors[: MAX_REPORTED_ERRORS - len(self.errors)]

    @classmethod
    def of(cls, counts: dict[str, int], errors: list[dict[str, Any]]) -> Tally:
        return cls(**{name: int(counts.get(name, 0)) for name in ("received", *OUTCOMES)}, errors=list(errors))


def error_entry(problem: RecordError) -> dict[str, Any]:
    """One error as the report shows it: where (record, line, byte offset), which field, what."""
    return {
        "record": problem.record,
        "line": problem.line,
        "offset": problem.offset,
        "field": problem.field or None,
        "message": problem.message,
    }


class RecordFeed:
    """Feeds a parser, validates what it returns and upserts it in batches.

    A record that fails validation is counted as rejected with its errors; the
    import goes on. A FileFormatError stops the feed: the records read before it
    are written, and `failure` says where the file broke. `on_batch` is awaited
    with each written batch's tally (uploads record it as the job's progress).

    One batch is written while the next is read and validated: the database
    and the parsing overlap, batches are still written one after the other and
    in order, and at most two are held. `close` and `finish_early` return once
    everything read is written, so no batch is left half-done; `total` is final
    only then.
    """

    def __init__(
        self,
        db: Database,
        parser: SessionParser,
        on_batch: Callable[[Tally], Awaitable[None]] | None = None,
        origin: str | None = None,
    ) -> None:
        self._db = db
        self._origin = origin
        self._parser = parser
        self._on_batch = on_batch
        self._sessions: list[ImportedSession] = []
        self._messages = 0
        self._batch = Tally()
        self._writing: asyncio.Future[None] | None = None
        self.total = Tally()
        self.failure: FileFormatError | None = None

    async def feed(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), FEED_SLICE):
            if self.failure is not None:
                return
            if start:
                await asyncio.sleep(0)
            await self._take(self._read(self._parser.feed, chunk[start : start + FEED_SLICE]))

    async def close(self) -> None:
        """Read the end of the file and write what is left."""
        if self.failure is None:
            await self._take(self._read(self._parser.close))
        await self.finish_early()

    async def finish_early(self) -> None:
        """Write what was read so far, without reading on."""
        await self.flush()
        await self._written()

    def _read(self, step: Callable[..., list[ParsedRecord]], *args: bytes) -> list[ParsedRecord]:
        try:
            return step(*args)
        except FileFormatError as failure:
            self.failure = failure
            return failure.records  # complete and valid: they are imported like any other

    async def _take(self, records: list[ParsedRecord]) -> None:
        for record in records:
            self._batch.received += 1
            try:
                session = record.session()
            except RecordInvalid as invalid:
                self._batch.reject(invalid.errors)
                continue
            self._sessions.append(session)
            self._messages += len(session.messages)
            if len(self._sessions) >= BATCH_RECORDS or self._messages >= BATCH_MESSAGES:
                await self.flush()

    async def flush(self) -> None:
        """Start writing the sessions gathered so far, once the batch before is written."""
        if not self._batch.received:
            return
        sessions, batch = self._sessions, self._batch
        self._sessions, self._messages, self._batch = [], 0, Tally()
        await self._written()
        self._writing = asyncio.ensure_future(self._write(sessions, batch))
        # A failed write raises in whoever waits for it next; if the request is gone and
        # nobody does, it must not also be logged as a task exception never retrieved.
        self._writing.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def _written(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _write(self, sessions: list[ImportedSession], batch: Tally) -> None:
        if sessions:
            for outcome in await self._db.run(upsert_sessions, sessions, self._origin):
                batch.count(outcome)
        for outcome in OUTCOMES:
            if getattr(batch, outcome):
                IMPORT_RECORDS.labels(outcome=outcome).inc(getattr(batch, outcome))
        self.total.add(batch)
        if self._on_batch is not None:
            await self._on_batch(batch)
