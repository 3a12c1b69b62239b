"""The reaper: imports left running fail after an idle period, each announced once, whatever replica reaps."""

from __future__ import annotations

import asyncio
import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo.errors import AutoReconnect

from contract import clock
from runtime import failpoints
from server.importing import jobs, reports
from server.importing.feed import Tally
from server.importing.running import Imports
from server.outbound import Outbound

IDLE = 60.0


@pytest.fixture
def imports(database, mongo) -> Imports:
    # Promising an announcement only writes the outbox; nothing is published here.
    return Imports(database, Outbound(None, database))


def running_job(mongo, idle_for: float, mode: str = "chunks", source: str = "sessions.csv") -> dict:
    job, _ = jobs.create_job("@suporte", source, mode)
    past = clock.stored(clock.now() - dt.timedelta(seconds=idle_for))
    mongo.import_jobs.update_one({"_id": job["_id"]}, {"$set": {"last_activity_at": past, "created_at": past}})
    return mongo.import_jobs.find_one({"_id": job["_id"]})


def announcements(mongo, job) -> list[dict]:
    return list(mongo.outbox.find({"key": f"import:{job['_id']}"}))


@pytest.mark.asyncio
async def test_an_idle_import_fails_with_its_counts_and_is_announced(imports, mongo) -> None:
    job = running_job(mongo, idle_for=IDLE * 2, source="big.csv")
    jobs.save_batch(job["_id"], 0, Tally(received=3, created=2, rejected=1))
    mongo.import_jobs.update_one({"_id": job["_id"]}, {"$set": {"last_activity_at": job["last_activity_at"]}})
    fresh = running_job(mongo, idle_for=IDLE / 2)

    assert await imports.reap(IDLE) == 1

    ended = mongo.import_jobs.find_one({"_id": job["_id"]})
    assert ended["status"] == "failed"
    assert ended["failure"]["reason"] == "abandoned"
    assert ended["counts"]["created"] == 2 and ended["counts"]["rejected"] == 1
    assert "announce_pending" not in ended
    (entry,) = announcements(mongo, job)
    assert entry["text"].startswith("Importação interrompida (big.csv): a importação ficou parada")
    assert mongo.import_jobs.find_one({"_id": fresh["_id"]})["status"] == "running"
    assert announcements(mongo, fresh) == []


@pytest.mark.asyncio
async def test_several_replicas_reaping_at_once_end_each_import_once(database, imports, mongo) -> None:
    idle = [running_job(mongo, idle_for=IDLE * 2) for _ in range(5)]
    replicas = [Imports(database, Outbound(None, database)) for _ in range(4)]

    ended = await asyncio.gather(*(replica.reap(IDLE) for replica in replicas))

    assert sum(ended) == 5
    for job in idle:
        assert mongo.import_jobs.find_one({"_id": job["_id"]})["status"] == "failed"
        assert len(announcements(mongo, job)) == 1


def test_the_claim_is_atomic_between_threads(mongo, database) -> None:
    job = running_job(mongo, idle_for=IDLE * 2)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: jobs.reap_job(job, IDLE), range(8)))

    assert sum(claim is not None for claim in claims) == 1


def test_an_import_that_moved_after_it_was_read_is_not_reaped(mongo, database) -> None:
    job = running_job(mongo, idle_for=IDLE * 2)
    jobs.advance_chunks(job["_id"], 1, 100)  # a chunk arrived between the read and the claim

    assert jobs.reap_job(job, IDLE) is None
    assert mongo.import_jobs.find_one({"_id": job["_id"]})["status"] == "running"


@pytest.mark.asyncio
async def test_an_announcement_lost_between_claim_and_promise_is_made_up_for(imports, mongo) -> None:
    job = running_job(mongo, idle_for=IDLE * 2)
    assert jobs.reap_job(job, IDLE) is not None  # the replica died here, before promising
    assert announcements(mongo, job) == []

    assert await imports.reap(IDLE) == 0

    assert len(announcements(mongo, job)) == 1
    assert "announce_pending" not in mongo.import_jobs.find_one({"_id": job["_id"]})


