"""Fixtures that start the real components: nats-server, a MongoDB-wire server, the fake Bot API.

The servers start once per test session; every test starts from empty streams,
empty collections and a reset fake Telegram.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from devstack.processes import NatsServer, SecantusServer, free_port, wait_for_port
from runtime import failpoints
from tests.harness import (
    BOT_TOKEN,
    ROOT,
    FakeTelegramClient,
    Process,
    reset_jetstream,
    stack_env,
)

# The container tests build images and start stacks with podman as root, for
# minutes: `make test-containers` and `make test-python313` run them, `make test` not.
CONTAINER_TESTS = ROOT / "tests" / "containers"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--containers",
        action="store_true",
        default=False,
        help="also collect tests/containers/ (podman, root, minutes: make test-containers, make test-python313)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == CONTAINER_TESTS and not config.getoption("--containers"):
        return True
    return None


# The tests' processes, this one and every one it starts, are tests': fail points
# may be armed in them (runtime/failpoints.py refuses them anywhere else).
os.environ[failpoints.TESTING_ENV] = "1"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real mongod when MONGODB_URI is set; otherwise SecantusDB on a free port."""
    external = os.environ.get("MONGODB_URI")
    if external:
        # Parallel workers (pytest -n) share that server: each gets a database of its own.
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        yield with_database(external, f"balcao_{worker}") if worker else external
        return
    server = SecantusServer(
        data_dir=tmp_path_factory.mktemp("mongo"), log_file=tmp_path_factory.getbasetemp() / "secantus.log"
    )
    server.start()
    yield server.uri
    server.stop()


def with_database(uri: str, name: str) -> str:
    """The URI with its path (the default database) replaced by `name`."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri: str) -> Iterator[pymongo.MongoClient]:
    client = pymongo.MongoClient(mongodb_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def mongo(mongo_client: pymongo.MongoClient):
    """The project database, emptied before the test (collections and indexes kept)."""
    database = mongo_client.get_default_database()
    for name in database.list_collection_names():
        database[name].delete_many({})
    return database


@pytest.fixture(scope="session")
def fake_telegram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.getbasetemp() / "faketelegram.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.faketelegram", "--port", str(port), "--token", BOT_TOKEN],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port, 30, process)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def telegram(fake_telegram_server: str) -> Iterator[FakeTelegramClient]:
    client = FakeTelegramClient(fake_telegram_server)
    client.reset()
    yield client
    client.http.close()


@pytest.fixture
def clean_nats(nats_server: NatsServer) -> NatsServer:
    reset_jetstream(nats_server.url)
    return nats_server


class Stack:
    """The project's own processes, wired to the test servers; stopped after the test."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[Process] = []
        self.http_port = free_port()

    def server(self, *, wait: bool = True, measured: bool = True, **extra: str) -> Process:
        """Start a server; unless `wait` is False, return once its HTTP port is open.

        `measured=False` for one the test SIGKILLs (see `Process.measured`).
        """
        env = {**self.env, "HTTP_PORT": str(self.http_port), **extra}
        port = int(env["HTTP_PORT"])
        process = Process(
            "server", env, self.logs / f"server-{port}.log", port=port if wait else None, measured=measured
        )
        self.processes.append(process)
        return process.start()

    def bot(self, *, measured: bool = True, **extra: str) -> Process:
        process = Process("bot", {**self.env, **extra}, self.logs / "bot.log", measured=measured)
        self.processes.append(process)
        return process.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        # Signalled together, so their grace periods overlap instead of adding
        # up; each still drains and exits as its own SIGTERM handling says.
        for process in self.processes:
            process.send(signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def stack(
    clean_nats: NatsServer, mongo, telegram: FakeTelegramClient, mongodb_uri: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(stack_env(clean_nats.url, mongodb_uri, telegram.base_url), tmp_path)
    yield running
    running.stop()
    for process in running.processes:
        assert "Traceback" not in process.log_text(), process.log_text()


# Modules that take longest, run first: `make test` hands each xdist worker a
# share of the list and lets an idle worker take over the tail of another's (worksteal),
# so the minutes-long modules start at once and the suite ends on quick tests
# instead of one worker finishing a long test alone. Unlisted modules keep their
# order after these; tests of one module stay together for its module fixtures.
SLOW_FIRST = (
    "tests/e2e/test_chaos.py",
    "tests/bench/test_benchmarks.py",
    "tests/server/test_openapi_contract.py",
    "tests/e2e/",
    "tests/security/",
    "tests/server/test_imports_api.py",
    "tests/server/test_imports_idle.py",
    "tests/cli/",
    "tests/bot/test_delivery.py",
)


def slowness_rank(item: pytest.Item) -> int:
    path = Path(str(item.path)).relative_to(ROOT).as_posix()
    for rank, prefix in enumerate(SLOW_FIRST):
        if path.startswith(prefix):
            return rank
    return len(SLOW_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=slowness_rank)  # stable: collection order within a rank
