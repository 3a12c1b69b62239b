"""Case 4 end to end: uploads through the real server, announcements through the bot to the fake channel."""

from __future__ import annotations

import io
import signal
import socket
from collections.abc import Iterator

import httpx
import pytest

from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from tests.harness import API_TOKEN, ROOT, eventually, outbound_messages, settle, whole_records

DATA = ROOT / "data"
CHANNEL = "@suporte"
BOUNDARY = "balcao-test-boundary"


# An import exists once its first batch (500 records) is stored: seconds on SecantusDB,
# far more with both cores busy; the upload waits on it meanwhile, so waiting longer costs nothing.
IMPORT_START_TIMEOUT = 60.0


@pytest.fixture
def http(stack) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=f"{stack.api_url}/v1/", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)
    yield client
    client.close()


def upload(http: httpx.Client, name: str, content_type: str, content: bytes | None = None) -> httpx.Response:
    content = (DATA / name).read_bytes() if content is None else content
    return http.post("imports", data={"channel": CHANNEL}, files={"file": (name, content, content_type)})


def generated(sessions: int) -> list[dict]:
    return list(generate_sessions(sessions, messages_per_session=1, seed=5))


def generated_json(sessions: int) -> bytes:
    out = io.StringIO()
    write_sessions(generated(sessions), out, "json")
    return out.getvalue().encode()


def records_within(sessions: int, size: int) -> list[str]:
    """The contacts of generated_json(sessions)'s records whole within its first `size` bytes."""
    return [str(record["contact_identifier"]) for record in whole_records(generated_json(sessions)[:size])]


def stored_contacts(mongo) -> list[str]:
    return sorted(s["contact_identifier"] for s in mongo.sessions.find())


def answered(port: int, method: str, status: int) -> float:
    """How many requests the server answered with `status`, from its own latency histogram."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("balcao_http_request_duration_seconds_count{")
        and f'method="{method}"' in line
        and f'status="{status}"' in line
    )


def announcements(telegram) -> list[str]:
    return [message["text"] for message in telegram.sent(CHANNEL)]


def snapshot(mongo) -> list[tuple]:
    return sorted(
        (
            s["contact_identifier"],
            s["contact_name"],
            s["message_count"],
            s["last_message_preview"],
            sorted(m["key"] for m in mongo.messages.find({"session_id": s["_id"]})),
        )
        for s in mongo.sessions.find()
    )


def form_head(filename: str = "sessions.json") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="channel"\r\n\r\n{CHANNEL}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/json\r\n\r\n"
    ).encode()


def raw_upload(port: int, body: bytes, length: int) -> socket.socket:
    """A connection that has sent the request head and `body`, of a body of `length` bytes."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(
        f"POST /v1/imports HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n".encode()
        + body
    )
    return connection


