"""The `generate` command: files that import back cleanly, deterministic, written as they are made."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.generate import MAX_SESSIONS, generate, generate_sessions
from contract.importformat import detect_kind
from contract.importwriter import WRITER_FORMATS, write_sessions
from server.importing.parsers import ParsedRecord, open_parser
from server.importing.records import ImportedSession

DATA = Path(__file__).resolve().parents[2] / "data"
PARSER_KIND = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}


def run(*args: str) -> bytes:
    result = CliRunner().invoke(generate, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def parse(kind: str, data: bytes, chunk_size: int = 4096) -> list[ParsedRecord]:
    parser = open_parser(kind)
    records: list[ParsedRecord] = []
    for start in range(0, len(data), chunk_size):
        records += parser.feed(data[start : start + chunk_size])
    return records + parser.close()


def sessions(kind: str, data: bytes) -> list[ImportedSession]:
    return [record.session() for record in parse(kind, data)]


@pytest.mark.parametrize("flavour", ["plain", "sample"])
@pytest.mark.parametrize("file_format", WRITER_FORMATS)
def test_output_imports_back_without_errors(file_format: str, flavour: str) -> None:
    output = run("--sessions", "40", "--format", file_format, "--flavour", flavour, "--seed", "3")
    assert detect_kind(None, None, output[:4096]) == PARSER_KIND[file_format]
    imported = sessions(PARSER_KIND[file_format], output)
    assert len(imported) == 40
    assert len({session.contact_identifier for session in imported}) == 40


def test_plain_sessions_have_the_requested_messages() -> None:
    imported = sessions("ndjson", run("--sessions", "25", "--format", "ndjson", "--messages-per-session", "4"))
    assert {len(session.messages) for session in imported} == {4}
    assert all(message.id is not None for session in imported for message in session.messages)
    for session in imported:
        dates = [message.date for message in session.messages]
        assert dates == sorted(dates)


def test_every_format_holds_the_same_sessions() -> None:
    by_format = {
        f: sessions(PARSER_KIND[f], run("--sessions", "30", "--format", f, "--flavour", "sample"))
        for f in WRITER_FORMATS
    }
    assert by_format["ndjson"] == by_format["json"]
    assert by_format["csv"] == by_format["json"]
    assert [s.messages for s in by_format["csv-messages"]] == [s.messages for s in by_format["json"]]


def test_same_seed_same_file_other_seed_other_file() -> None:
    first = run("--sessions", "20", "--seed", "9", "--flavour", "sample")
    assert run("--sessions", "20", "--seed", "9", "--flavour", "sample") == first
    assert run("--sessions", "20", "--seed", "10", "--flavour", "sample") != first


def test_names_are_realistic_and_accented() -> None:
    names = [raw["name"] for raw in generate_sessions(500, seed=1)]
    assert sum(not name.isascii() for name in names) > 150
    assert all(2 <= len(name.split()) <= 5 for name in names)
    assert len(set(names)) > 400


def test_sample_flavour_holds_the_variants_of_real_files() -> None:
    raws = list(generate_sessions(300, flavour="sample"))
    assert [raw["name"] for raw in raws[:4]] == [
        "João Silva",
        "Ana Luíza Conceição",
        "Mariana Gonçalves",
        "Benjamin Lynch",
    ]
    assert {type(raw["_id"]) for raw in raws} == {str, dict}
    assert {type(raw["contact_identifier"]) for raw in raws} == {int, str}
    assert {raw["platform_type"] for raw in raws} == {"Telegram", "telegram", "TELEGRAM"}
    dates = [message["date"] for raw in raws for message in raw["messages"]]
    assert any(isinstance(date, dict) for date in dates)
    assert any(isinstance(date, str) and date.endswith("Z") for date in dates)
    assert any(isinstance(date, str) and date.endswith("-03:00") for date in dates)
    assert any(isinstance(date, str) and date[-6] not in "+-" and not date.endswith("Z") for date in dates)
    assert any("id" not in message for raw in raws for message in raw["messages"])


def test_committed_sample_files_are_this_generators_output() -> None:
    assert run("--sessions", "300", "--flavour", "sample", "--seed", "42") == (DATA / "sessions.json").read_bytes()
    csv_output = run("--sessions", "300", "--flavour", "sample", "--seed", "42", "--format", "csv")
    assert csv_output == (DATA / "sessions.csv").read_bytes()


def test_output_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "sessions.csv"
    result = CliRunner().invoke(generate, ["--sessions", "12", "--format", "csv-messages", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert len(sessions("csv", target.read_bytes())) == 12
    assert "wrote 12 sessions" in result.stderr


def test_zero_sessions_is_an_empty_array() -> None:
    assert parse("json", run("--sessions", "0")) == []


@pytest.mark.parametrize(
    "args", [["--sessions", "-1"], ["--format", "xml"], ["--messages-per-session", "-2"], ["--flavour", "odd"]]
)
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(generate, args)
    assert result.exit_code == 2
    assert "Error" in result.output


def test_sessions_are_produced_lazily() -> None:
    started = time.perf_counter()
    first = next(generate_sessions(MAX_SESSIONS))
    assert time.perf_counter() - started < 1
    assert first["messages"]


def test_sessions_are_written_as_they_come() -> None:
    out = io.StringIO()
    seen_before_each: list[int] = []

    def watched() -> Iterator[dict[str, Any]]:
        for raw in generate_sessions(5, messages_per_session=1):
            seen_before_each.append(out.getvalue().count('"_id"'))
            yield raw

    assert write_sessions(watched(), out, "ndjson") == 5
    assert seen_before_each == [0, 1, 2, 3, 4]
