"""Contacts' data stays out of a real server's log when a request fails unexpectedly.

A search's words are contacts' names. The access log masks them; a request
that fails with a 500 is logged by Tornado with its raw URI unless the handler
says otherwise. The fail point makes a search fail exactly so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import NatsServer, free_port
from tests.harness import Process, eventually, reset_jetstream, stack_env
from tests.security.conftest import NO_TELEGRAM, Target

POINT = "server.sessions.list"


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {
        **stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM),
        "HTTP_PORT": str(port),
        "BALCAO_FAILPOINTS": f"{POINT}=raise",
    }
    log = Path(tmp_path_factory.mktemp("log-privacy")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()


def test_a_search_that_fails_with_a_500_is_logged_without_its_words(target):
    with target.client() as client:
        response = client.get("/v1/sessions", params={"q": "Joaquina Esmeralda", "limit": "5"})
    assert response.status_code == 500
    assert response.json()["detail"] == "The server could not complete the request; it has been logged."
    lines = eventually(
        lambda: [line for line in target.process.log_text().splitlines() if "Uncaught exception" in line],
        message="the failure logged",
    )
    assert [line.split(" ERROR ", 1)[1] for line in lines] == [
        "tornado.application: Uncaught exception GET /v1/sessions?q=***&limit=5 (127.0.0.1)"
    ]
    assert f"FailPointError: fail point {POINT}" in target.process.log_text()
    assert "joaquina" not in target.process.log_text().lower()
