"""Liveness and readiness probes; open to anyone, like load balancers expect."""

from __future__ import annotations

from server.handlers.base import JsonHandler


class HealthHandler(JsonHandler):
    def get(self) -> None:
        """The process is up and serving HTTP."""
        self.write_json({"status": "ok"})


class ReadyHandler(JsonHandler):
    async def get(self) -> None:
        """MongoDB and NATS both answer; 503 otherwise, so traffic goes elsewhere."""
        services = self.settings["services"]
        checks = {
            "mongodb": "ok" if await services.db.ping() else "unavailable",
            "nats": "ok" if services.nats.is_connected else "unavailable",
        }
        if services.stopping.is_set():
            checks["server"] = "stopping"  # draining for shutdown: send traffic elsewhere
        ready = all(state == "ok" for state in checks.values())
        self.write_json({"status": "ready" if ready else "unavailable", "checks": checks},
                        status=200 if ready else 503)


default_handlers = [
    (r"/health", HealthHandler),
    (r"/ready", ReadyHandler),
]
