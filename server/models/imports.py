"""Imports: a job's running totals and the commit record of each of its batches or chunks.

Built by `ImportJob.start` and `ImportBatch.record`, checked by their fields'
own rules (server.models.stored); the queries live in each model's QuerySet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    IntField,
    ListField,
    NotUniqueError,
    ObjectIdField,
    QuerySet,
    StringField,
)

from contract import clock
from server.models.stored import Stored, save_new, stored_form


class ImportJobQuerySet(QuerySet):
    def running(self, job_id: ObjectId) -> ImportJobQuerySet:
        return self.filter(id=job_id, status="running")

    def idle_since(self, cutoff: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """Running jobs with no progress since `cutoff`; jobs from before
        `last_activity_at` existed are judged by their start."""
        query = {
            "status": "running",
            "$or": [
                {"last_activity_at": {"$lt": cutoff}},
                {"last_activity_at": None, "created_at": {"$lt": cutoff}},
            ],
        }
        return list(self.filter(__raw__=query).limit(limit).as_pymongo())

    def ended_before(self, cutoff: dt.datetime, limit: int) -> list[ObjectId]:
        """Jobs that ended before `cutoff` (their records are past retention), oldest first."""
        query = {"finished_at": {"$lt": cutoff}, "status": {"$ne": "running"}}
        return [doc["_id"] for doc in self.filter(__raw__=query).only("id").limit(limit).as_pymongo()]

    def announcement_pending(self, limit: int) -> list[dict[str, Any]]:
        return list(self.filter(announce_pending=True).limit(limit).as_pymongo())

    def find_one(self, job_id: ObjectId) -> dict[str, Any] | None:
        return self.filter(id=job_id).as_pymongo().first()

    def started_with(self, idempotency_key: str) -> dict[str, Any] | None:
        return self.filter(idempotency_key=idempotency_key).as_pymongo().first()


class ImportJob(Document):
    """One import of session records, from an upload or from the CLI's chunks.

    Kept in MongoDB so that any replica answers `GET /v1/imports/{id}`. Its
    counts and errors are running totals: each ImportBatch is added once
    (`tallied` counts them), see server.importing.jobs.
    """

    channel = StringField(required=True)  # "@name" or "-100..." id: where the summary goes
    source = StringField(default="")  # the file name the client gave
    file_format = StringField()  # json, ndjson or csv; None for the CLI's chunks
    mode = StringField(required=True, choices=("upload", "chunks"))
    status = StringField(required=True, choices=("running", "succeeded", "failed"))
    created_at = DateTimeField(required=True)
    finished_at = DateTimeField()
    # Set at each batch or chunk: the reaper fails a running job idle for too long.
    last_activity_at = DateTimeField()
    announce_pending = BooleanField()  # ended (by a client, a shutdown or the reaper), announcement not yet promised
    bytes_received = IntField(default=0)
    next_chunk = IntField(default=0)  # chunks mode: every chunk below it is stored
    counts = DictField()
    errors = ListField(DictField())
    # Batches added to counts and errors: those with seq below it. Absent on jobs
    # started before running totals, which count none.
    tallied = IntField(default=0, min_value=0)
    # Why a failed import stopped: {"reason", "message", "offset", "line", "record"}.
    failure = DictField()
    # The client's Idempotency-Key when it started the import: a retry finds this job.
    idempotency_key = StringField()

    meta = {
        "collection": "import_jobs",
        "queryset_class": ImportJobQuerySet,
        "indexes": [
            {"fields": ["status", "last_activity_at"], "name": "status_activity"},
            {"fields": ["finished_at"], "sparse": True, "name": "finished_order"},
            {"fields": ["announce_pending"], "sparse": True, "name": "announce_pending"},
            {"fields": ["idempotency_key"], "unique": True, "sparse": True, "name": "idempotency_key"},
        ],
        "auto_create_index": False,
    }

    @classmethod
    def start(
        cls,
        channel: str,
        source: str,
        mode: str,
        file_format: str | None,
        counts: dict[str, int],
        at: dt.datetime,
        started_at: dt.datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Stored:
        """A running import, started at `started_at` (default `at`) and last active `at`, validated.

        Times are kept at MongoDB's precision, so a report reads the same before
        and after the job is stored.
        """
        return stored_form(
            cls,
            id=ObjectId(),
            channel=channel,
            source=source,
            mode=mode,
            file_format=file_format,
            status="running",
            created_at=clock.stored(started_at or at),
            last_activity_at=clock.stored(at),
            bytes_received=0,
            next_chunk=0,
            counts=counts,
            errors=[],
            tallied=0,
            idempotency_key=idempotency_key,
        )

    @classmethod
    def save_new(cls, job: Stored) -> None:
        """Insert the job (NotUniqueError when its idempotency key started another)."""
        save_new(cls, job)


class ImportBatchQuerySet(QuerySet):
    def find_one(self, job_id: ObjectId, seq: int) -> dict[str, Any] | None:
        return self.filter(job_id=job_id, seq=seq).as_pymongo().first()

    def from_seq(self, job_id: ObjectId, seq: int) -> Iterable[dict[str, Any]]:
        """The seq, counts and errors of the job's batches from `seq` on, in order.

        One range of the `job_batch` index, which readers keep short (from the
        batches a job counts, or its next chunk). Not hinted: under the hint
        SecantusDB reads every entry of the job (seconds for tens of thousands
        of batches, where the range alone takes milliseconds); mongod plans the
        same index range either way.
        """
        return self.filter(job_id=job_id, seq__gte=seq).order_by("seq").only("seq", "counts", "errors").as_pymongo()


class ImportBatch(Document):
    """The commit record of one batch of an upload, or of one chunk from the CLI.

    Written after the batch's sessions and messages, and unique per job and
    sequence number: a chunk sent again finds its record and is not applied
    twice, and each is added once to the job's running totals.
    """

    job_id = ObjectIdField(required=True)
    seq = IntField(required=True, min_value=0)
    counts = DictField()
    errors = ListField(DictField())  # at most the report's limit per batch
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "import_batches",
        "queryset_class": ImportBatchQuerySet,
        "indexes": [{"fields": ["job_id", "seq"], "unique": True, "name": "job_batch"}],
        "auto_create_index": False,
    }

    @classmethod
    def record(
        cls, job_id: ObjectId, seq: int, counts: dict[str, int], errors: list[dict[str, Any]], at: dt.datetime
    ) -> Stored:
        """The commit record of batch or chunk `seq` of a job, as stored."""
        return stored_form(cls, job_id=job_id, seq=seq, counts=counts, errors=errors, created_at=at)

    @classmethod
    def save_new(cls, batch: Stored) -> bool:
        """Insert the record; False when this job's batch `seq` was recorded before."""
        try:
            save_new(cls, batch)
        except NotUniqueError:
            return False
        return True
