"""The import file format: one definition, read back the same by the server and the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.generate import generate_sessions
from cli.readers import FileUnreadable, detect_format, read_chunks
from contract import csvlayouts, importformat
from contract.importformat import UnsupportedFileType, detect_kind, envelope, read_envelope
from contract.importwriter import WRITER_FORMATS, WRITER_KINDS, write_sessions
from contract.values import channel_ref, object_id_text
from server.importing.parsers import open_parser
from server.importing.records import ImportedSession, RecordInvalid, normalise_session
from tests.harness import ROOT


def written(file_format: str, sessions: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    assert write_sessions(sessions, out, file_format) == len(sessions)
    return out.getvalue().encode()


def judged(raw: dict[str, Any], number: int) -> ImportedSession | str:
    try:
        return normalise_session(raw, record=number)
    except RecordInvalid as invalid:
        return str(invalid)


def read_by_server(content: bytes, kind: str, piece: int = 777) -> list[ImportedSession | str]:
    parser = open_parser(kind)
    records = []
    for start in range(0, len(content), piece):
        records += parser.feed(content[start : start + piece])
    records += parser.close()
    return [judged(record.raw, record.record) for record in records]


def read_by_cli(content: bytes, kind: str, chunk_size: int = 7) -> list[ImportedSession | str]:
    found = [json.loads(line) for chunk in read_chunks(io.BytesIO(content), kind, chunk_size) for line in chunk.lines]
    assert [item["record"] for item in found] == list(range(1, len(found) + 1))
    return [judged(item["data"], item["record"]) if "data" in item else item["problem"] for item in found]


@pytest.mark.parametrize("flavour", ["plain", "sample"])
@pytest.mark.parametrize("file_format", WRITER_FORMATS)
def test_written_sessions_read_back_equal_by_the_server_and_the_cli(file_format, flavour):
    sessions = list(generate_sessions(60, messages_per_session=3, seed=5, flavour=flavour))
    content = written(file_format, sessions)
    expected = [judged(session, number) for number, session in enumerate(sessions, start=1)]
    if file_format == "csv-messages":  # one message per row has no column for the session's _id
        expected = [dataclasses.replace(session, source_id=None) for session in expected]  # type: ignore[type-var]

    by_server = read_by_server(content, WRITER_KINDS[file_format])
    by_cli = read_by_cli(content, WRITER_KINDS[file_format])

    assert all(isinstance(session, ImportedSession) for session in expected)
    assert by_server == expected
    assert by_cli == expected


def test_the_format_modules_need_nothing_beyond_the_standard_library():
    code = (
        "import sys, contract.importformat, contract.csvlayouts, contract.importwriter, contract.values\n"
        "heavy = {'pandas', 'numpy', 'orjson', 'ijson', 'mongoengine', 'pymongo', 'bson', 'tornado', 'click'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


HEADS = {
    "array.json": b"\xef\xbb\xbf  [{}]",
    "lines.json": b'{"name": "a"}\n{"name": "b"}\n',  # mongoexport's NDJSON named .json
    "lines.txt": b"{}\n",
    "rows.csv": b"name;platform_type\n",
    "rows": b"_id,name\n",
    "book.xlsx": b"PK\x03\x04 whatever",
    "picture": b"\x89PNG\r\n\x1a\n",
    "nul.json": b"[\x00]",
    "control.csv": b"a,b\x01\n",
    "latin1.csv": b"name,caf\xe9\n",
    "prose.txt": b"hello world\n",
    "utf16.json": b"\xff\xfe[\x00",
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_cli_detects_a_file_kind_by_the_servers_rules(tmp_path: Path, name):
    path = tmp_path / name
    path.write_bytes(HEADS[name])
    try:
        server: str = detect_kind(name, None, HEADS[name])
    except UnsupportedFileType as refused:
        server = f"{name}: {refused}"

    try:
        cli = detect_format(path)
    except FileUnreadable as refused:
        cli = str(refused)

    assert cli == server


def test_kinds_are_read_from_the_content_and_unreadable_files_are_refused():
    assert [detect_kind(name, None, HEADS[name]) for name in ("array.json", "lines.json", "rows.csv")] == [
        "json",
        "ndjson",
        "csv",
    ]
    for name in ("book.xlsx", "picture", "nul.json", "control.csv", "latin1.csv", "prose.txt", "utf16.json"):
        with pytest.raises(UnsupportedFileType):
            detect_kind(name, None, HEADS[name])
    assert detect_kind("x.csv", None, b"  \n") == "csv"  # only whitespace: the name decides
    assert detect_kind(None, "application/x-ndjson; charset=utf-8", b"") == "ndjson"


def test_object_ids_are_read_in_either_case_as_lower_case():
    assert object_id_text("65F1C0FFEE00000000000001") == "65f1c0ffee00000000000001"
    assert object_id_text("65f1c0ffee00000000000001") == "65f1c0ffee00000000000001"
    for bad in (
        "65f1c0ffee0000000000000",
        "65f1c0ffee00000000000001 ",
        "zzf1c0ffee00000000000001",
        "٦5f1c0ffee00000000000001",
    ):
        assert object_id_text(bad) is None
    assert (
        normalise_session(
            {
                "_id": " 65F1C0FFEE00000000000001",
                "name": "Ana",
                "platform_type": "telegram",
                "contact_identifier": 1,
                "messages": [],
            },
            record=1,
        ).source_id
        == "65f1c0ffee00000000000001"
    )


def test_channels_have_one_spelling():
    assert channel_ref(" @SuporteBR ") == "@suportebr"
    assert channel_ref("-1001234567890") == "-1001234567890"
    for bad in ("suporte", "@abc", "@1abcde", "-200123", "@" + "a" * 33):
        assert channel_ref(bad) is None


def test_envelopes_read_back_and_anything_else_is_refused():
    data = {"name": "Ana"}
    assert read_envelope(envelope(3, 4, data)) == importformat.Envelope(3, 4, data, None)
    assert read_envelope(envelope(3, None, problem="bad")) == importformat.Envelope(3, None, None, "bad")
    assert read_envelope({"record": 1.0, "line": 2.0, "data": {}}) == importformat.Envelope(1, 2, {}, None)
    for bad in (
        {"record": 0, "data": {}},
        {"record": 1, "data": {}, "problem": "x"},
        {"record": 1},
        {"record": 1, "line": 0, "data": {}},
        {"record": True, "data": {}},
        {"record": 1, "data": [], "offset": 3},
        [1],
    ):
        assert read_envelope(bad) is None


def test_a_header_with_a_lone_carriage_return_is_a_file_format_error_at_line_1() -> None:
    # csv raises its own Error on a bare \r inside a field; found by the parser fuzzing.
    with pytest.raises(importformat.FileFormatError, match="unreadable CSV header") as raised:
        csvlayouts.read_csv_header("\r[")
    assert raised.value.line == 1
    parser = open_parser("csv")
    parser.feed(b"\r[")
    with pytest.raises(importformat.FileFormatError, match="unreadable CSV header"):
        parser.close()
