"""Records of tiny values, and more imports at once than a replica reads, against a real server.

A line of `{}`s is a few bytes a value in the file and some twenty times that
in Python objects once parsed, and its thousands of bad messages each an error
object: the server must count the values before it parses the line, in every
place a record comes as JSON text (an NDJSON line, a CLI chunk's envelope, a
session-per-row CSV's messages cell), and hold a bounded number of imports at
once. The server runs with the default record limits; the attacks stay inside
IMPORT_MAX_RECORD_BYTES, so only the value count can stop them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contract.importformat import CHUNK_MEDIA_TYPE
from devstack.processes import NatsServer, free_port
from server.importing.limits import MAX_RECORD_VALUES
from tests.harness import API_TOKEN, Process, eventually, reset_jetstream, stack_env
from tests.security.conftest import NO_TELEGRAM, Target
from tests.security.test_http_attacks import Watch
from tests.security.test_import_attacks import SESSION, form_head

MIB = 1024 * 1024
# What one hostile record may add to the server's memory once it is counted,
# not built. Parsed, the lines below take hundreds of MiB.
RSS_GROWTH_BOUND = 48 * MIB
# A little over a megabyte of `{},`: some 1.2 million values, six times the limit.
TINY_MESSAGES = 400_000


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port), "IMPORT_MAX_CONCURRENT": "1"}
    log = Path(tmp_path_factory.mktemp("import-bounds")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


def tiny_values_session(identifier: int) -> bytes:
    """A session whose messages are TINY_MESSAGES empty objects, as one line of JSON."""
    marker = "MESSAGES"
    line = json.dumps({**SESSION, "contact_identifier": identifier, "messages": marker}).encode()
    return line.replace(b'"MESSAGES"', b"[" + b",".join([b"{}"] * TINY_MESSAGES) + b"]")


def ndjson_upload(lines: list[bytes]) -> bytes:
    return form_head(b"sessions.ndjson", b"application/x-ndjson") + b"\n".join(lines) + b"\r\n--attackboundary--\r\n"


def upload(target: Target, body: bytes) -> httpx.Response:
    with target.client(timeout=120) as client:
        return client.post(
            "/v1/imports", content=body, headers={"Content-Type": "multipart/form-data; boundary=attackboundary"}
        )


def values_problem(errors: list[dict]) -> str:
    (error,) = errors
    assert error["record"] == 1 and error["field"] is None, error
    return error["message"]


def test_an_ndjson_line_of_tiny_values_is_rejected_before_it_is_parsed(target, mongo):
    body = ndjson_upload([tiny_values_session(5585999990001), json.dumps(SESSION).encode()])
    with Watch(target) as watch:
        response = upload(target, body)

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "succeeded"
    assert report["counts"] == {"received": 2, "created": 1, "updated": 0, "unchanged": 0, "rejected": 1}
    message = values_problem(report["errors"])
    assert f"more than {MAX_RECORD_VALUES}; it was skipped" in message
    assert mongo["sessions"].count_documents({}) == 1
    watch.check(RSS_GROWTH_BOUND)


def chunked_import(client: httpx.Client) -> str:
    started = client.post("/v1/imports", json={"channel": "@suporte", "source": "big.csv"})
    assert started.status_code == 201, started.text
    return started.json()["id"]


def put_chunk(client: httpx.Client, import_id: str, seq: int, lines: list[bytes]) -> httpx.Response:
    return client.put(
        f"/v1/imports/{import_id}/chunks/{seq}", content=b"\n".join(lines), headers={"Content-Type": CHUNK_MEDIA_TYPE}
    )


def test_a_chunk_line_of_tiny_values_is_rejected_before_it_is_parsed(target, mongo):
    envelope = b'{"record": 1, "line": 2, "data": ' + tiny_values_session(5585999990002) + b"}"
    with Watch(target) as watch, target.client(timeout=120) as client:
        import_id = chunked_import(client)
        response = put_chunk(client, import_id, 0, [envelope])
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["counts"]["rejected"] == 1
    assert "JSON values" in values_problem(response.json()["errors"])
    watch.check(RSS_GROWTH_BOUND)


def test_messages_as_json_text_of_tiny_values_are_rejected_before_they_are_parsed(target, mongo):
    """The session-per-row CSV layout carries messages as JSON text in a cell; the
    CLI sends that cell as a string, which the line's own count passes over."""
    cell = "[" + ",".join(["{}"] * TINY_MESSAGES) + "]"
    data = {**SESSION, "contact_identifier": 5585999990003, "messages": cell}
    envelope = json.dumps({"record": 1, "line": 2, "data": data}).encode()
    with Watch(target) as watch, target.client(timeout=120) as client:
        import_id = chunked_import(client)
        response = put_chunk(client, import_id, 0, [envelope])
    assert response.status_code == 200, response.text[:2000]
    assert "its messages hold some" in values_problem(response.json()["errors"])
    watch.check(RSS_GROWTH_BOUND)


def test_imports_past_the_replica_s_limit_wait_their_turn(target, mongo):
    """With IMPORT_MAX_CONCURRENT=1, an upload in progress makes the next upload and
    chunk a 503 with Retry-After; once it has ended, they are taken."""
    first = socket.create_connection(("127.0.0.1", target.process.port), timeout=10)
    line = json.dumps(SESSION).encode()
    lines = [json.dumps({**SESSION, "contact_identifier": 5585999991000 + n}).encode() for n in range(60)]
    body = ndjson_upload(lines)
    # Past the bytes the kind is told from (so the import exists), then a pause inside the last record.
    cut = body.index(lines[-1]) + 10
    head, tail = body[:cut], body[cut:]
    first.sendall(
        b"POST /v1/imports HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {API_TOKEN}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=attackboundary\r\n\r\n"
        + head
    )
    try:
        # The first upload holds the replica's one place from its headers on.
        refused = eventually(
            lambda: (lambda answer: answer if answer.status_code == 503 else None)(upload(target, body)),
            message="a second upload refused while the first is read",
        )
        with target.client(timeout=60) as client:
            assert refused.json()["type"].endswith("/too-many-imports") and refused.headers["Retry-After"] == "2"
            import_id = chunked_import(client)  # starting one reads nothing
            chunk = put_chunk(client, import_id, 0, [b'{"record": 1, "line": 1, "data": ' + line + b"}"])
            assert chunk.status_code == 503, chunk.text

            first.sendall(tail)
            answer = first.recv(65536)
            assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
            assert upload(target, body).status_code == 202
            assert put_chunk(client, import_id, 0, [b'{"record": 1, "line": 1, "data": ' + line + b"}"]).is_success
    finally:
        first.close()