def test_json_and_csv_give_the_same_searchable_sessions_each_import_announced_once(
    stack, telegram, mongo, http, clean_nats
):
    telegram.add_channel(CHANNEL)
    stack.server()
    stack.bot()

    first = upload(http, "sessions.json", "application/json")
    assert first.status_code == 202 and first.json()["counts"]["created"] == 300
    from_json = snapshot(mongo)
    found = http.get("sessions", params={"q": "joao silva"}).json()["items"]
    assert [item["contact"]["name"] for item in found] == ["João Silva"]
    assert http.get("sessions", params={"q": "ben lyn"}).json()["items"][0]["contact"]["name"] == "Benjamin Lynch"

    second = upload(http, "sessions.csv", "text/csv")
    assert second.json()["counts"] == {"received": 300, "created": 0, "updated": 0, "unchanged": 300, "rejected": 0}
    assert snapshot(mongo) == from_json

    content = generated_json(600)
    cut = content.index(b"\n", len(content) // 2) + 10
    third = upload(http, "big.json", "application/json", content[:cut]).json()
    assert third["status"] == "failed" and third["failure"]["offset"] == cut
    whole = records_within(600, cut)  # the records before the cut, every one of them
    kept = third["counts"]["created"]
    assert kept == len(whole) and third["counts"]["received"] == kept
    assert stored_contacts(mongo) == sorted([row[0] for row in from_json] + whole)

    byte = f"{cut:,}".replace(",", ".")  # as written in Brazil
    settle(clean_nats.url, lambda: (len(announcements(telegram)), mongo.outbox.count_documents({})))
    assert announcements(telegram) == [
        "Importação concluída (sessions.json): 300 sessões importadas (300 novas, 0 atualizadas, "
        "0 sem alteração), 0 rejeitadas.",
        "Importação concluída (sessions.csv): 300 sessões importadas (0 novas, 0 atualizadas, "
        "300 sem alteração), 0 rejeitadas.",
        f"Importação interrompida (big.json): o arquivo está truncado ou inválido (byte {byte}). Antes disso: "
        f"{kept} sessões importadas ({kept} novas, 0 atualizadas, 0 sem alteração), 0 rejeitadas.",
    ]


def test_uploads_over_the_limit_are_refused_and_the_server_keeps_serving(stack, telegram, mongo, http):
    stack.server(IMPORT_MAX_BYTES="200000")
    content = generated_json(1600)
    assert len(content) > 2 * 200000

    refused = upload(http, "big.json", "application/json", content)
    assert refused.status_code == 413 and refused.json()["type"].endswith("/payload-too-large")
    assert mongo.import_jobs.count_documents({}) == 0

    def streamed() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield form_head("big.json")
        for start in range(0, len(content), 8192):
            yield content[start : start + 8192]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    refused_before = answered(stack.http_port, "POST", 413)
    try:
        status = http.post(
            "imports", content=streamed(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        ).status_code
    except httpx.TransportError:
        status = None  # the answer went out while the client was still sending: the connection was closed on it
    # Whether or not this client could read it, the server answered 413.
    assert status in (413, None)
    assert answered(stack.http_port, "POST", 413) == refused_before + 1
    job = eventually(lambda: mongo.import_jobs.find_one({"status": {"$ne": "running"}}), message="ended import")
    assert job["status"] == "failed" and job["failure"]["reason"] == "too-large"
    # What was read before the limit is imported whole, and nothing after it.
    whole = records_within(1600, job["failure"]["offset"])
    assert whole and job["counts"]["created"] == len(whole)
    assert stored_contacts(mongo) == sorted(whole)
    assert http.get("sessions").status_code == 200


def announced(nats_url: str, job: dict) -> list:
    return [m for m in outbound_messages(nats_url) if m.key == f"import:{job['_id']}"]


def test_a_client_gone_mid_upload_ends_its_import_as_failed(stack, telegram, mongo, clean_nats):
    stack.server()
    content = generated_json(1100)
    connection = raw_upload(stack.http_port, form_head() + content[: len(content) * 2 // 3], len(content) + 500)
    job = eventually(lambda: mongo.import_jobs.find_one(), timeout=IMPORT_START_TIMEOUT, message="import started")
    # The job exists from the upload's first bytes; leave once its first batch is stored.
    eventually(lambda: mongo.import_batches.find_one({"job_id": job["_id"]}), message="first batch stored")

    connection.close()

    job = eventually(lambda: mongo.import_jobs.find_one({"status": "failed"}), message="failed import")
    assert job["failure"]["reason"] == "interrupted"
    whole = records_within(1100, job["failure"]["offset"])
    assert len(whole) == job["counts"]["created"] and stored_contacts(mongo) == sorted(whole)
    assert mongo.messages.count_documents({}) == len(whole)  # whole sessions only: one message each
    assert len(eventually(lambda: announced(clean_nats.url, job), timeout=60, message="announcement")) == 1


def test_shutdown_mid_upload_finishes_the_batch_in_hand_and_the_file_sent_again_completes_it(
    stack, telegram, mongo, clean_nats, http
):
    server = stack.server()
    content = generated_json(1100)
    sent = len(content) // 2
    connection = raw_upload(stack.http_port, form_head() + content[:sent], len(content) + 500)
    eventually(lambda: mongo.import_jobs.find_one(), timeout=IMPORT_START_TIMEOUT, message="import started")

    assert server.stop(signal.SIGTERM) == 0
    answer = connection.recv(65536).decode()
    connection.close()

    head = answer.partition("\r\n\r\n")[0]
    assert head.startswith("HTTP/1.1 503"), answer
    assert "\r\nRetry-After: 5\r\n" in head and "\r\nLocation: /v1/imports/" in head, head
    job = mongo.import_jobs.find_one()
    assert job["status"] == "failed" and job["failure"]["reason"] == "shutdown"
    # Every record that arrived whole is stored, each with its message, and nothing else.
    assert job["failure"]["offset"] <= sent
    whole = records_within(1100, job["failure"]["offset"])
    assert job["counts"]["created"] == len(whole) and stored_contacts(mongo) == sorted(whole)
    assert mongo.messages.count_documents({}) == len(whole)  # no batch half-written
    assert len(announced(clean_nats.url, job)) == 1  # the last relay round published it before exit

    # As the answer says: the same file sent again imports the rest, and what was imported stays.
    stack.server()
    again = upload(http, "sessions.json", "application/json", content)
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "succeeded"
    assert again.json()["counts"] == {
        "received": 1100,
        "created": 1100 - len(whole),
        "updated": 0,
        "unchanged": len(whole),
        "rejected": 0,
    }
    assert stored_contacts(mongo) == sorted(str(s["contact_identifier"]) for s in generated(1100))
    assert mongo.messages.count_documents({}) == 1100
