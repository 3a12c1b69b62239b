"""Start-up and graceful shutdown of the server process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tornado.httpserver import HTTPServer

from contract import jetstream, logs
from contract.environment import ConfigError
from server import config
from server.app import Services, make_app
from server.database import Database
from server.intake import Intake
from server.outbound import Outbound

log = logging.getLogger("server")

SHUTDOWN_GRACE = 20.0


async def main() -> None:
    try:
        settings = config.load()
    except ConfigError as exc:
        sys.exit(f"server: {exc}")
    logs.configure(settings.log_level, settings.log_format)

    db = Database(settings.mongodb_uri, settings.db_threads)
    db.connect()
    await db.ensure_indexes()
    nc = await jetstream.connect(settings.nats_url, "balcao-server")
    js = nc.jetstream()
    await jetstream.ensure_streams(js)

    outbound = Outbound(js, db)
    services = Services(db=db, nats=nc, js=js, outbound=outbound)
    intake = Intake(js, db, outbound, settings.reply_text, settings.intake_batch)
    app = make_app(settings, services)
    server = HTTPServer(app, xheaders=True, max_body_size=settings.import_max_bytes)
    server.listen(settings.http_port)
    log.info("server listening on port %d", settings.http_port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    intake_task = asyncio.create_task(intake.run(), name="intake")
    relay_task = asyncio.create_task(outbound.relay_forever(), name="outbox-relay")
    await stopping.wait()

    log.info("server stopping")
    server.stop()
    intake.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE)
        await asyncio.wait_for(intake_task, SHUTDOWN_GRACE)
    except asyncio.TimeoutError:
        log.warning("shutdown grace period over; stopping with work in flight")
    relay_task.cancel()
    await asyncio.gather(relay_task, return_exceptions=True)
    await jetstream.drain(nc)
    db.close()
    log.info("server stopped")
