"""API fixtures: the application in the test's own event loop, or a real server process.

`api` serves the application in process, as jupyter_server's tests do: the
app that `make_app` builds over services built as the server builds them
(`Services.build`), on the real MongoDB-wire server and the real nats-server,
on an unused port in the event loop of the test module. Its tests are `async`
and read `response = await api.get("sessions", params={"q": "joao"})`. One app
serves a module (as one process did); each test still starts from empty
collections (the `mongo` fixture).

`api_server` starts `python -m server` instead, for the tests where the
process is what is under test (start-up, signals, memory) and for clients
that block (the CLI's tests). Modules that need fresh JetStream streams or the
bot use `stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from contract import messaging
from devstack.processes import NatsServer, free_port
from runtime import jetstream
from server import config
from server.app import Services, make_app
from server.database import Database
from server.main import declare_streams, http_server
from tests.harness import AsyncApiClient, Process, reset_jetstream, stack_env
from tests.server import factories

# Nothing in these modules talks to Telegram; the server never calls it anyway.
NO_TELEGRAM = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def api_server(
    nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port)}
    log = Path(tmp_path_factory.mktemp("api")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture(scope="session")
def database(mongodb_uri: str) -> Iterator[Database]:
    """MongoEngine connected in this process, for tests of the domain functions and the in-process app."""
    db = Database(mongodb_uri, threads=2)
    db.connect()
    from server import models

    models.ensure_indexes()
    yield db


class Tracebacks(logging.Handler):
    """Every log record that carries an exception, as a server process would write a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(record) for record in self.records)


class InProcessServer:
    """The application serving on an unused port of this process, with the outbox relay running."""

    def __init__(self, services: Services, port: int) -> None:
        self.services = services
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_server(nats_server: NatsServer, mongodb_uri: str, database: Database) -> AsyncIterator[InProcessServer]:
    """The app as `python -m server` serves it, minus the intake: one per test module."""
    await asyncio.to_thread(reset_jetstream, nats_server.url)
    port = free_port()
    settings = config.load({**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port)})
    nc = await jetstream.connect(settings.nats_url, "balcao-test-app", messaging.SERVER_INBOX_PREFIX)
    services = Services.build(settings, database, nc)
    await declare_streams(services.jetstream, settings)
    server = http_server(make_app(services), settings)
    server.listen(port, "127.0.0.1")
    relay = asyncio.create_task(services.outbound.relay_forever(), name="outbox-relay")
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    try:
        yield InProcessServer(services, port)
    finally:
        logging.getLogger().removeHandler(tracebacks)
        server.stop_accepting()
        services.stopping.set()
        await asyncio.gather(*(drain() for drain in services.drains), server.drain(10.0))
        await server.close_all_connections()
        services.outbound.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(relay, 10)
        await nc.close()
    assert not tracebacks.records, tracebacks.text()


@pytest_asyncio.fixture(loop_scope="module")
async def api(app_server: InProcessServer, mongo) -> AsyncIterator[AsyncApiClient]:
    """The /v1 API as agents call it, served in process; `await api.get("sessions", params={"q": "joao"})`."""
    factories.bind(mongo)
    client = AsyncApiClient(app_server.url, app_server.port)
    yield client
    await client.close()
