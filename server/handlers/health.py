"""Liveness and readiness probes; open to anyone, like load balancers expect."""

from __future__ import annotations

import asyncio
import time

from server.database import Database
from server.handlers.base import JsonHandler
from server.metrics import READINESS_PINGS


class HealthHandler(JsonHandler):
    def get(self) -> None:
        """The process is up and serving HTTP."""
        self.write_json({"status": "ok"})


# Probes and anyone else may call /ready without a token; one MongoDB ping per
# this many seconds answers them all.
READY_CACHE_SECONDS = 1.0


class ReadyHandler(JsonHandler):
    async def get(self) -> None:
        """MongoDB and NATS both answer; 503 otherwise, so traffic goes elsewhere."""
        services = self.services
        checks = {
            "mongodb": "ok" if await services.mongodb_probe.answers() else "unavailable",
            "nats": "ok" if services.nats.is_connected else "unavailable",
        }
        if services.stopping.is_set():
            checks["server"] = "stopping"  # draining for shutdown: send traffic elsewhere
        ready = all(state == "ok" for state in checks.values())
        self.write_json({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


class MongoProbe:
    """MongoDB's last ping answer while it is fresh; concurrent callers share one ping."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._at = -READY_CACHE_SECONDS
        self._ping: asyncio.Future[bool] | None = None

    async def answers(self) -> bool:
        now = time.monotonic()
        if self._ping is None or (self._ping.done() and now - self._at >= READY_CACHE_SECONDS):
            self._at, self._ping = now, asyncio.ensure_future(self._db.ping())
            READINESS_PINGS.inc()
        # Shielded: one caller going away must not cancel the ping the others wait on.
        return await asyncio.shield(self._ping)


default_handlers = [
    (r"/health", HealthHandler),
    (r"/ready", ReadyHandler),
]