@pytest.mark.asyncio
async def test_reap_forever_stops_when_asked(imports, mongo) -> None:
    job = running_job(mongo, idle_for=5)
    stopping = asyncio.Event()
    task = asyncio.create_task(imports.reap_forever(1, stopping))
    for _ in range(200):
        if mongo.import_jobs.find_one({"_id": job["_id"]})["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert mongo.import_jobs.find_one({"_id": job["_id"]})["status"] == "failed"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("sessões.csv", "sessões.csv"),
        ("a\nImportação concluída: 0 sessões.csv", "a Importação concluída: 0 sessões.csv"),
        ("evil\u202egnp.csv", "evil gnp.csv"),
        ("x\x00\x1b[31m.csv", "x [31m.csv"),
        ("n" * 5000, "n" * jobs.MAX_SOURCE_LENGTH),
    ],
)
def test_the_file_name_is_stored_without_control_characters(raw: str, shown: str, mongo, database) -> None:
    job, _ = jobs.create_job("@suporte", raw, "upload")
    assert job["source"] == shown


def test_the_announcement_bounds_the_file_name() -> None:
    job = {"status": "succeeded", "source": "a" * 200, "counts": {}}
    text = reports.announcement(job)
    assert "a" * reports.MAX_ANNOUNCED_SOURCE not in text and "a" * (reports.MAX_ANNOUNCED_SOURCE - 1) + "…" in text


@pytest.mark.asyncio
async def test_an_ended_import_whose_flag_was_not_cleared_is_announced_once(imports, mongo, monkeypatch) -> None:
    """The flag set with the end outlives a failed clearing; the reaper's promise of it again is a no-op."""
    job, _ = jobs.create_job("@suporte", "fim.csv", "chunks")

    def database_gone(job_id) -> None:
        raise AutoReconnect("connection closed")

    monkeypatch.setattr(jobs, "announced", database_gone)
    ended = await imports.finish(job["_id"], Tally(received=1, created=1), None)
    assert ended["status"] == "succeeded"  # answered: the announcement was promised
    assert mongo.import_jobs.find_one({"_id": job["_id"]})["announce_pending"] is True
    monkeypatch.undo()

    assert await imports.reap(IDLE) == 0  # nothing failed, one announcement made up for

    assert "announce_pending" not in mongo.import_jobs.find_one({"_id": job["_id"]})
    (entry,) = announcements(mongo, job)
    assert entry["text"].startswith("Importação concluída (fim.csv): 1 sessão importada")


@pytest.mark.asyncio
async def test_a_completion_racing_the_reaper_leaves_the_end_it_announced(imports, mongo, tmp_path) -> None:
    """The reaper fails the job between the completion's read and its write: the completion
    must not overwrite the failure the channel is told about with a success."""
    job = running_job(mongo, idle_for=IDLE * 2)
    log, point = tmp_path / "failpoints", "import.finish.after_reading_job"
    failpoints.configure({"BALCAO_FAILPOINTS": f"{point}=pause", "BALCAO_FAILPOINTS_LOG": str(log)})
    try:
        completing = asyncio.ensure_future(imports.finish(job["_id"], Tally(received=2, created=2), None))
        while not (log.exists() and f"{point} pause" in log.read_text()):
            await asyncio.sleep(0.02)
        assert await imports.reap(IDLE) == 1  # another replica's reaper, inside the window
        failpoints.resume(str(log), point)
        ended = await asyncio.wait_for(completing, 30)
    finally:
        failpoints.configure({})

    stored = mongo.import_jobs.find_one({"_id": job["_id"]})
    assert stored["status"] == ended["status"] == "failed"
    assert stored["failure"]["reason"] == "abandoned"
    (entry,) = announcements(mongo, job)
    assert entry["text"].startswith("Importação interrompida")


@pytest.mark.asyncio
async def test_ended_imports_past_their_retention_are_deleted_with_their_batches(imports, mongo) -> None:
    day = 24 * 3600
    old, recent, running = (running_job(mongo, idle_for=0) for _ in range(3))
    for job in (old, recent, running):
        jobs.save_batch(job["_id"], 0, Tally(received=1, rejected=1))
    for job, ended_ago in ((old, 2 * day), (recent, day / 2)):
        jobs.finish_job(job["_id"], Tally(received=1, rejected=1), None)
        ended = clock.stored(clock.now() - dt.timedelta(seconds=ended_ago))
        mongo.import_jobs.update_one({"_id": job["_id"]}, {"$set": {"finished_at": ended}})

    await imports.reap(IDLE, retention_seconds=day)

    assert {doc["_id"] for doc in mongo.import_jobs.find()} == {recent["_id"], running["_id"]}
    assert {doc["job_id"] for doc in mongo.import_batches.find()} == {recent["_id"], running["_id"]}
