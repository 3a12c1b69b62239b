"""The attack suite's fixtures: a real server process, and its memory read from /proc.

Each attack runs against `python -m server` wired to the real nats-server and
MongoDB-wire server, and checks the answer, that the server's resident memory
stays under a stated bound, and that it keeps answering `/ready`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.processes import NatsServer, free_port
from tests.harness import API_TOKEN, Process, reset_jetstream, stack_env

NO_TELEGRAM = "http://127.0.0.1:9"


def rss_bytes(pid: int) -> int:
    """The process's resident set size now, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class Target:
    """A running server under attack: its URL, its process, and clients with and without the token."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{process.port}"

    @property
    def pid(self) -> int:
        assert self.process.popen is not None
        return self.process.popen.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def client(self, token: str | None = API_TOKEN, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/ready", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port)}
    log = Path(tmp_path_factory.mktemp("security")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()
