"""The imports this replica is running, and how any import ends: finished, reaped, drained.

`Imports` is what the handlers use; it runs the blocking job functions of
server.importing.jobs through `Database.run`, and promises each ended job's
announcement and `import.finished` event through the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from contract.messaging import OutboundMessage
from runtime.failpoints import failpoint
from server import eventpublishing
from server.database import Database
from server.importing import jobs
from server.importing.feed import Tally
from server.importing.reports import announcement
from server.outbound import Outbound

log = logging.getLogger(__name__)


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
        job, ended_now = await self.db.run(jobs.finish_job, job_id, tally, failure, bytes_received)
        if ended_now:
            log.info("import %s %s: %s", job_id, job["status"], tally.counts())
        failpoint("import.finish.after_job_ended")  # ended, its announcement not yet promised
        # Promised even when the job had ended before: a crash may have come
        # between the two; the key makes a repeat a no-op.
        await self._announce(job)
        try:
            await self.db.run(jobs.announced, job_id)
        except PyMongoError as exc:  # promised already: the reaper promises it again, under the same keys
            log.warning("import %s announced, its flag not cleared: %s", job_id, exc)
        return job

    async def _announce(self, job: dict[str, Any]) -> None:
        """Promise the import's summary to its channel and its `import.finished` event, once per import."""
        await self._outbound.promise_event(eventpublishing.import_finished(job), str(job["_id"]))
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
            await self.db.run(jobs.purge_ended, retention_seconds)
        ended = 0
        for job in await self.db.run(jobs.idle_jobs, idle_seconds):
            if job["status"] == jobs.RUNNING:
                reaped = await self.db.run(jobs.reap_job, job, idle_seconds)
                if reaped is None:
                    continue  # another replica took it, or it moved meanwhile
                job = reaped
                ended += 1
                log.warning("import %s failed: no progress for %.0f s", job["_id"], idle_seconds)
            await self._announce(job)
            await self.db.run(jobs.announced, job["_id"])
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
