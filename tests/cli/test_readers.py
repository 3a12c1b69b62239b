"""The CLI's chunked readers: the records the server's own parsers read, with their places."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from cli import readers
from cli.generate import generate_sessions
from cli.readers import Chunk, FileBroken, FileUnreadable, check_file, detect_format, read_ahead, read_chunks
from contract.importwriter import write_sessions
from server.importing.parsers import open_parser
from server.importing.records import ImportedSession, RecordInvalid, normalise_session

DATA = Path(__file__).resolve().parents[2] / "data"
PARSER_KIND = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}


def file_bytes(file_format: str, sessions: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    write_sessions(sessions, out, file_format)
    return out.getvalue().encode()


def chunks(content: bytes, file_format: str, chunk_size: int) -> list[Chunk]:
    return list(read_chunks(io.BytesIO(content), file_format, chunk_size))


def envelopes(chunk_list: list[Chunk]) -> list[dict[str, Any]]:
    return [json.loads(line) for chunk in chunk_list for line in chunk.lines]


def validated(raw: dict[str, Any], number: int) -> ImportedSession | str:
    try:
        return normalise_session(raw, record=number)
    except RecordInvalid as invalid:
        return str(invalid)


def server_sessions(content: bytes, file_format: str) -> list[ImportedSession | str]:
    parser = open_parser(PARSER_KIND[file_format])
    records = parser.feed(content) + parser.close()
    return [validated(record.raw, record.record) for record in records]


@pytest.mark.parametrize("file_format", ["json", "ndjson", "csv", "csv-messages"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_the_cli_reads_the_records_the_server_reads(file_format, chunk_size):
    sessions = list(generate_sessions(40, seed=21, flavour="sample"))
    content = file_bytes(file_format, sessions)

    found = envelopes(chunks(content, PARSER_KIND[file_format], chunk_size))

    assert [envelope["record"] for envelope in found] == list(range(1, 41))
    assert [validated(envelope["data"], envelope["record"]) for envelope in found] == server_sessions(
        content, file_format
    )


def test_the_sample_files_read_whole_and_the_same():
    from_json = envelopes(chunks((DATA / "sessions.json").read_bytes(), "json", 64))
    from_csv = envelopes(chunks((DATA / "sessions.csv").read_bytes(), "csv", 64))

    assert len(from_json) == len(from_csv) == 300
    assert [validated(e["data"], 1) for e in from_json] == [validated(e["data"], 1) for e in from_csv]


def test_chunks_hold_chunk_size_records_and_their_file_position():
    content = file_bytes("ndjson", list(generate_sessions(25, seed=2)))

    found = chunks(content, "ndjson", 10)

    assert [chunk.records for chunk in found] == [10, 10, 5]
    assert found[-1].position == len(content)
    assert all(line.endswith(b"\n") for chunk in found for line in chunk.lines)


def test_unreadable_ndjson_lines_travel_as_problems_with_their_line():
    good = json.dumps(next(generate_sessions(1)))
    content = f"{good}\n\n{{broken\n[1, 2]\n{good}\n".encode()

    found = envelopes(chunks(content, "ndjson", 100))

    assert [(e["record"], e["line"]) for e in found] == [(1, 1), (2, 3), (3, 4), (4, 5)]
    assert "data" in found[0] and "data" in found[3]
    assert found[1]["problem"].startswith("invalid JSON")
    assert found[2]["problem"] == "expected a JSON object, got array"


def test_csv_rows_with_the_wrong_number_of_fields_travel_as_problems_with_their_line():
    rows = file_bytes("csv", list(generate_sessions(3, seed=4))).decode().splitlines()
    content = "\n".join([*rows[:2], rows[2] + ",extra", rows[3]]).encode() + b"\n"

    found = envelopes(chunks(content, "csv", 100))

    assert [e["line"] for e in found] == [2, 3, 4]  # physical lines, the header being line 1
    problem = next(e for e in found if "problem" in e)
    assert problem == {"record": 2, "line": 3, "problem": "expected 5 fields as in the header, got 6"}
    parser = open_parser("csv")
    server = parser.feed(content) + parser.close()
    assert [(e["record"], e["line"], e.get("problem")) for e in found] == [
        (r.record, r.line, r.problem.message if r.problem else None) for r in server
    ]


def test_semicolons_a_bom_and_blank_cells_are_read_like_the_server_does():
    content = (
        '\ufeff_id;name;platform_type;contact_identifier;messages\n;Ana;telegram;"+55 11 99999 0001";\n'
    ).encode()

    (envelope,) = envelopes(chunks(content, "csv", 10))

    assert envelope["data"] == {
        "name": "Ana",
        "platform_type": "telegram",
        "contact_identifier": "+55 11 99999 0001",
        "messages": [],
    }


def test_a_contact_spanning_chunks_of_message_rows_stays_one_record():
    session = next(generate_sessions(1, messages_per_session=9, seed=8))
    content = file_bytes("csv-messages", [session])

    found = envelopes(chunks(content, "csv", 2))

    assert len(found) == 1 and len(found[0]["data"]["messages"]) == 9


def test_broken_json_ends_the_reading_after_the_chunks_before(tmp_path):
    content = file_bytes("json", list(generate_sessions(50, seed=6)))
    broken = content[: len(content) // 2] + b"]}oops"
    read: list[Chunk] = []

    with pytest.raises(FileBroken) as raised:
        read.extend(read_chunks(io.BytesIO(broken), "json", 5))

    assert sum(chunk.records for chunk in read) > 5
    assert raised.value.offset == len(broken)
    assert "invalid JSON after record" in raised.value.message


def test_an_unterminated_csv_quote_ends_the_reading():
    content = b'_id,name,platform_type,contact_identifier,messages\n,Ana,telegram,1,"[\n'

    with pytest.raises(FileBroken):
        chunks(content, "csv", 10)


def test_the_format_is_read_from_the_content(tmp_path):
    cases = {"a.json": b'\xef\xbb\xbf  [{"name": 1}]', "a.txt": b"{}\n{}\n", "a.csv": b"name;platform_type\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    assert [detect_format(tmp_path / name) for name in cases] == ["json", "ndjson", "csv"]

    for content, message in ((b"", "empty"), (b"\x89PNG\x00\x00", "PNG image"), (b"hello world\n", "neither")):
        (tmp_path / "bad").write_bytes(content)
        with pytest.raises(FileUnreadable, match=message):
            detect_format(tmp_path / "bad")


def test_a_csv_header_lacking_columns_is_found_before_reading(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"contact_identifier,name,message_content\n1,Ana,oi\n")

    with pytest.raises(FileUnreadable, match="platform_type, message_date"):
        check_file(path, "csv")
    check_file(path, "json")  # nothing to check before reading


def test_reading_ahead_gives_the_same_chunks_and_the_same_error():
    def produce():
        yield Chunk(lines=[b"1\n"])
        yield Chunk(lines=[b"2\n"])
        raise FileBroken("broken", 7)

    got: list[Chunk] = []
    with pytest.raises(FileBroken):
        got.extend(read_ahead(produce()))
    assert [chunk.lines for chunk in got] == [[b"1\n"], [b"2\n"]]


def test_numpy_values_are_sent_as_plain_json():
    chunk = Chunk()
    chunk.add(1, None, readers._plain_record({"a": __import__("numpy").int64(5), "b": float("nan")}))

    assert json.loads(chunk.lines[0]) == {"record": 1, "line": None, "data": {"a": 5}}
