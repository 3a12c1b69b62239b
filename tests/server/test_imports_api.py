"""The imports API against a real server: uploads, reports, refusals, and chunked imports.

Every response is also validated against the OpenAPI document by the `api` client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from typing import Any

import pytest

from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from tests.harness import API_TOKEN, ROOT, conforms_to_openapi, eventually_async, outbound_messages_async, whole_records

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the tests share the module's in-process app

DATA = ROOT / "data"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# An import exists once its first batch (500 records) is stored: seconds on SecantusDB,
# far more with both cores busy; the upload waits on it meanwhile, so waiting longer costs nothing.
IMPORT_START_TIMEOUT = 60.0


def session_file(file_format: str, sessions: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    write_sessions(sessions, out, file_format)
    return out.getvalue().encode()


def sessions(count: int, seed: int = 11, messages: int = 2) -> list[dict[str, Any]]:
    return list(generate_sessions(count, seed=seed, messages_per_session=messages))


async def post_form(api, fields: dict[str, str], files: dict[str, tuple]):
    request = api.http.build_request("POST", "imports", data=fields, files=files)
    request.read()  # httpx streams forms; the contract check reads the request back
    response = await api.http.send(request)
    conforms_to_openapi(response)
    return response


async def upload(
    api,
    content: bytes,
    filename: str = "sessions.json",
    content_type: str = "application/json",
    channel: str | None = "@suporte",
):
    fields = {} if channel is None else {"channel": channel}
    return await post_form(api, fields, {"file": (filename, content, content_type)})


def stored(mongo, ignore: tuple[str, ...] = ()) -> tuple[list[dict], list[dict]]:
    """Sessions and messages as a client sees them, independent of ids and import order."""

    def comparable(doc: dict) -> dict:
        return {k: v for k, v in doc.items() if k not in ("_id", "activity_key", *ignore)}

    sessions = sorted(map(comparable, mongo.sessions.find()), key=lambda doc: doc["contact_identifier"])
    messages = sorted(
        ({k: v for k, v in doc.items() if k not in ("_id", "session_id")} for doc in mongo.messages.find()),
        key=lambda doc: doc["key"],
    )
    return sessions, messages


def contacts(mongo) -> list[str]:
    return sorted(session["contact_identifier"] for session in mongo.sessions.find())


async def assert_serving(api) -> None:
    assert (await api.http.get(f"{api.base_url}/health")).status_code == 200


def problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/" + kind), body
    return body


def announcements_of(nats_url: str, import_id: str):
    """A check for `eventually_async`: the announcements of one import on the outbound stream."""

    async def announcements() -> list:
        return [m for m in await outbound_messages_async(nats_url) if m.key == f"import:{import_id}"]

    return announcements


# --- uploads ---------------------------------------------------------------------


async def test_json_upload_imports_every_session_and_reports_it(api, mongo):
    response = await upload(api, (DATA / "sessions.json").read_bytes())

    assert response.status_code == 202, response.text
    report = response.json()
    assert report["status"] == "succeeded"
    assert report["counts"] == {"received": 300, "created": 300, "updated": 0, "unchanged": 0, "rejected": 0}
    assert report["format"] == "json" and report["source"] == "sessions.json" and report["channel"] == "@suporte"
    assert report["errors"] == [] and report["failure"] is None
    started, finished = (dt.datetime.fromisoformat(report[name]) for name in ("started_at", "finished_at"))
    assert report["duration_seconds"] == round((finished - started).total_seconds(), 3)
    assert mongo.sessions.count_documents({}) == 300
    assert mongo.messages.count_documents({}) == 853  # data/README.md
    assert response.headers["Location"] == f"/v1/imports/{report['id']}"
    assert (await api.get(f"imports/{report['id']}")).json() == report


async def test_csv_gives_the_same_sessions_as_json_and_reimporting_changes_nothing(api, mongo):
    assert (await upload(api, (DATA / "sessions.json").read_bytes())).status_code == 202
    from_json = stored(mongo)

    again = (await upload(api, (DATA / "sessions.csv").read_bytes(), "sessions.csv", "text/csv")).json()
    assert again["counts"] == {"received": 300, "created": 0, "updated": 0, "unchanged": 300, "rejected": 0}
    assert again["format"] == "csv"
    assert stored(mongo) == from_json

    mongo.sessions.delete_many({})
    mongo.messages.delete_many({})
    assert (await upload(api, (DATA / "sessions.csv").read_bytes(), "sessions.csv", "text/csv")).status_code == 202
    assert stored(mongo) == from_json


async def test_one_message_per_row_csv_and_ndjson_import_like_json(api, mongo):
    generated = sessions(30)
    await upload(api, session_file("json", generated))
    expected = stored(mongo, ignore=("source_id",))  # a message per row leaves no room for `_id`

    for file_format, name in (("csv-messages", "export.csv"), ("ndjson", "export.ndjson")):
        mongo.sessions.delete_many({})
        mongo.messages.delete_many({})
        report = (await upload(api, session_file(file_format, generated), name, "application/octet-stream")).json()
        assert report["counts"]["created"] == 30, report
        assert stored(mongo, ignore=("source_id",)) == expected


async def test_bad_records_are_reported_by_record_line_and_field_and_the_rest_imported(api, mongo):
    good = sessions(4)
    missing_name = {**good[1], "name": None}
    bad_date = {**good[2], "messages": [{"id": "x", "content": "oi", "date": "ontem"}]}
    lines = [
        json.dumps(good[0]),
        json.dumps(missing_name),
        "[1, 2]",
        "{broken",
        json.dumps(bad_date),
        json.dumps(good[3]),
    ]
    content = ("\n".join(lines) + "\n").encode()

    report = (await upload(api, content, "bad.ndjson", "application/x-ndjson")).json()

    assert report["status"] == "succeeded"
    assert report["counts"] == {"received": 6, "created": 2, "updated": 0, "unchanged": 0, "rejected": 4}
    where = [(e["record"], e["line"], e["field"]) for e in report["errors"]]
    assert where == [(2, 2, "name"), (3, 3, None), (4, 4, None), (5, 5, "messages[0].date")]
    assert report["errors"][0]["offset"] == len(lines[0]) + 1
    assert "required" in report["errors"][0]["message"]
    assert mongo.sessions.count_documents({}) == 2


async def test_bad_csv_rows_are_reported_by_line(api, mongo):
    rows = session_file("csv", sessions(3)).decode().splitlines()
    rows[2] = rows[2].replace(",Telegram,", ",Tele gram,")
    content = ("\n".join([*rows, "only,three,fields"]) + "\n").encode()

    report = (await upload(api, content, "bad.csv", "text/csv")).json()

    assert report["counts"]["rejected"] == 2 and report["counts"]["created"] == 2
    assert [(e["line"], e["field"]) for e in report["errors"]] == [(3, "platform_type"), (5, None)]
    assert "expected 5 fields" in report["errors"][1]["message"]


async def test_truncated_json_fails_at_its_end_and_keeps_the_records_before(api, mongo):
    content = session_file("json", sessions(700, messages=1))
    lines = content.split(b"\n")
    cut = len(b"\n".join(lines[:651])) + 40  # inside the 651st session (line 652 of the file)

    response = await upload(api, content[:cut])

    assert response.status_code == 202
    report = response.json()
    assert report["status"] == "failed"
    assert report["failure"]["reason"] == "invalid-file"
    assert report["failure"]["offset"] == cut
    assert str(cut) in report["failure"]["message"]
    assert report["counts"]["created"] == 650
    assert report["failure"]["imported_before_failure"] == 650
    assert mongo.sessions.count_documents({}) == 650
    assert (await api.get(f"imports/{report['id']}")).json()["status"] == "failed"
    await assert_serving(api)


async def test_broken_json_fails_near_the_break(api, mongo):
    content = session_file("json", sessions(200, messages=1))
    at = content.index(b"\n", len(content) // 2) + 1
    broken = content[:at] + b"{oops}" + content[at:]

    report = (await upload(api, broken)).json()

    assert report["status"] == "failed"
    assert abs(report["failure"]["offset"] - at) <= 1024  # within the parser's error window
    whole = whole_records(content[:at])  # every record before the break, and none after it
    assert report["counts"] == {
        "received": len(whole),
        "created": len(whole),
        "updated": 0,
        "unchanged": 0,
        "rejected": 0,
    }
    assert contacts(mongo) == sorted(str(record["contact_identifier"]) for record in whole)


async def test_a_client_leaving_after_the_file_broke_gets_its_import_ended_with_the_cause(api, mongo):
    content = session_file("json", sessions(1400, messages=1))
    at = content.index(b"\n", len(content) // 2) + 1  # past the first batch: the import exists
    broken = content[:at] + b"{oops}"
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="channel"\r\n\r\n@suporte\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.json"\r\n\r\n'
    ).encode()
    _, connection = await asyncio.open_connection("127.0.0.1", api.port)
    connection.write(
        f"POST /v1/imports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + len(content)}\r\n\r\n".encode()
        + head
        + broken
    )
    await connection.drain()
    await eventually_async(lambda: mongo.import_jobs.find_one(), timeout=IMPORT_START_TIMEOUT, message="import started")
    connection.close()  # the rest of the body never comes

    job = await eventually_async(lambda: mongo.import_jobs.find_one({"status": "failed"}), message="failed import")
    assert job["failure"]["reason"] == "invalid-file"  # the cause, not the client leaving
    whole = whole_records(content[:at])
    assert job["counts"]["created"] == len(whole)
    assert contacts(mongo) == sorted(str(record["contact_identifier"]) for record in whole)


async def test_an_empty_file_is_refused(api, mongo):
    body = problem(await upload(api, b""), 422, "empty-file")

    assert body["errors"] == [{"field": "file", "in": "body", "message": "empty"}]
    assert mongo.import_jobs.count_documents({}) == 0
    await assert_serving(api)


@pytest.mark.parametrize(
    "content, filename", [(PNG, "sessions.json"), (b"abc\x00\x01" * 100, "sessions.csv"), (b"[]", "sessions.xlsx")]
)
async def test_binary_and_unsupported_files_are_refused(api, mongo, content, filename):
    body = problem(await upload(api, content, filename), 415, "unsupported-file-type")

    assert body["detail"]
    assert mongo.import_jobs.count_documents({}) == 0
    await assert_serving(api)


async def test_a_csv_header_lacking_a_column_is_refused_with_its_line(api, mongo):
    content = b"_id,name,contact_identifier,messages\n603fd3c61ce2ab564307a73a,Ana,1,[]\n"

    body = problem(await upload(api, content, "sessions.csv", "text/csv"), 422, "invalid-file")

    assert "platform_type" in body["detail"]
    assert body["errors"][0]["field"] == "file" and body["errors"][0]["line"] == 1
    assert mongo.sessions.count_documents({}) == 0
    await assert_serving(api)


async def test_a_body_that_is_not_a_form_is_refused(api):
    response = await api.post(
        "imports", content=(DATA / "sessions.json").read_bytes(), headers={"Content-Type": "text/plain"}
    )

    problem(response, 415, "unsupported-media-type")
    await assert_serving(api)


async def test_each_operation_of_the_route_is_chosen_by_the_media_type_alone(api):
    chunked = await api.post(
        "imports", content=b'{"channel": "@suporte"}', headers={"Content-Type": "Application/JSON ; charset=utf-8"}
    )
    uploaded = await upload(api, b"[]")

    assert (chunked.status_code, chunked.json()["mode"]) == (201, "chunks")
    assert (uploaded.status_code, uploaded.json()["mode"]) == (202, "upload")
    assert chunked.headers["Location"] == f"/v1/imports/{chunked.json()['id']}"
    for content_type in ("application/jsonl", "multipart/mixed; boundary=x", ""):
        problem(
            await api.post("imports", content=b"{}", headers={"Content-Type": content_type}),
            415,
            "unsupported-media-type",
        )


async def test_a_form_without_channel_or_file_is_refused(api, mongo):
    body = problem(await upload(api, b"[]", channel=None), 400, "invalid-channel")
    assert "before the file" in body["detail"]

    body = problem(await post_form(api, {"channel": "@suporte"}, {"other": ("x", b"1")}), 400, "missing-field")
    assert body["errors"] == [{"field": "file", "in": "body", "message": "required"}]

    problem(await upload(api, b"[]", channel="suporte"), 400, "invalid-channel")
    problem(await upload(api, b"[]", channel="-5"), 400, "invalid-channel")
    assert mongo.import_jobs.count_documents({}) == 0


async def test_a_file_without_sessions_is_an_empty_import(api, mongo):
    report = (await upload(api, b"[ ]")).json()

    assert report["status"] == "succeeded" and report["counts"]["received"] == 0


async def test_channel_names_are_kept_lower_case(api):
    assert (await upload(api, b"[]", channel="@SuporteBR")).json()["channel"] == "@suportebr"
    assert (await upload(api, b"[]", channel="-1001234567890")).json()["channel"] == "-1001234567890"


async def test_unknown_imports_are_not_found(api):
    problem(await api.get("imports/65f1c0ffee00000000000099"), 404, "import-not-found")
    problem(await api.get("imports/nope"), 404, "import-not-found")


async def test_an_import_id_is_found_in_either_case_as_a_session_id_is(api):
    job = (await api.post("imports", json={"channel": "@suporte"})).json()

    assert (await api.get(f"imports/{job['id'].upper()}")).json()["id"] == job["id"]
    assert (await put_chunk(api, job["id"].upper(), 0, envelopes(sessions(1)))).status_code == 200
    done = await api.post(f"imports/{job['id'].upper()}/complete", json={"chunks": 1})
    assert done.json()["status"] == "succeeded"
    assert done.headers["Location"] == f"/v1/imports/{job['id']}"
    session_id = (await api.get("sessions")).json()["items"][0]["id"]
    assert (await api.get(f"sessions/{session_id.upper()}")).json()["id"] == session_id


async def test_each_ended_import_is_announced_once(api, nats_server):
    report = (await upload(api, session_file("json", sessions(3)))).json()

    found = await eventually_async(announcements_of(nats_server.url, report["id"]), message="announcement")
    assert len(found) == 1
    assert found[0].chat_id == "@suporte" and found[0].kind == "announcement"
    assert found[0].text == (
        "Importação concluída (sessions.json): 3 sessões importadas (3 novas, "
        "0 atualizadas, 0 sem alteração), 0 rejeitadas."
    )


# --- chunked imports (the CLI's protocol) --------------------------------------------


def envelopes(records: list[dict[str, Any]], first: int = 1) -> bytes:
    return "".join(
        json.dumps({"record": first + n, "line": None, "data": raw}) + "\n" for n, raw in enumerate(records)
    ).encode()


async def put_chunk(api, import_id: str, seq: int, body: bytes):
    return await api.request(
        "PUT", f"imports/{import_id}/chunks/{seq}", content=body, headers={"Content-Type": "application/x-ndjson"}
    )


async def test_a_chunked_import_applies_each_chunk_once_and_ends_on_completion(api, mongo, nats_server):
    generated = sessions(30)
    started = await api.post("imports", json={"channel": "@suporte", "source": "big.csv"})
    assert started.status_code == 201, started.text
    job = started.json()
    assert job["status"] == "running" and job["mode"] == "chunks" and job["next_chunk"] == 0
    assert started.headers["Location"] == f"/v1/imports/{job['id']}"

    first = await put_chunk(api, job["id"], 0, envelopes(generated[:10]))
    assert first.json() == {
        "chunk": 0,
        "repeated": False,
        "errors": [],
        "counts": {"received": 10, "created": 10, "updated": 0, "unchanged": 0, "rejected": 0},
    }
    repeated = await put_chunk(api, job["id"], 0, envelopes(generated[:10]))
    assert repeated.json() == {**first.json(), "repeated": True}
    problem(await put_chunk(api, job["id"], 2, envelopes(generated[20:])), 409, "chunk-out-of-order")
    problem(await api.post(f"imports/{job['id']}/complete", json={"chunks": 2}), 409, "chunks-missing")

    bad = {"record": 20, "line": 21, "problem": "expected 5 fields, saw 6"}
    second = await put_chunk(api, job["id"], 1, envelopes(generated[10:19], first=11) + json.dumps(bad).encode())
    assert second.json()["counts"]["rejected"] == 1
    assert second.json()["errors"] == [
        {"record": 20, "line": 21, "offset": None, "field": None, "message": "expected 5 fields, saw 6"}
    ]
    running = (await api.get(f"imports/{job['id']}")).json()
    assert running["status"] == "running" and running["next_chunk"] == 2
    assert running["counts"]["received"] == 20

    done = await api.post(f"imports/{job['id']}/complete", json={"chunks": 2})
    assert done.status_code == 200
    assert done.json()["status"] == "succeeded"
    assert done.json()["counts"] == {"received": 20, "created": 19, "updated": 0, "unchanged": 0, "rejected": 1}
    assert (await api.post(f"imports/{job['id']}/complete", json={"chunks": 2})).json() == done.json()
    problem(await put_chunk(api, job["id"], 2, envelopes(generated[20:])), 409, "import-ended")
    assert mongo.sessions.count_documents({}) == 19
    announced = await eventually_async(announcements_of(nats_server.url, job["id"]))
    assert len(announced) == 1 and "19 sessões importadas" in announced[0].text


async def test_a_running_import_is_reported_from_its_totals_not_by_summing_its_chunks(api, mongo):
    job = (await api.post("imports", json={"channel": "@suporte"})).json()
    for seq in range(3):
        assert (
            await put_chunk(api, job["id"], seq, envelopes(sessions(4, seed=seq), first=4 * seq + 1))
        ).status_code == 200
    # The chunks' records serve only to answer a repeat; the report does not read them.
    mongo.import_batches.delete_many({"seq": {"$lt": 3}})

    report = (await api.get(f"imports/{job['id']}")).json()

    assert report["status"] == "running"
    assert report["counts"] == {"received": 12, "created": 12, "updated": 0, "unchanged": 0, "rejected": 0}


async def test_a_chunked_import_the_client_found_broken_ends_as_failed(api, mongo):
    job = (await api.post("imports", json={"channel": "-1001234567890"})).json()
    await put_chunk(api, job["id"], 0, envelopes(sessions(5)))

    failure = {"message": "invalid JSON after record 5", "offset": 4096, "line": None}
    report = (await api.post(f"imports/{job['id']}/complete", json={"chunks": 1, "failure": failure})).json()

    assert report["status"] == "failed"
    assert report["failure"]["offset"] == 4096 and report["failure"]["imported_before_failure"] == 5


async def test_chunked_import_requests_are_checked(api):
    problem(await api.post("imports", json={"channel": "@suporte", "extra": 1}), 400, "invalid-body")
    problem(await api.post("imports", json={"channel": "@suporte", "source": 5}), 400, "invalid-body")
    problem(await api.post("imports", json={}), 400, "invalid-channel")
    upload_id = (await upload(api, b"[]")).json()["id"]
    problem(await put_chunk(api, upload_id, 0, b"{}\n"), 409, "not-chunked")
    problem(await api.post(f"imports/{upload_id}/complete", json={"chunks": 0}), 409, "not-chunked")
    job = (await api.post("imports", json={"channel": "@suporte"})).json()
    problem(
        await api.request("PUT", f"imports/{job['id']}/chunks/0", content=b"{}", headers={"Content-Type": "text/csv"}),
        415,
        "unsupported-media-type",
    )
    problem(await put_chunk(api, job["id"], 0, b""), 400, "invalid-chunk")
    problem(await api.post(f"imports/{job['id']}/complete", json={"chunks": -1}), 400, "invalid-body")
    problem(await api.post(f"imports/{job['id']}/complete", json={"chunks": 0, "failure": "x"}), 400, "invalid-body")
    body = problem(
        await put_chunk(api, job["id"], 0, envelopes(sessions(1)) + b'{"record": 2}\n'), 400, "invalid-chunk"
    )
    assert "line 2 of the chunk is not a record envelope" in body["detail"]
    problem(await put_chunk(api, job["id"], 0, b'{"record": 0, "data": {}}\n'), 400, "invalid-chunk")
    problem(await api.post("imports", json={"channel": "@suporte", "source": None}), 400, "invalid-body")


async def test_a_chunked_import_started_again_with_its_idempotency_key_is_the_same_import(api, mongo):
    start, key = {"channel": "@suporte", "source": "big.csv"}, {"Idempotency-Key": "import-4c1e"}
    first = await api.post("imports", json=start, headers=key)
    assert first.status_code == 201
    job_id = first.json()["id"]
    assert (await put_chunk(api, job_id, 0, envelopes(sessions(3)))).status_code == 200

    again = await api.post("imports", json=start, headers=key)

    # The same import, as it stands now: one chunk in, still running.
    assert again.status_code == 201 and again.headers["Location"] == f"/v1/imports/{job_id}"
    assert again.json()["id"] == job_id and again.json()["status"] == "running"
    assert again.json()["next_chunk"] == 1 and again.json()["counts"]["created"] == 3
    other = await api.post("imports", json=start, headers={"Idempotency-Key": "import-9d2f"})
    assert other.status_code == 201 and other.json()["id"] != job_id
    assert mongo.import_jobs.count_documents({}) == 2
    # Once ended, it is still the answer to its key.
    await api.post(f"imports/{job_id}/complete", json={"chunks": 1})
    assert (await api.post("imports", json=start, headers=key)).json()["status"] == "succeeded"


@pytest.mark.parametrize("changed", [{"channel": "@vendas"}, {"source": "other.csv"}])
async def test_an_import_key_sent_again_with_another_channel_or_source_is_a_422(api, mongo, changed):
    start, key = {"channel": "@suporte", "source": "big.csv"}, {"Idempotency-Key": "import-77aa"}
    assert (await api.post("imports", json=start, headers=key)).status_code == 201

    body = problem(await api.post("imports", json={**start, **changed}, headers=key), 422, "idempotency-key-reused")

    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert mongo.import_jobs.count_documents({}) == 1


async def test_a_malformed_import_key_is_a_400_and_starts_nothing(api, mongo):
    body = problem(
        await api.post("imports", json={"channel": "@suporte"}, headers={"Idempotency-Key": "k" * 201}),
        400,
        "invalid-header",
    )

    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert mongo.import_jobs.count_documents({}) == 0


async def test_an_upload_with_a_malformed_idempotency_key_is_a_400_and_imports_nothing(api, mongo):
    bad = {"Idempotency-Key": "k" * 201}
    request = api.http.build_request(
        "POST", "imports", data={"channel": "@suporte"}, files={"file": ("s.json", b"[]", "application/json")}
    )
    request.headers.update(bad)
    request.read()
    problem(await api.http.send(request), 400, "invalid-header")
    assert mongo.import_jobs.count_documents({}) == 0
