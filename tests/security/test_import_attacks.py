"""Hostile uploads against a real server: each gets a 4xx naming the part or a failed report naming the record.

Every attack runs against `python -m server` (real nats-server, real
MongoDB-wire server) with the per-record limits lowered through its settings,
so a few megabytes stand for the 900 MB an attacker would send. Each checks
the exact answer, that the server's resident memory stays under
RSS_BOUND while it is under attack (sampled from /proc), and that `/ready`
answers 200 throughout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pymongo
import pytest

from devstack.processes import NatsServer, free_port
from tests.harness import API_TOKEN, ROOT, Process, eventually, outbound_messages, reset_jetstream, stack_env
from tests.security.conftest import NO_TELEGRAM, Target, rss_bytes

RECORD_LIMIT = 256 * 1024
IDLE_TIMEOUT = 3
MAX_CHUNKS = 3
# What the server may reach while it is attacked; it idles near 100 MB.
RSS_BOUND = 250 * 1024 * 1024
SESSION = {
    "name": "Ana",
    "platform_type": "telegram",
    "contact_identifier": 5585999990001,
    "messages": [{"content": "Olá", "date": "2021-03-03T19:43:38Z"}],
}
LIMITS_ENV = {
    "IMPORT_MAX_RECORD_BYTES": str(RECORD_LIMIT),
    "IMPORT_MAX_RECORD_DEPTH": "32",
    "IMPORT_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    "IMPORT_MAX_CHUNKS": str(MAX_CHUNKS),
}


@pytest.fixture(scope="module")
def target(nats_server: NatsServer, mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The attack suite's server, with the import limits lowered (the suite's own `target` uses the defaults)."""
    reset_jetstream(nats_server.url)
    port = free_port()
    env = {**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port), **LIMITS_ENV}
    log = Path(tmp_path_factory.mktemp("import-attacks")) / "server.log"
    server = Process("server", env, log, port=port).start()
    yield Target(server)
    server.stop()
    assert "Traceback" not in server.log_text(), server.log_text()[-5000:]


@pytest.fixture
def db(mongodb_uri: str, mongo) -> pymongo.database.Database:
    return mongo


@dataclass
class Watch:
    """What a sampler saw while an attack ran: peak RSS and every /ready answer."""

    peak: int = 0
    ready: list[int | str] = field(default_factory=list)

    def check(self) -> None:
        assert self.peak < RSS_BOUND, f"server RSS peaked at {self.peak / 2**20:.0f} MiB"
        assert self.ready and all(answer == 200 for answer in self.ready), self.ready


@contextmanager
def under_attack(target: Target) -> Iterator[Watch]:
    watch, done = Watch(), threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    watch.peak = max(watch.peak, rss_bytes(target.pid))
                except (FileNotFoundError, ProcessLookupError, AssertionError):
                    watch.ready.append("process gone")
                    return
                try:
                    watch.ready.append(client.get(f"{target.url}/ready").status_code)
                except httpx.HTTPError as error:
                    watch.ready.append(type(error).__name__)
                if done.wait(0.2):
                    return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield watch
    finally:
        done.set()
        sampler.join(10)
        print(f"peak RSS {watch.peak / 2**20:.1f} MiB")  # shown with pytest -s


def answer_of(send: Callable[[], httpx.Response]) -> httpx.Response:
    """The response; a reset or a dropped connection fails the attack with what happened."""
    try:
        return send()
    except httpx.TransportError as error:
        pytest.fail(f"no answer: {type(error).__name__}: {error}")


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"attackboundary", preamble: bytes = b"") -> bytes:
    body = preamble
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def channel_part() -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="channel"', b"@suporte"


def file_part(
    content: bytes, filename: bytes = b"sessions.json", content_type: bytes = b"application/json"
) -> tuple[bytes, bytes]:
    return (
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\nContent-Type: ' + content_type,
        content,
    )


def form_head(filename: bytes, content_type: bytes) -> bytes:
    """The body up to the first byte of the file's content."""
    headers, _ = file_part(b"", filename, content_type)
    channel_headers, channel = channel_part()
    return (
        b"--attackboundary\r\n"
        + channel_headers
        + b"\r\n\r\n"
        + channel
        + b"\r\n--attackboundary\r\n"
        + headers
        + b"\r\n\r\n"
    )


