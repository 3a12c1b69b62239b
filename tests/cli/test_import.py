"""The `import` and `sessions` commands against a real server."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from cli.generate import generate_sessions
from cli.root import cli
from contract.importwriter import write_sessions
from devstack.processes import free_port
from tests.harness import API_TOKEN, ROOT, whole_records

DATA = ROOT / "data"

Run = Callable[..., Result]


@pytest.fixture
def run(api_server, mongo, tmp_path: Path) -> Run:
    """`run("import", FILE, ...)`: the command, in-process, talking to the test server."""
    env = {"BALCAO_API_URL": f"http://127.0.0.1:{api_server.port}", "BALCAO_API_TOKEN": API_TOKEN}

    def invoke(*args: str, **extra_env: str) -> Result:
        command = [*args]
        if args and args[0] == "import":
            command += ["--state-dir", str(tmp_path / "state")]
        return CliRunner().invoke(cli, command, env={**env, **extra_env}, catch_exceptions=False)

    return invoke


def write(path: Path, file_format: str, count: int, **options) -> Path:
    out = io.StringIO()
    write_sessions(generate_sessions(count, **options), out, file_format)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_the_sample_files_import_and_a_second_import_changes_nothing(run, mongo, tmp_path):
    first = run("import", str(DATA / "sessions.json"), "--channel", "@suporte", "--chunk-size", "64")
    assert first.exit_code == 0, first.output
    assert "succeeded: 300 records, 300 created, 0 updated, 0 unchanged, 0 rejected" in first.stdout
    assert (mongo.sessions.count_documents({}), mongo.messages.count_documents({})) == (300, 853)

    second = run("import", str(DATA / "sessions.csv"), "--channel", "@suporte")
    assert second.exit_code == 0, second.output
    assert "300 records, 0 created, 0 updated, 300 unchanged" in second.stdout
    assert not list((tmp_path / "state").glob("*.json"))  # nothing left to resume


@pytest.mark.parametrize("file_format, name", [("ndjson", "s.ndjson"), ("csv-messages", "s.csv")])
def test_ndjson_and_message_rows_import(run, mongo, tmp_path, file_format, name):
    path = write(tmp_path / name, file_format, 30, messages_per_session=2)

    result = run("import", str(path), "--channel", "-1001234567890", "--chunk-size", "7")

    assert result.exit_code == 0, result.output
    assert (mongo.sessions.count_documents({}), mongo.messages.count_documents({})) == (30, 60)


def test_bad_records_are_listed_with_their_place(run, mongo, tmp_path):
    sessions = list(generate_sessions(3))
    lines = [json.dumps(sessions[0]), json.dumps({**sessions[1], "name": ""}), "{oops", json.dumps(sessions[2])]
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines) + "\n")

    result = run("import", str(path), "--channel", "@suporte")

    assert result.exit_code == 0
    assert "4 records, 2 created, 0 updated, 0 unchanged, 2 rejected" in result.stdout
    assert "record 2 (line 2): name: must not be empty" in result.stdout
    assert "record 3 (line 3): invalid JSON" in result.stdout


def test_a_broken_json_file_ends_the_import_as_failed_keeping_what_came_before(run, mongo, tmp_path):
    path = write(tmp_path / "s.json", "json", 300, messages_per_session=1)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) * 2 // 3])

    result = run("import", str(path), "--channel", "@suporte", "--chunk-size", "50")

    assert result.exit_code == 1
    assert "failed:" in result.stdout and "invalid JSON after record" in result.stdout
    job = mongo.import_jobs.find_one()
    assert job["status"] == "failed" and job["failure"]["reason"] == "invalid-file"
    whole = [str(r["contact_identifier"]) for r in whole_records(content[: len(content) * 2 // 3])]
    assert job["counts"] == {"received": len(whole), "created": len(whole), "updated": 0, "unchanged": 0, "rejected": 0}
    assert sorted(s["contact_identifier"] for s in mongo.sessions.find()) == sorted(whole)


def test_mistakes_a_user_can_fix_exit_2_with_a_message(run, mongo, tmp_path):
    sample = str(DATA / "sessions.json")
    missing_column = tmp_path / "x.csv"
    missing_column.write_text("contact_identifier,name\n1,Ana\n")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    cases = [
        (run("import", sample, "--channel", "suporte"), "expected @name"),
        (run("import", sample), "--channel is required"),
        (run("import", sample, "--resume"), "nothing to resume"),
        (
            run("import", sample, "--channel", "@suporte", BALCAO_API_TOKEN="wrong-token-0123456789"),
            "refused the token",
        ),
        (
            run("import", sample, "--channel", "@suporte", BALCAO_API_URL=f"http://127.0.0.1:{free_port()}"),
            "cannot reach the API",
        ),
        (run("import", str(missing_column), "--channel", "@suporte"), "lacks the column(s) platform_type"),
        (run("import", str(empty), "--channel", "@suporte"), "empty"),
        (run("import", str(tmp_path / "nope.json"), "--channel", "@suporte"), "does not exist"),
        (run("sessions", "finish", "nope"), "24 hexadecimal digits"),
        (run("sessions", "finish", "65f1c0ffee00000000000099"), "no open session"),
    ]
    for result, message in cases:
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
    assert mongo.import_jobs.count_documents({}) == 0


def test_sessions_are_listed_searched_and_finished(run, mongo):
    run("import", str(DATA / "sessions.json"), "--channel", "@suporte")

    found = run("sessions", "search", "joao silva")
    assert found.exit_code == 0, found.output
    assert "João Silva" in found.stdout and "telegram:85999529223" in found.stdout
    page = json.loads(run("sessions", "list", "--limit", "3", "--json").stdout)
    assert len(page["items"]) == 3 and page["next_cursor"]
    listed = run("sessions", "list", "--limit", "3")
    assert len(listed.stdout.splitlines()) == 4 and "more: --cursor" in listed.stderr

    session_id = json.loads(run("sessions", "search", "joao silva", "--json").stdout)["items"][0]["id"]
    finished = run("sessions", "finish", session_id)
    assert finished.exit_code == 0 and f"session {session_id} finished" in finished.stdout
    assert run("sessions", "search", "joao silva").stdout == ""


def reports_of_both_ways(run, api_server, mongo, path: Path) -> tuple[dict, dict]:
    """The report of `path` uploaded to the server, and of the same file sent by the CLI."""
    uploaded = httpx.post(
        f"http://127.0.0.1:{api_server.port}/v1/imports",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        data={"channel": "@suporte"},
        files={"file": (path.name, path.read_bytes(), "text/csv")},
        timeout=60,
    )
    assert uploaded.status_code == 202, uploaded.text
    run("import", str(path), "--channel", "@suporte", "--chunk-size", "2")
    job = mongo.import_jobs.find_one({"mode": "chunks"})
    sent = httpx.get(
        f"http://127.0.0.1:{api_server.port}/v1/imports/{job['_id']}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=60,
    )
    return uploaded.json(), sent.json()


def places(report: dict) -> list[tuple]:
    return [(e["record"], e["line"], e["field"], e["message"]) for e in report["errors"]]


def test_a_bad_csv_sent_by_the_cli_is_reported_at_the_lines_an_upload_of_it_is(run, api_server, mongo, tmp_path):
    good = [",Ana,telegram,1,[]", ",Bia,telegram,2,[]", ",Caio,telegram,3,[]"]
    message = '{""content"":""oi"",""date"":""2024-01-01T00:00:00Z""}'
    path = tmp_path / "bad.csv"
    path.write_text(
        "\n".join(
            [
                "_id,name,platform_type,contact_identifier,messages",
                good[0],
                ",Dora,telegram,4,[],extra",  # line 3: a field too many
                f',Eva,telegram,5,"[{message},',  # lines 4 and 5: one record, its quoted cell broken across lines
                f'{message}]"',
                ",Fabi,telegram",  # line 6: fields missing
                ",,telegram,7,[]",  # line 7: no name
                "",
                good[1],  # line 9, after a blank line
                ",Gil,telegram,,[]",  # line 10: no contact
                good[2],
            ]
        )
        + "\n"
    )

    uploaded, sent = reports_of_both_ways(run, api_server, mongo, path)

    assert places(uploaded) == [
        (2, 3, None, "expected 5 fields as in the header, got 6"),
        (4, 6, None, "expected 5 fields as in the header, got 3"),
        (5, 7, "name", "required"),
        (7, 10, "contact_identifier", "required"),
    ]
    assert places(sent) == places(uploaded)
    assert sent["counts"]["received"] == uploaded["counts"]["received"] == 8


def test_a_csv_broken_midway_fails_at_the_same_line_both_ways(run, api_server, mongo, tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('_id,name,platform_type,contact_identifier,messages\n,Ana,telegram,1,[]\n\n,Bia,telegram,2,"[\n]\n')

    uploaded, sent = reports_of_both_ways(run, api_server, mongo, path)

    assert uploaded["status"] == sent["status"] == "failed"
    assert uploaded["failure"]["line"] == sent["failure"]["line"] == 4
    assert uploaded["failure"]["message"] == sent["failure"]["message"]
    assert "inside a quoted field of the record starting at line 4" in sent["failure"]["message"]
