"""An import job's running totals: each batch added once, by its writer or by whoever comes next."""

from __future__ import annotations

import pytest

from runtime import failpoints
from runtime.failpoints import FailPointError
from server.importing import jobs
from server.importing.feed import Tally
from server.importing.refusals import Conflicting, Refused, TooLarge, TryLater

ERROR = {"record": 2, "line": 3, "offset": None, "field": "name", "message": "expected a string, got number"}


@pytest.fixture
def job(database, mongo) -> dict:
    created, _ = jobs.create_job("@suporte", "sessions.csv", "chunks")
    yield created
    failpoints.configure({})


def stored_job(mongo, job: dict) -> dict:
    return mongo.import_jobs.find_one({"_id": job["_id"]})


def test_each_batch_is_added_to_the_jobs_totals_once(job, mongo) -> None:
    assert jobs.save_batch(job["_id"], 0, Tally(received=3, created=2, rejected=1, errors=[ERROR]))
    assert jobs.save_batch(job["_id"], 1, Tally(received=2, updated=2))
    assert not jobs.save_batch(job["_id"], 1, Tally(received=2, updated=2))  # sent again

    stored = stored_job(mongo, job)
    assert stored["counts"] == {"received": 5, "created": 2, "updated": 2, "unchanged": 0, "rejected": 1}
    assert (stored["errors"], stored["tallied"]) == ([ERROR], 2)


def test_the_totals_are_read_from_the_job_not_summed_from_its_batches(job, mongo) -> None:
    for seq in range(3):
        jobs.save_batch(job["_id"], seq, Tally(received=4, created=4))
    mongo.import_batches.delete_many({"job_id": job["_id"]})  # a report reads none of them

    assert jobs.job_totals(stored_job(mongo, job)).counts()["created"] == 12


def test_a_batch_recorded_by_a_writer_that_died_before_adding_it_counts_once(job, mongo) -> None:
    jobs.save_batch(job["_id"], 0, Tally(received=1, created=1))
    failpoints.configure({"BALCAO_FAILPOINTS": "import.batch.after_record=raise"})
    with pytest.raises(FailPointError):
        jobs.save_batch(job["_id"], 1, Tally(received=5, created=5))
    failpoints.configure({})

    # A report meanwhile counts the record its writer left behind.
    assert jobs.job_totals(stored_job(mongo, job)).counts()["created"] == 6
    assert stored_job(mongo, job)["tallied"] == 1
    # The chunk sent again is a repeat; the next one adds both, once.
    assert not jobs.save_batch(job["_id"], 1, Tally(received=5, unchanged=5))
    assert jobs.save_batch(job["_id"], 2, Tally(received=2, created=2))
    stored = stored_job(mongo, job)
    assert (stored["counts"]["created"], stored["counts"]["received"], stored["tallied"]) == (8, 8, 3)


def test_a_batch_of_an_import_that_ended_is_neither_recorded_nor_counted(job, mongo) -> None:
    jobs.save_batch(job["_id"], 0, Tally(received=1, created=1))
    assert jobs.reap_job(stored_job(mongo, job), idle_seconds=60) is not None  # the reaper took it

    with pytest.raises(jobs.ImportEnded):
        jobs.save_batch(job["_id"], 1, Tally(received=5, created=5))

    assert mongo.import_batches.count_documents({"job_id": job["_id"]}) == 1
    stored = stored_job(mongo, job)
    assert (stored["status"], stored["counts"]["created"]) == ("failed", 1)


def test_a_job_started_before_running_totals_counts_its_batches_once(job, mongo) -> None:
    for seq in range(2):
        mongo.import_batches.insert_one(
            {"job_id": job["_id"], "seq": seq, "counts": {"received": 3, "created": 3}, "errors": []}
        )
    mongo.import_jobs.update_one({"_id": job["_id"]}, {"$unset": {"tallied": ""}})

    assert jobs.job_totals(stored_job(mongo, job)).counts()["created"] == 6
    assert jobs.save_batch(job["_id"], 2, Tally(received=1, created=1))
    assert stored_job(mongo, job)["counts"]["created"] == 7


# --- admitting a chunk -------------------------------------------------------------

LIMITS = jobs.ChunkLimits(chunks=3, bytes=1000)


def admit(mongo, job: dict, seq: int, declared: int | None = None) -> jobs.ChunkAdmission:
    return jobs.admit_chunk(stored_job(mongo, job), seq, declared, LIMITS)


def refusal(call) -> Refused:
    with pytest.raises(Refused) as raised:
        call()
    return raised.value


def test_chunks_are_admitted_in_order_and_one_applied_before_is_admitted_to_be_answered_again(job, mongo) -> None:
    first = admit(mongo, job, 0)
    assert (first.seq, first.stored, first.bytes_left) == (0, None, 1000)
    jobs.save_batch(job["_id"], 0, Tally(received=2, created=2))
    jobs.advance_chunks(job["_id"], 1, 400)

    again = admit(mongo, job, 0)
    assert again.stored is not None and again.stored["counts"]["created"] == 2
    assert admit(mongo, job, 1).bytes_left == 600
    skipped = refusal(lambda: admit(mongo, job, 2))
    assert (type(skipped), skipped.kind, skipped.detail) == (
        Conflicting,
        "chunk-out-of-order",
        "chunk 1 comes next: chunks are applied in order",
    )


def test_a_chunk_recorded_by_a_writer_that_died_before_advancing_the_job_lets_the_next_one_in(job, mongo) -> None:
    jobs.save_batch(job["_id"], 0, Tally(received=1, created=1))  # recorded; `next_chunk` not advanced

    assert admit(mongo, job, 1).stored is None
    assert stored_job(mongo, job)["next_chunk"] == 1


def test_a_chunk_past_the_imports_limits_is_too_large(job, mongo) -> None:
    for seq in range(3):
        jobs.save_batch(job["_id"], seq, Tally(received=1, created=1))
    jobs.advance_chunks(job["_id"], 3, 900)

    assert refusal(lambda: admit(mongo, job, 3)).kind == "too-many-chunks"
    mongo.import_jobs.update_one({"_id": job["_id"]}, {"$set": {"next_chunk": 2}})
    mongo.import_batches.delete_many({"seq": 2})
    declared = refusal(lambda: admit(mongo, job, 2, declared=101))
    assert (type(declared), declared.kind) == (TooLarge, "payload-too-large")
    streamed = admit(mongo, job, 2, declared=None)
    streamed.check_received(100)
    assert refusal(lambda: streamed.check_received(101)).kind == "payload-too-large"


def test_only_a_running_chunked_import_takes_chunks(job, mongo) -> None:
    upload, _ = jobs.create_job("@suporte", "sessions.json", "upload")
    assert refusal(lambda: admit(mongo, upload, 0)).kind == "not-chunked"
    jobs.finish_job(job["_id"], Tally(), None)
    ended = refusal(lambda: admit(mongo, job, 0))
    assert (type(ended), ended.kind) == (Conflicting, "import-ended")


def test_a_replica_reads_at_most_its_limit_of_imports_at_once() -> None:
    slots = jobs.ImportSlots(2)
    first, second, third = object(), object(), object()
    slots.take(first)
    slots.take(first)  # the same request again takes no second slot
    slots.take(second)

    busy = refusal(lambda: slots.take(third))
    assert (type(busy), busy.kind, busy.retry_after) == (TryLater, "too-many-imports", 2)
    slots.release(first)
    slots.take(third)
    assert slots.holders == {second, third}
