"""Import jobs: stored in MongoDB, reported over the API, announced once when they end.

Each batch (of an upload) or chunk (from the CLI) is recorded by an
ImportBatch document written after its sessions and messages, then added to
the job's running totals (`counts`, `errors`, and `tallied`, the batches
added). The two writes are apart, so a reader adds the few records a writer
that died in between left out (`job_totals`, `tally_batches`): whatever
replica serves the report, and whenever a replica dies, the counts describe
what is stored, and a report reads one job, not every batch of it. When the
job ends the totals are final and the summary is promised to the channel
through the outbox, keyed by the job, so it is announced exactly once.

The module-level functions block on MongoDB (run them through `Database.run`);
`Imports` is what the handlers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from mongoengine import NotUniqueError
from pymongo.errors import PyMongoError

from contract import clock
from contract.messaging import OutboundMessage
from runtime.failpoints import failpoint
from server import events
from server.database import Database
from server.importing.feed import MAX_REPORTED_ERRORS, Tally
from server.models.imports import ImportBatch, ImportJob
from server.models.stored import Contended, IdempotencyKeyReused
from server.outbound import Outbound

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
MAX_SOURCE_LENGTH = 200
# The file's name as the channel's announcement shows it: a client chooses it.
MAX_ANNOUNCED_SOURCE = 80
# Jobs the reaper fails in one round; the next round takes the rest.
REAP_BATCH = 100

# Why an import ended early, as the announcement says it (pt-BR, like the bot).
FAILURE_REASONS = {
    "invalid-file": "o arquivo está truncado ou inválido",
    "interrupted": "o envio do arquivo foi interrompido",
    "too-large": "o arquivo passou do tamanho máximo aceito",
    "shutdown": "o servidor foi reiniciado durante a importação",
    "abandoned": "a importação ficou parada por tempo demais",
}


def create_job(
    channel: str,
    source: str,
    mode: str,
    file_format: str | None = None,
    started_at: dt.datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """The new running job, and True; or, for an idempotency key seen before, the job it started, and False.

    A client that lost the answer (the server died after storing the job) asks
    again with the same key and gets the same job, so no job is left running
    that nobody feeds, to be failed and announced as abandoned later. The same
    key with another channel or source raises IdempotencyKeyReused.
    """
    source = clean_source(source)
    job = ImportJob.start(
        channel, source, mode, file_format, Tally().counts(), clock.now(), started_at, idempotency_key
    )
    try:
        ImportJob.save_new(job)
    except NotUniqueError:
        if idempotency_key is None:
            raise
        earlier = ImportJob.objects.started_with(idempotency_key)
        if earlier is None or (earlier["channel"], earlier["source"], earlier["mode"]) != (channel, source, mode):
            raise IdempotencyKeyReused(idempotency_key) from None
        return {"file_format": None, **earlier}, False
    return {"file_format": None, **job}, True


def clean_source(source: str) -> str:
    """The client's file name without control or format characters (line breaks, bidi overrides), bounded.

    It is shown in the report and in the channel's announcement, where a
    crafted name could otherwise forge lines or reorder the text.
    """
    kept = "".join(
        " " if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
        for char in source[: MAX_SOURCE_LENGTH * 4]
    )
    return " ".join(kept.split())[:MAX_SOURCE_LENGTH]


def touch_interval(idle_seconds: float) -> float:
    """How often a request streaming into a job touches it: a few times per idle period, at most once a minute."""
    return min(60.0, max(0.25, idle_seconds / 4))


class ImportEnded(Exception):
    """The import ended (completed, or failed by the reaper or a shutdown) before this batch was added to it."""


def touch_job(job_id: ObjectId, received: int = 0) -> bool:
    """The job made progress (data arrived, a batch): the reaper leaves it alone for another idle period.

    False when the job no longer runs.
    """
    touched = ImportJob.objects.running(job_id).update_one(
        set__last_activity_at=clock.stored_now(), inc__bytes_received=received
    )
    return touched == 1


def reap_job(job: dict[str, Any], idle_seconds: float) -> dict[str, Any] | None:
    """Fail a job that made no progress for `idle_seconds`; the failed job, or None if another took it.

    The claim is one conditional update (still running, still as idle as read),
    so of several replicas reaping at once exactly one ends each job, and a job
    that made progress meanwhile is left running. `announce_pending` stays set
    until its announcement is promised, so a crash in between is made up for.
    """
    tally = job_totals(job)
    idle_since = job.get("last_activity_at") or job["created_at"]
    minutes = max(1, round(idle_seconds / 60))
    failure = {
        "reason": "abandoned",
        "offset": job.get("bytes_received") or None,
        "line": None,
        "message": f"no data arrived for {minutes} minute(s): the import was abandoned "
        "(the client went away or the server that took it stopped)",
    }
    fields = {
        "status": FAILED,
        "finished_at": clock.stored_now(),
        "counts": tally.counts(),
        "errors": tally.errors[:MAX_REPORTED_ERRORS],
        "failure": failure,
        "announce_pending": True,
    }
    claimed = ImportJob.objects.running(job["_id"]).filter(last_activity_at=idle_since).update_one(**_setting(fields))
    return {**job, **fields} if claimed == 1 else None


def idle_jobs(idle_seconds: float) -> list[dict[str, Any]]:
    """Running jobs idle for longer than `idle_seconds`, and ended ones whose announcement is pending."""
    cutoff = clock.stored(clock.now() - dt.timedelta(seconds=idle_seconds))
    return ImportJob.objects.idle_since(cutoff, REAP_BATCH) + ImportJob.objects.announcement_pending(REAP_BATCH)


def purge_ended(retention_seconds: float, limit: int = REAP_BATCH) -> int:
    """Delete the jobs that ended more than `retention_seconds` ago, their batch records first; how many.

    A report keeps the first errors, which quote values of the records they
    refused (contacts' identifiers among them): kept IMPORT_RETENTION_SECONDS,
    then gone. A job goes last, so a crash in between leaves it to the next round.
    """
    cutoff = clock.stored(clock.now() - dt.timedelta(seconds=retention_seconds))
    ended = ImportJob.objects.ended_before(cutoff, limit)
    if ended:
        ImportBatch.objects(job_id__in=ended).delete()
        ImportJob.objects(id__in=ended).delete()
    return len(ended)


def announced(job_id: ObjectId) -> None:
    ImportJob.objects(id=job_id).update_one(unset__announce_pending=True)


def find_job(job_id: ObjectId) -> dict[str, Any] | None:
    return ImportJob.objects.find_one(job_id)


def save_batch(job_id: ObjectId, seq: int, tally: Tally) -> bool:
    """Record a written batch and add it to the job's totals; False when this sequence number was recorded before.

    Raises ImportEnded, leaving no record, when the job no longer runs: a batch
    that comes after the reaper failed its import (or a completion ended it)
    must not change the report that was announced.
    """
    if not ImportBatch.save_new(ImportBatch.record(job_id, seq, tally.counts(), tally.errors, clock.now())):
        return False
    failpoint("import.batch.after_record")  # recorded, not yet in the job's totals
    if not tally_batches(job_id):
        ImportBatch.objects(job_id=job_id, seq=seq).delete()
        raise ImportEnded(f"import {job_id} ended before batch {seq} was added to it")
    return True


# Adding batches to a job races only another writer catching up on the same
# job (a retried chunk, a completion); after this many tries it is a 503.
TALLY_TRIES = 5


def tally_batches(job_id: ObjectId) -> bool:
    """Add the job's recorded batches not yet in its totals, in order; False when the job no longer runs.

    Each step is one update conditioned on the job still running and on its
    `tallied` count being what was read, so a batch is added once, whoever
    adds it: its writer, or a reader after that writer died between its record
    and this. The last activity moves with it, so the reaper leaves the job be.
    """
    for _ in range(TALLY_TRIES):
        job = ImportJob.objects.running(job_id).only("counts", "errors", "tallied").as_pymongo().first()
        if job is None:
            return False
        tallied = job.get("tallied") or 0
        total, added = _with_pending(job, tallied)
        if added == tallied:
            return True
        # Jobs started before running totals have no `tallied` (and counts of zero).
        was = {"$in": [0, None]} if tallied == 0 else tallied
        fields = {"counts": total.counts(), "errors": total.errors, "tallied": added}
        applied = (
            ImportJob.objects.running(job_id)
            .filter(__raw__={"tallied": was})
            .update_one(set__last_activity_at=clock.stored_now(), **_setting(fields))
        )
        if applied:
            return True
    raise Contended(f"the totals of import {job_id} kept changing while batches were added")


def job_totals(job: dict[str, Any]) -> Tally:
    """A job's counts and first errors: its running totals and any batch recorded but not yet added."""
    return _with_pending(job, job.get("tallied") or 0)[0]


def _with_pending(job: dict[str, Any], tallied: int) -> tuple[Tally, int]:
    """The job's totals with its batches from `tallied` on, and the sequence number after the last one added."""
    total = Tally.of(job.get("counts") or {}, job.get("errors") or [])
    for batch in ImportBatch.objects.from_seq(job["_id"], tallied):
        if batch["seq"] != tallied:
            break  # a batch whose record is not written yet: the ones after it wait for it
        total.add(Tally.of(batch["counts"], batch.get("errors") or []))
        tallied += 1
    return total, tallied


def find_batch(job_id: ObjectId, seq: int) -> dict[str, Any] | None:
    return ImportBatch.objects.find_one(job_id, seq)


def advance_chunks(job_id: ObjectId, next_chunk: int, received: int = 0) -> None:
    ImportJob.objects.running(job_id).update_one(
        max__next_chunk=next_chunk, set__last_activity_at=clock.stored_now(), inc__bytes_received=received
    )


def repair_next_chunk(job_id: ObjectId) -> int:
    """Advance the job past every chunk recorded; the chunk that comes next.

    A chunk's batch record and the job's `next_chunk` are two writes: a crash
    between them leaves the record without the advance. The records are the
    truth, so the job is brought up to them.
    """
    job = ImportJob.objects(id=job_id).only("next_chunk").as_pymongo().first()
    if job is None:
        return 0
    # Only the records from the job's next chunk on: the ones before it are accounted for.
    recorded = [batch["seq"] for batch in ImportBatch.objects.from_seq(job_id, job.get("next_chunk", 0))]
    if not recorded:
        return job.get("next_chunk", 0)
    advance_chunks(job_id, recorded[-1] + 1)
    job = ImportJob.objects(id=job_id).only("next_chunk").as_pymongo().first()
    return job.get("next_chunk", 0) if job else 0


def finish_job(
    job_id: ObjectId, tally: Tally, failure: dict[str, Any] | None, bytes_received: int | None = None
) -> tuple[dict[str, Any], bool]:
    """End the job with these totals; the job, and True if this call ended it.

    `announce_pending` is set with the end, in the same update, and cleared once
    the announcement is promised: a server that dies in between leaves it for
    the reaper of any replica to make up.
    """
    fields: dict[str, Any] = {
        "status": FAILED if failure else SUCCEEDED,
        "finished_at": clock.stored_now(),
        "counts": tally.counts(),
        "errors": tally.errors[:MAX_REPORTED_ERRORS],
        "announce_pending": True,
    }
    if failure:
        fields["failure"] = failure
    if bytes_received is not None:
        fields["bytes_received"] = bytes_received
    job = find_job(job_id)
    if job is None:
        raise LookupError(f"import {job_id} does not exist")
    if job["status"] != RUNNING:
        return job, False  # ended already (a repeated completion): leave it as it was
    failpoint("import.finish.after_reading_job")
    # Only while it still runs: the reaper of another replica may have failed it since it was read.
    if ImportJob.objects.running(job_id).update_one(**_setting(fields)) == 0:
        return find_job(job_id) or job, False
    return {**job, **fields}, True


def _setting(fields: dict[str, Any]) -> dict[str, Any]:
    """MongoEngine's update keywords that `$set` these fields."""
    return {f"set__{name}": value for name, value in fields.items()}


def report(job: dict[str, Any], tally: Tally | None = None) -> dict[str, Any]:
    """The API resource of a job; `tally` gives a running job's counts so far."""
    if tally is None:
        tally = Tally.of(job.get("counts") or {}, job.get("errors") or [])
    started, finished = job["created_at"], job.get("finished_at")
    body: dict[str, Any] = {
        "id": str(job["_id"]),
        "status": job["status"],
        "channel": job["channel"],
        "source": job.get("source") or None,
        "format": job.get("file_format"),
        "mode": job["mode"],
        "counts": tally.counts(),
        "errors": tally.errors,
        # Counts cover every record; the list stops at the first errors.
        "errors_truncated": tally.rejected > 0 and len(tally.errors) >= MAX_REPORTED_ERRORS,
        "failure": _failure_report(job.get("failure"), tally),
        "started_at": _timestamp(started),
        "finished_at": _timestamp(finished) if finished else None,
        "duration_seconds": round(((finished or clock.now()) - clock.aware(started)).total_seconds(), 3),
        "bytes_received": job.get("bytes_received", 0),
    }
    if job["mode"] == "chunks":
        body["next_chunk"] = job.get("next_chunk", 0)
    return body


def _failure_report(failure: dict[str, Any] | None, tally: Tally) -> dict[str, Any] | None:
    if not failure:
        return None
    kept = tally.received - tally.rejected
    return {
        **failure,
        "imported_before_failure": kept,
        "note": f"the {kept} valid records read before this point were imported; nothing after it was read",
    }


def announcement(job: dict[str, Any]) -> str:
    """The channel's summary of an ended import, in Portuguese like everything the bot says."""
    counts = job.get("counts") or {}
    imported = sum(counts.get(outcome, 0) for outcome in ("created", "updated", "unchanged"))
    summary = (
        f"{plural(imported, 'sessão importada', 'sessões importadas')} "
        f"({plural(counts.get('created', 0), 'nova', 'novas')}, "
        f"{plural(counts.get('updated', 0), 'atualizada', 'atualizadas')}, "
        f"{number(counts.get('unchanged', 0))} sem alteração), "
        f"{plural(counts.get('rejected', 0), 'rejeitada', 'rejeitadas')}"
    )
    shown = clean_source(job.get("source") or "")
    if len(shown) > MAX_ANNOUNCED_SOURCE:
        shown = shown[: MAX_ANNOUNCED_SOURCE - 1] + "…"
    source = f" ({shown})" if shown else ""
    if job["status"] == SUCCEEDED:
        return f"Importação concluída{source}: {summary}."
    failure = job.get("failure") or {}
    reason = FAILURE_REASONS.get(failure.get("reason", ""), "ocorreu um erro")
    if failure.get("line") is not None:
        reason += f" (linha {number(failure['line'])})"
    elif failure.get("offset") is not None:
        reason += f" (byte {number(failure['offset'])})"
    return f"Importação interrompida{source}: {reason}. Antes disso: {summary}."


def number(value: int) -> str:
    """1234567 -> "1.234.567", as written in Brazil."""
    return f"{value:,}".replace(",", ".")


def plural(count: int, one: str, many: str) -> str:
    return f"{number(count)} {one if count == 1 else many}"


_timestamp = clock.rfc3339


class Imports:
    """The imports this replica is running, and how any import ends.

    Uploads in progress register a stop callback: at shutdown `drain` calls them,
    and each finishes the batch in hand, ends its job as failed and answers
    its client, so no batch is left half-written and every job gets its report
    and announcement.
    """

    def __init__(self, db: Database, outbound: Outbound) -> None:
        self.db = db
        self._outbound = outbound
        self._stops: dict[object, Callable[[], Awaitable[None]]] = {}
        self._endings: set[asyncio.Task] = set()

    async def finish(
        self, job_id: ObjectId, tally: Tally, failure: dict[str, Any] | None = None, bytes_received: int | None = None
    ) -> dict[str, Any]:
        """End the job, store its totals and announce it (once, however often called)."""
        job, ended_now = await self.db.run(finish_job, job_id, tally, failure, bytes_received)
        if ended_now:
            log.info("import %s %s: %s", job_id, job["status"], tally.counts())
        failpoint("import.finish.after_job_ended")  # ended, its announcement not yet promised
        # Promised even when the job had ended before: a crash may have come
        # between the two; the key makes a repeat a no-op.
        await self._announce(job)
        try:
            await self.db.run(announced, job_id)
        except PyMongoError as exc:  # promised already: the reaper promises it again, under the same keys
            log.warning("import %s announced, its flag not cleared: %s", job_id, exc)
        return job

    async def _announce(self, job: dict[str, Any]) -> None:
        """Promise the import's summary to its channel and its `import.finished` event, once per import."""
        await self._outbound.promise_event(events.import_finished(job), str(job["_id"]))
        await self._outbound.promise(
            OutboundMessage(
                key=f"import:{job['_id']}",
                chat_id=job["channel"],
                text=announcement(job),
                kind="announcement",
                meta={"import_id": str(job["_id"])},
            )
        )

    async def reap(self, idle_seconds: float, retention_seconds: float | None = None) -> int:
        """Fail the imports idle for longer than `idle_seconds`, announcing each; how many this call ended.

        With `retention_seconds`, imports that ended longer ago than that are deleted too.
        """
        if retention_seconds is not None:
            await self.db.run(purge_ended, retention_seconds)
        ended = 0
        for job in await self.db.run(idle_jobs, idle_seconds):
            if job["status"] == RUNNING:
                reaped = await self.db.run(reap_job, job, idle_seconds)
                if reaped is None:
                    continue  # another replica took it, or it moved meanwhile
                job = reaped
                ended += 1
                log.warning("import %s failed: no progress for %.0f s", job["_id"], idle_seconds)
            await self._announce(job)
            await self.db.run(announced, job["_id"])
        return ended

    async def reap_forever(
        self, idle_seconds: float, stopping: asyncio.Event, retention_seconds: float | None = None
    ) -> None:
        """Reap every so often until `stopping` is set; a failed round is logged and tried again."""
        interval = min(60.0, max(0.5, idle_seconds / 4))
        while not stopping.is_set():
            try:
                await self.reap(idle_seconds, retention_seconds)
            except Exception:  # the database may be down; the next round tries again
                log.exception("reaping idle imports failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)

    def register(self, owner: object, stop: Callable[[], Awaitable[None]]) -> None:
        self._stops[owner] = stop

    def unregister(self, owner: object) -> None:
        self._stops.pop(owner, None)

    def in_background(self, work: Awaitable[None]) -> None:
        """Run an ending nobody waits for (a client gone mid-upload); `drain` waits for it."""
        task = asyncio.ensure_future(work)
        self._endings.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self._endings.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ending an interrupted import failed", exc_info=task.exception())

    async def drain(self) -> None:
        stops = list(self._stops.values())
        if stops:
            log.info("stopping %d imports in progress", len(stops))
        await asyncio.gather(*(stop() for stop in stops), return_exceptions=True)
        if self._endings:
            await asyncio.gather(*list(self._endings), return_exceptions=True)
