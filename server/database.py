"""The MongoDB connection and the thread pools that keep its calls off the event loop.

The calls are split in lanes, each with threads of its own, so that one kind
of work cannot take every thread from another: API requests (up to
QUERY_MAX_TIME_MS each) and the imports' bulk writes run on `DB_THREADS`
threads; the intake has its own (a contact's message is stored and answered
however many slow searches run); the readiness ping has one, so `/ready`
reports MongoDB, not a queue of requests in front of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit

import mongoengine
import pymongo
from pymongo.errors import PyMongoError

from server.models import ensure_indexes
from server.models.sessions import Session

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# A readiness probe must answer within a load balancer's timeout, well inside
# the 5 s server selection that other calls may wait out.
PING_TIMEOUT = 2.0


# What the server writes (messages, sessions, the outbox, import batches) must
# survive a failover: acknowledged only once a majority of the replica set holds
# it, since a write only the old primary had is rolled back when another member
# is elected. Retryable writes let the driver retry once across an election; the
# reads that decide what to write (is this message stored? this chunk applied?)
# must see the latest write, so they go to the primary. A URI that sets any of
# these keeps its own choice.
REPLICA_SET_SAFETY = {"w": "majority", "retryWrites": True, "readPreference": "primary"}


def replica_set_safety(uri: str) -> dict[str, object]:
    """REPLICA_SET_SAFETY less the options the URI sets itself (names are case-insensitive)."""
    given = {key.lower() for key in parse_qs(urlsplit(uri).query)}
    return {key: value for key, value in REPLICA_SET_SAFETY.items() if key.lower() not in given}


# The intake handles one batch at a time (a bulk write of up to INTAKE_BATCH
# messages, then one read of their sessions' counts); a second thread covers a
# look-up that outlives its batch.
INTAKE_THREADS = 2


class Lane:
    """Threads of their own for one kind of database work: `await lane.run(fn, ...)`."""

    def __init__(self, name: str, threads: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"mongo-{name}")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def run_bounded(self, seconds: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`run`, with every MongoDB operation of `fn` bounded to `seconds` in all.

        pymongo sends the time left as `maxTimeMS` with each command, so the
        server abandons a query the client stopped waiting for.
        """
        return await self.run(functools.partial(_bounded, seconds, fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class Database(Lane):
    """MongoEngine's blocking driver behind `await db.run(fn, ...)` (the requests' lane),
    `db.intake.run(...)` and the readiness `ping`."""

    def __init__(self, uri: str, threads: int = 8) -> None:
        super().__init__("requests", threads)
        self._uri = uri
        self.intake = Lane("intake", INTAKE_THREADS)
        self._probe = Lane("ping", 1)

    def connect(self) -> None:
        mongoengine.connect(
            host=self._uri,
            uuidRepresentation="standard",
            tz_aware=True,
            # Fail a request in seconds rather than hang it when MongoDB is away.
            serverSelectionTimeoutMS=5000,
            appname="balcao-server",
            **replica_set_safety(self._uri),
        )
        log.info("mongodb client configured")

    async def ensure_indexes(self) -> None:
        await self.run(ensure_indexes)

    async def ensure_indexes_reporting(self) -> bool:
        """`ensure_indexes`, answering True, for start-up retries."""
        await self.ensure_indexes()
        return True

    async def ping(self) -> bool:
        def ping() -> None:
            # Bounds server selection too, so a probe never holds a thread for long.
            with pymongo.timeout(PING_TIMEOUT):
                Session._get_db().client.admin.command("ping")

        try:
            # The outer bound covers waiting for the ping thread behind the ping before.
            await asyncio.wait_for(self._probe.run(ping), timeout=PING_TIMEOUT + 1)
            return True
        except (PyMongoError, asyncio.TimeoutError) as exc:
            log.warning("mongodb ping failed: %s", exc)
            return False

    def close(self) -> None:
        for lane in (self._probe, self.intake):
            lane.close()
        super().close()
        mongoengine.disconnect()


def _bounded(seconds: float, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    # In the worker thread: pymongo.timeout is a context variable of the calling thread.
    with pymongo.timeout(seconds):
        return fn(*args, **kwargs)