def post_multipart(target: Target, body: bytes, boundary: bytes = b"attackboundary") -> httpx.Response:
    with target.client(timeout=120) as client:
        return answer_of(
            lambda: client.post(
                "/v1/imports",
                content=body,
                headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
            )
        )


def streamed(head: bytes, unit: bytes, total: int, tail: bytes) -> Iterator[bytes]:
    """A body generated as it is sent, never held whole by the test either."""
    yield head
    piece = unit * (65536 // len(unit))
    for _ in range(total // len(piece)):
        yield piece
    yield tail


def post_streamed(target: Target, pieces: Iterator[bytes], size: int) -> httpx.Response:
    with target.client(timeout=120) as client:
        return answer_of(
            lambda: client.post(
                "/v1/imports",
                content=pieces,
                headers={"Content-Type": "multipart/form-data; boundary=attackboundary", "Content-Length": str(size)},
            )
        )


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["Content-Type"].startswith("application/problem+json")
    return response.json()


def json_array_attack(target: Target, item_head: bytes, unit: bytes, total: int, item_tail: bytes) -> httpx.Response:
    """An upload of `[<good session>, <hostile item>, <good session>]`, the hostile item streamed."""
    session = json.dumps(SESSION).encode()
    head = form_head(b"sessions.json", b"application/json") + b"[" + session + b"," + item_head
    tail = item_tail + b"," + session + b"]\r\n--attackboundary--\r\n"
    count = total // (65536 // len(unit) * len(unit))
    size = len(head) + count * (65536 // len(unit) * len(unit)) + len(tail)
    return post_streamed(target, streamed(head, unit, total, tail), size)


# --- multipart ----------------------------------------------------------------------------


def test_a_part_header_that_is_not_utf8_is_a_400_naming_the_part_headers(target: Target, db) -> None:
    body = multipart([channel_part(), file_part(json.dumps([SESSION]).encode(), filename=b"sess\xff\xfe.json")])
    with under_attack(target) as watch:
        response = post_multipart(target, body)

    body = problem(response, 400)
    assert "not UTF-8" in body["detail"]
    assert body["errors"][0]["field"] == "part headers"
    assert db.import_jobs.count_documents({}) == 0 and db.sessions.count_documents({}) == 0
    watch.check()


def test_a_preamble_past_64_kib_is_a_400_naming_the_file_part_not_a_reset(target: Target, db) -> None:
    body = multipart([channel_part(), file_part(json.dumps([SESSION]).encode())], preamble=b"p" * (4 * 2**20))
    with under_attack(target) as watch:
        response = post_multipart(target, body)

    body = problem(response, 400)
    assert body["errors"][0]["field"] == "file"
    assert "first 65536 bytes" in body["detail"]
    assert db.import_jobs.count_documents({}) == 0
    watch.check()


def test_a_short_preamble_is_allowed_as_rfc_2046_has_it(target: Target, db) -> None:
    body = multipart(
        [channel_part(), file_part(json.dumps([SESSION]).encode())],
        preamble=b"This is a multi-part message in MIME format.\r\n",
    )
    response = post_multipart(target, body)

    assert response.status_code == 202, response.text
    assert response.json()["counts"]["created"] == 1


def test_parts_before_the_file_past_64_kib_are_a_400_naming_the_file_part(target: Target, db) -> None:
    filler = (b'Content-Disposition: form-data; name="comment"', b"c" * (2 * 2**20))
    body = multipart([channel_part(), filler, file_part(json.dumps([SESSION]).encode())])
    with under_attack(target) as watch:
        response = post_multipart(target, body)

    assert problem(response, 400)["errors"][0]["field"] == "file"
    watch.check()


# --- JSON array items -------------------------------------------------------------------


def test_a_huge_string_item_ends_the_import_failed_at_its_offset_keeping_the_record_before(target: Target, db) -> None:
    with under_attack(target) as watch:
        response = json_array_attack(target, b'"', b"x", 24 * 2**20, b'"')

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "failed"
    assert f"single JSON value longer than {RECORD_LIMIT} bytes" in report["failure"]["message"]
    assert "(record 2)" in report["failure"]["message"]
    assert report["failure"]["offset"] is not None and report["failure"]["offset"] < 1024
    assert report["counts"]["created"] == 1  # the record before it is kept
    assert db.sessions.count_documents({}) == 1
    watch.check()


def test_a_ten_million_deep_array_ends_the_import_failed_at_the_depth_limit(target: Target, db) -> None:
    with under_attack(target) as watch:
        response = json_array_attack(target, b"", b"[", 10_000_000, b"]" * 10)

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "failed"
    assert "nests deeper than 32 levels" in report["failure"]["message"]
    assert report["counts"]["created"] == 1
    watch.check()


def test_an_item_of_many_small_values_is_rejected_by_its_record_number_and_the_rest_imported(
    target: Target, db
) -> None:
    with under_attack(target) as watch:
        response = json_array_attack(target, b'{"name": "Bia", "messages": [', b"{},", 8 * 2**20, b"{}]}")

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "succeeded"
    assert report["counts"] == {"received": 3, "created": 1, "updated": 0, "unchanged": 1, "rejected": 1}
    (error,) = report["errors"]
    assert error["record"] == 2 and "it was skipped" in error["message"]
    watch.check()


def test_a_number_past_64_bits_fails_the_import_and_does_not_kill_the_server(target: Target, db) -> None:
    # The C JSON backend crashed the process (SIGSEGV) on an integer of more than 4,300 digits.
    with under_attack(target) as watch:
        response = json_array_attack(target, b'{"name": "Bia", "contact_identifier": ', b"9", 65536, b"}")

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "failed" and "integer overflow" in report["failure"]["message"]
    assert report["counts"]["created"] == 1
    assert target.process.running
    watch.check()


# --- CSV --------------------------------------------------------------------------------


def test_a_csv_contact_identifier_past_the_int_limit_is_that_records_error(target: Target, db) -> None:
    content = (
        b"_id,name,platform_type,contact_identifier,messages\n,Ana,telegram,"
        + b"7" * 5000
        + b",\n,Bia,telegram,5585999990002,\n"
    )
    body = multipart([channel_part(), file_part(content, b"sessions.csv", b"text/csv")])
    with under_attack(target) as watch:
        response = post_multipart(target, body)

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["counts"]["created"] == 1 and report["counts"]["rejected"] == 1
    (error,) = report["errors"]
    assert (error["record"], error["line"], error["field"]) == (1, 2, "contact_identifier")
    watch.check()


def test_the_cli_does_not_retry_a_chunk_with_a_huge_contact_identifier(target: Target, db, tmp_path: Path) -> None:
    file = tmp_path / "sessions.csv"
    file.write_bytes(
        b"_id,name,platform_type,contact_identifier,messages\n,Ana,telegram,"
        + b"7" * 5000
        + b",\n,Bia,telegram,5585999990002,\n"
    )
    env = {**os.environ, "BALCAO_API_URL": target.url, "BALCAO_API_TOKEN": API_TOKEN}
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "import",
            str(file),
            "--channel",
            "@suporte",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )

    assert "retrying" not in run.stderr, run.stderr[-2000:]
    assert "contact_identifier: longer than 20 digits" in run.stdout, run.stdout + run.stderr
    assert time.monotonic() - started < 60
    assert db.sessions.count_documents({}) == 1


def test_one_contacts_message_rows_are_cut_into_records_at_the_byte_limit(target: Target, db) -> None:
    header = b"contact_identifier,name,platform_type,message_id,message_content,message_date\n"
    row = b"5585999990001,Ana,telegram,m%d," + b"x" * 4000 + b",2021-03-03T19:43:38Z\n"
    rows = b"".join(row.replace(b"%d", str(n).encode()) for n in range(300))  # 1.2 MB, one contact
    body = multipart([channel_part(), file_part(header + rows, b"messages.csv", b"text/csv")])
    response = post_multipart(target, body)

    assert response.status_code == 202, response.text[:2000]
    report = response.json()
    assert report["status"] == "succeeded"
    assert report["counts"]["received"] >= len(rows) // RECORD_LIMIT  # cut at the byte limit
    assert db.sessions.count_documents({}) == 1
    assert db.messages.count_documents({}) == 300


# --- nothing stuck ----------------------------------------------------------------------


def start_chunked(client: httpx.Client, source: str = "sessions.csv") -> str:
    response = client.post("/v1/imports", json={"channel": "@suporte", "source": source})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def chunk_line(record: int, contact: int) -> bytes:
    data = {**SESSION, "contact_identifier": contact}
    return json.dumps({"record": record, "line": record + 1, "data": data}).encode() + b"\n"


def announcements(nats_server: NatsServer, job_id: object) -> list:
    """The import's announcements published on the outbound stream (the outbox empties once published)."""
    return [m for m in outbound_messages(nats_server.url) if m.key == f"import:{job_id}"]


def test_a_chunked_import_never_completed_is_failed_and_announced_once(
    target: Target, db, nats_server: NatsServer
) -> None:
    with target.client() as client:
        job_id = start_chunked(client, "never\ncompleted.csv")
        put = client.put(
            f"/v1/imports/{job_id}/chunks/0",
            content=chunk_line(1, 5585999990001),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert put.status_code == 200, put.text

        report = eventually(
            lambda: (r := client.get(f"/v1/imports/{job_id}").json())["status"] == "failed" and r,
            timeout=IDLE_TIMEOUT + 30,
        )

    assert report["failure"]["reason"] == "abandoned"
    assert report["counts"]["created"] == 1
    eventually(lambda: announcements(nats_server, job_id), timeout=15)
    time.sleep(1.5)  # settle: several reaper rounds pass, none may announce again
    (message,) = announcements(nats_server, job_id)
    assert message.text.startswith("Importação interrompida (never completed.csv)")
    assert "\n" not in message.text


def test_an_upload_whose_server_was_killed_is_failed_by_another_replica(
    target: Target, db, nats_server: NatsServer, mongodb_uri: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**stack_env(nats_server.url, mongodb_uri, NO_TELEGRAM), "HTTP_PORT": str(port), **LIMITS_ENV}
    doomed = Process("server", env, tmp_path / "doomed.log", port=port, measured=False).start()
    rows = b"".join(
        json.dumps({**SESSION, "contact_identifier": 5585999990000 + n}).encode() + b"\n" for n in range(600)
    )  # more than one batch: the first is stored while the body is still coming
    head = form_head(b"s.ndjson", b"application/x-ndjson") + rows

    def endless() -> Iterator[bytes]:
        yield head
        while doomed.running:
            time.sleep(0.2)
            yield b"\n"

    sender = threading.Thread(
        target=lambda: _quietly(
            lambda: httpx.post(
                f"http://127.0.0.1:{port}/v1/imports",
                content=endless(),
                timeout=60,
                headers={
                    "Authorization": f"Bearer {API_TOKEN}",
                    "Content-Type": "multipart/form-data; boundary=attackboundary",
                },
            )
        ),
        daemon=True,
    )
    sender.start()
    job = eventually(lambda: db.import_jobs.find_one({"status": "running", "mode": "upload"}), timeout=60)
    # The job exists from the upload's start; its first batch is stored a moment later.
    eventually(lambda: db.import_batches.find_one({"job_id": job["_id"]}), timeout=60, message="first batch stored")
    doomed.popen.send_signal(signal.SIGKILL)  # mid-upload: its first batch stored, its body unfinished
    doomed.stop()
    sender.join(30)

    with target.client() as client:
        report = eventually(
            lambda: (r := client.get(f"/v1/imports/{job['_id']}").json())["status"] == "failed" and r,
            timeout=IDLE_TIMEOUT + 30,
        )
    assert report["failure"]["reason"] == "abandoned"
    assert report["counts"]["created"] >= 500
    eventually(lambda: announcements(nats_server, job["_id"]), timeout=15)
    time.sleep(1.5)  # settle: several reaper rounds pass, none may announce again
    assert len(announcements(nats_server, job["_id"])) == 1


def _quietly(send: Callable[[], object]) -> None:
    try:
        send()
    except httpx.HTTPError:
        pass  # the server was killed under it


def test_a_chunked_import_takes_at_most_the_configured_chunks(target: Target, db) -> None:
    with target.client() as client:
        job_id = start_chunked(client)
        answers = [
            client.put(
                f"/v1/imports/{job_id}/chunks/{seq}",
                content=chunk_line(seq + 1, 5585999990001 + seq),
                headers={"Content-Type": "application/x-ndjson"},
            )
            for seq in range(MAX_CHUNKS + 1)
        ]

    assert [answer.status_code for answer in answers] == [200] * MAX_CHUNKS + [413]
    assert f"at most {MAX_CHUNKS} chunks" in problem(answers[-1], 413)["detail"]
