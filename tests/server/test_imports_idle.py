"""Chunks that take longer than IMPORT_IDLE_TIMEOUT to arrive, against a real server reaping every half second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import NatsServer, free_port
from tests.harness import ApiClient, Process, eventually, reset_jetstream, stack_env
from tests.server.conftest import NO_TELEGRAM
from tests.server.test_imports_api import IMPORT_START_TIMEOUT, envelopes, problem, session_file, sessions

IDLE = 2  # seconds; the reaper looks every half second


@pytest.fixture(scope="module")
def idle_server(
    nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {
        **stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM),
        "HTTP_PORT": str(port),
        "IMPORT_IDLE_TIMEOUT": str(IDLE),
    }
    server = Process("server", env, Path(tmp_path_factory.mktemp("idle")) / "server.log", port=port).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def api(idle_server: Process, mongo) -> Iterator[ApiClient]:
    client = ApiClient(f"http://127.0.0.1:{idle_server.port}")
    yield client
    client.close()


def trickle(lines: list[bytes], pause: float, stall_after: int | None = None, stall: float = 0.0) -> Iterator[bytes]:
    """A chunk's body sent a line at a time, as over a slow link (chunked transfer encoding)."""
    for n, line in enumerate(lines):
        if n == stall_after:
            time.sleep(stall)
        yield line
        time.sleep(pause)


def put_slowly(api: ApiClient, import_id: str, body: Iterator[bytes]):
    # Not checked against the OpenAPI document: its checker reads the request body back, which a stream cannot.
    return api.request(
        "PUT",
        f"imports/{import_id}/chunks/0",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
        check=False,
    )


def test_a_chunk_arriving_for_longer_than_the_idle_timeout_is_not_reaped(api, mongo):
    job = api.post("imports", json={"channel": "@suporte"}).json()
    lines = envelopes(sessions(12)).splitlines(keepends=True)

    started = time.monotonic()
    answer = put_slowly(api, job["id"], trickle(lines, pause=0.5))  # 6 s: three idle periods
    assert time.monotonic() - started > 2 * IDLE

    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"]["created"] == 12
    done = api.post(f"imports/{job['id']}/complete", json={"chunks": 1}).json()
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"received": 12, "created": 12, "updated": 0, "unchanged": 0, "rejected": 0}


def test_a_chunk_that_stalls_past_the_idle_timeout_leaves_no_batch_on_the_failed_import(api, mongo):
    job = api.post("imports", json={"channel": "@suporte"}).json()
    lines = envelopes(sessions(4)).splitlines(keepends=True)

    answer = put_slowly(api, job["id"], trickle(lines, pause=0.1, stall_after=2, stall=IDLE + 2))

    problem(answer, 409, "import-ended")
    report = api.get(f"imports/{job['id']}").json()
    assert (report["status"], report["failure"]["reason"]) == ("failed", "abandoned")
    assert report["counts"]["received"] == 0
    assert mongo.import_batches.count_documents({}) == 0


def test_an_upload_whose_import_was_reaped_meanwhile_adds_no_batch_to_it(api, mongo):
    """The first batch (500 records) starts the import; the client then stalls past the idle
    timeout and the reaper fails it; the rest of the file is refused, not added to the report."""
    content = session_file("json", sessions(600))
    cut = len(b"\n".join(content.split(b"\n")[:520]))  # past the first batch of 500
    boundary = "idle-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="channel"\r\n\r\n@suporte\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.json"\r\n'
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head + content[:cut]
        eventually(
            lambda: mongo.import_batches.count_documents({}) == 1,
            timeout=IMPORT_START_TIMEOUT,
            message="first batch recorded",
        )
        time.sleep(IDLE + 2)  # no data: the reaper takes it
        yield content[cut:] + tail

    answer = api.request(
        "POST",
        "imports",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        check=False,  # a stream: see put_slowly
    )

    problem(answer, 409, "import-ended")
    job = mongo.import_jobs.find_one()
    assert (job["status"], job["failure"]["reason"]) == ("failed", "abandoned")
    assert job["counts"]["created"] == 500 and mongo.import_batches.count_documents({}) == 1
