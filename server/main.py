"""Start-up and graceful shutdown of the server process.

On SIGTERM (or SIGINT) the server stops accepting connections; the HTTP
requests in flight, the drain callbacks in `Services.drains` (an import's
current batch) and the intake's batch in hand finish; the outbox gets one last
relay round; NATS is drained; the process exits 0. All of it within
SHUTDOWN_GRACE: whatever still runs then is abandoned, which loses nothing,
because nothing is acknowledged to JetStream before it is stored.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from pymongo.errors import PyMongoError
from tornado.web import Application

from contract import messaging
from runtime import jetstream, lifecycle
from runtime.httpserver import GuardedHTTPServer
from server import config, eventpublishing, streams
from server.app import Services, make_app
from server.config import Settings
from server.database import Database
from server.intake import Intake
from server.metrics import HTTP_REFUSED

log = logging.getLogger("server")

# Container runtimes wait 10 s by default before SIGKILL; podman-compose.yml
# sets stop_grace_period above this.
SHUTDOWN_GRACE = 20.0


async def main() -> None:
    settings, stopping = lifecycle.begin("server", config.load)

    db = Database(settings.mongodb_uri, settings.db_threads)
    db.connect()
    indexed = await lifecycle.retry_until_ready("MongoDB", db.ensure_indexes_reporting, stopping, (PyMongoError,))
    nc = indexed and await lifecycle.retry_until_ready(
        "NATS",
        lambda: jetstream.connect(settings.nats_url, "balcao-server", messaging.SERVER_INBOX_PREFIX),
        stopping,
        (OSError, NatsError, asyncio.TimeoutError),
    )
    if not nc:
        db.close()
        log.info("server stopped before it was ready")
        return
    services = Services.build(settings, db, nc)
    js = services.jetstream
    try:
        await declare_streams(js, settings)
    except jetstream.ReplicationError as exc:
        await nc.close()
        db.close()
        sys.exit(f"server: {exc}")

    outbound = services.outbound
    intake = Intake(js, db, outbound, settings.reply_text, settings.intake_batch, settings.intake_ack_wait)
    server = http_server(make_app(services), settings)
    server.listen(settings.http_port, address=settings.http_address)
    log.info("server listening on %s port %d", settings.http_address, settings.http_port)

    intake_task = asyncio.create_task(intake.run(), name="intake")
    relay_task = asyncio.create_task(outbound.relay_forever(), name="outbox-relay")
    reaper_task = asyncio.create_task(
        services.imports.reap_forever(settings.import_idle_timeout, services.stopping, settings.import_retention),
        name="import-reaper",
    )
    # Not a worker: stale gauges are no reason to stop serving.
    streams_task = asyncio.create_task(streams.watch(js, stopping), name="stream-metrics")
    crashed = await lifecycle.until_stopped(stopping, [intake_task, relay_task])

    log.info("server stopping")
    deadline = lifecycle.Deadline(SHUTDOWN_GRACE)
    server.stop_accepting()
    services.stopping.set()
    intake.stop()
    await deadline.settle(
        [
            server.drain(deadline.remaining()),
            *(drain() for drain in services.drains),
            *([] if intake_task.done() else [intake_task]),
            *([] if reaper_task.done() else [reaper_task]),
        ]
    )
    if server.in_flight:
        log.warning("closing %d HTTP requests still in flight", server.in_flight)
    await server.close_all_connections()
    # Last, so this round publishes what the requests drained above promised.
    outbound.stop()
    await deadline.settle(task for task in (relay_task, streams_task) if not task.done())
    await jetstream.drain(nc, timeout=deadline.remaining(at_least=2.0))
    db.close()
    log.info("server stopped")
    if crashed:
        sys.exit(1)


async def declare_streams(js: JetStreamContext, settings: Settings) -> None:
    """The streams the server reads and writes, as the settings size them (raises ReplicationError)."""
    await jetstream.ensure_streams(
        js,
        jetstream.StreamLimits(
            settings.stream_max_bytes,
            settings.stream_max_age,
            settings.parked_max_age,
            settings.dead_letter_max_age,
        ),
        replicas=settings.nats_replicas,
    )
    await eventpublishing.ensure_stream(
        js, settings.events_max_age, settings.events_max_bytes, replicas=settings.nats_replicas
    )


def http_server(app: Application, settings: Settings) -> GuardedHTTPServer:
    """The HTTP server in front of `app`, with the settings' limits (not listening yet)."""
    return GuardedHTTPServer(
        app,
        # X-Real-Ip / X-Forwarded-For are anyone's to write unless a proxy in
        # front overwrites them: trusted only when the operator says so.
        xheaders=settings.http_trust_proxy_headers,
        # Small for every route; the import handlers raise it after the bearer check.
        max_body_size=settings.http_max_body_bytes,
        idle_connection_timeout=settings.http_idle_timeout,
        body_timeout=settings.http_body_timeout,
        max_connections=settings.http_max_connections,
        max_connections_per_address=settings.http_max_connections_per_address,
        refused=lambda reason: HTTP_REFUSED.labels(reason=reason).inc(),
    )
