"""API fixtures: a real server process per test module, and a client per test.

Starting the server takes longer than most API tests, so one serves a module;
each test still starts from empty collections (the `mongo` fixture). Modules
that need fresh JetStream streams or the bot use `stack` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import NatsServer, free_port
from server.database import Database
from tests.harness import ApiClient, Process, reset_jetstream, stack_env
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


@pytest.fixture
def api(api_server: Process, mongo) -> Iterator[ApiClient]:
    """The /v1 API as agents call it; `api.get("sessions", params={"q": "joao"})`."""
    factories.bind(mongo)
    client = ApiClient(f"http://127.0.0.1:{api_server.port}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def database(mongodb_uri: str) -> Iterator[Database]:
    """MongoEngine connected in this process, for tests of the domain functions."""
    db = Database(mongodb_uri, threads=2)
    db.connect()
    from server import models

    models.ensure_indexes()
    yield db
