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

Whether a chunk of the CLI may be applied now (`admit_chunk`) is decided
here too, as is how many uploads and chunks a replica reads at once
(`ImportSlots`): each refusal is one of server.importing.refusals.

The functions here block on MongoDB (run them through `Database.run`);
`Imports` (server.importing.running) is what the handlers use, and
server.importing.reports says what a job tells.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from mongoengine import NotUniqueError

from contract import clock
from runtime.failpoints import failpoint
from server.importing.feed import MAX_REPORTED_ERRORS, Tally
from server.importing.refusals import Conflicting, TooLarge, TryLater
from server.models.imports import ImportBatch, ImportJob
from server.models.stored import Contended, IdempotencyKeyReused

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
MAX_SOURCE_LENGTH = 200
# Jobs the reaper fails in one round; the next round takes the rest.
REAP_BATCH = 100


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


class ImportSlots:
    """The uploads and chunks this replica reads at once, at most `limit`.

    Each holds a record being parsed and up to two batches: bounding how many run
    bounds the memory imports take, whatever clients send. One over the limit is
    refused at once (TryLater): the CLI waits and sends it again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders: set[object] = set()

    def take(self, holder: object) -> None:
        if holder in self.holders:
            return
        if len(self.holders) >= self.limit:
            raise TryLater(
                "too-many-imports",
                f"this replica is reading {self.limit} imports already, the most it reads at once; "
                "send this one again shortly",
                2,
            )
        self.holders.add(holder)

    def release(self, holder: object) -> None:
        self.holders.discard(holder)


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """What the chunks of one import may take; the server's settings give the values."""

    chunks: int
    bytes: int  # all its chunks together


@dataclass(frozen=True)
class ChunkAdmission:
    """Chunk `seq` of a running chunked import, admitted: to be read and applied, or
    (`stored`, its batch record) applied before, to be answered again unread."""

    job: dict[str, Any]
    seq: int
    stored: dict[str, Any] | None
    bytes_left: int
    limits: ChunkLimits

    def check_received(self, received: int) -> None:
        """TooLarge once the chunk's bytes so far pass what the import may still take."""
        if received > self.bytes_left:
            raise _too_many_bytes(self.limits)

    def ended_meanwhile(self) -> Conflicting:
        return Conflicting(
            "import-ended",
            f"this import ended while chunk {self.seq} arrived (see its report); start a new one for the rest",
        )


def admit_chunk(job: dict[str, Any], seq: int, declared_bytes: int | None, limits: ChunkLimits) -> ChunkAdmission:
    """May chunk `seq` be applied to `job` now? Its admission, or the refusal that says why not.

    Only a running chunked import takes chunks, each after the one before it
    was applied and within the import's limits; a chunk applied before is
    admitted again, to be answered as it was the first time.
    """
    if job["mode"] != "chunks":
        raise Conflicting("not-chunked", "this import is an upload; only imports started with a JSON body take chunks")
    if job["status"] != RUNNING:
        raise Conflicting("import-ended", f"this import has ended ({job['status']}); start a new one")
    stored = find_batch(job["_id"], seq)
    if stored is not None:
        return ChunkAdmission(job, seq, stored, 0, limits)
    next_chunk = job.get("next_chunk", 0)
    if seq > next_chunk:
        next_chunk = repair_next_chunk(job["_id"])
    if seq > next_chunk:
        raise Conflicting("chunk-out-of-order", f"chunk {next_chunk} comes next: chunks are applied in order")
    if seq >= limits.chunks:
        raise TooLarge(
            "too-many-chunks",
            f"an import takes at most {limits.chunks} chunks; complete this one and start another for the rest",
        )
    admission = ChunkAdmission(job, seq, None, limits.bytes - job.get("bytes_received", 0), limits)
    if declared_bytes is not None:
        admission.check_received(declared_bytes)
    return admission


def _too_many_bytes(limits: ChunkLimits) -> TooLarge:
    return TooLarge(
        "payload-too-large",
        f"the chunks of one import may hold at most {limits.bytes} bytes in all; complete this "
        "import and start another for the rest",
    )
