"""Push parsers: the same records whatever the chunking, and errors that say where."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli.generate import generate_sessions
from contract.importformat import FileFormatError, UnsupportedFileType, detect_kind
from contract.importwriter import write_sessions
from server.importing import limits
from server.importing.parsers import JSON_ERROR_WINDOW, ParsedRecord, open_parser
from server.importing.records import ImportedSession, RecordInvalid, normalise_session

DATA = Path(__file__).resolve().parents[3] / "data"
BOM = "\ufeff".encode()
PARSER_KIND = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}
HEADER = "_id,name,platform_type,contact_identifier,messages\n"
MESSAGE_HEADER = "contact_identifier,name,platform_type,message_id,message_content,message_date\n"

# Multi-byte characters of every length, and a line break inside a message, so
# chunk boundaries fall inside characters and inside quoted CSV fields.
AWKWARD_SESSION = {
    "_id": {"$oid": "603fd3c61ce2ab564307a73a"},
    "name": "Ørjan Conceição",
    "platform_type": "Telegram",
    "contact_identifier": "5585996199709",
    "messages": [
        {"id": "m-1", "content": 'Bom dia!\nO preço é 10 € 😊; tudo "certo"?', "date": "2021-03-03T19:43:38Z"},
        {"content": "Obrigada", "date": {"$date": 1614800618000}},
    ],
}


def session_dicts(count: int = 6, seed: int = 7) -> list[dict[str, Any]]:
    return [*generate_sessions(count, seed=seed, flavour="sample"), AWKWARD_SESSION]


def session_file(file_format: str, sessions: Iterable[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    write_sessions(sessions, out, file_format)
    return out.getvalue().encode()


def parse(kind: str, chunks: Iterable[bytes]) -> list[ParsedRecord]:
    parser = open_parser(kind)
    records: list[ParsedRecord] = []
    for chunk in chunks:
        records += parser.feed(chunk)
    return records + parser.close()


def parse_failing(kind: str, chunks: Iterable[bytes]) -> tuple[list[ParsedRecord], FileFormatError]:
    """The records read before the file broke, and the error."""
    parser = open_parser(kind)
    records: list[ParsedRecord] = []
    with pytest.raises(FileFormatError) as caught:
        for chunk in chunks:
            records += parser.feed(chunk)
        records += parser.close()
    return records + caught.value.records, caught.value


def parse_whole(kind: str, data: bytes) -> list[ParsedRecord]:
    return parse(kind, [data])


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def sessions_of(records: list[ParsedRecord]) -> list[ImportedSession]:
    return [record.session() for record in records]


def expected_sessions(sessions: list[dict[str, Any]]) -> list[ImportedSession]:
    return [normalise_session(raw, record=index) for index, raw in enumerate(sessions, 1)]


def without_source_id(sessions: list[ImportedSession]) -> list[ImportedSession]:
    return [dataclasses.replace(session, source_id=None) for session in sessions]


SMALL_FILES = {file_format: session_file(file_format, session_dicts()) for file_format in PARSER_KIND}


@pytest.mark.parametrize("file_format", PARSER_KIND)
def test_each_format_gives_the_generated_sessions(file_format: str) -> None:
    records = parse_whole(PARSER_KIND[file_format], SMALL_FILES[file_format])
    assert [record.record for record in records] == list(range(1, len(session_dicts()) + 1))
    expected = expected_sessions(session_dicts())
    if file_format == "csv-messages":  # that layout has no `_id` column
        expected = without_source_id(expected)
    assert sessions_of(records) == expected


@pytest.mark.parametrize("with_bom", [False, True], ids=["plain", "bom"])
@pytest.mark.parametrize("file_format", PARSER_KIND)
def test_one_byte_chunks_give_the_same_records(file_format: str, with_bom: bool) -> None:
    data = (BOM if with_bom else b"") + SMALL_FILES[file_format]
    kind = PARSER_KIND[file_format]
    assert parse(kind, [data[i : i + 1] for i in range(len(data))]) == parse_whole(kind, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), file_format=st.sampled_from(list(PARSER_KIND)), with_bom=st.booleans())
def test_chunk_boundaries_do_not_change_records(data: st.DataObject, file_format: str, with_bom: bool) -> None:
    content = (BOM if with_bom else b"") + SMALL_FILES[file_format]
    # Cuts near the start too, where the byte order mark and the header are.
    position = st.one_of(st.integers(0, 8), st.integers(0, len(content)))
    cuts = data.draw(st.lists(position, max_size=60), label="cuts")
    kind = PARSER_KIND[file_format]
    assert parse(kind, split(content, cuts)) == parse_whole(kind, content)


def broken_json() -> bytes:
    """The small JSON file with one message's key broken, past its first error window."""
    content = SMALL_FILES["json"]
    position = content.index(b'"content"', len(content) // 2)
    return content[:position] + b"#" + content[position + 1 :]


BROKEN_JSON = broken_json()


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, len(BROKEN_JSON)), max_size=30))
# A cut inside a multi-byte character just after the error: yajl's quoted
# context then ends mid-character and the backend hands its message over as bytes.
@example(cuts=[1698])
def test_chunk_boundaries_do_not_change_a_json_error(cuts: list[int]) -> None:
    broken = BROKEN_JSON
    records, error = parse_failing("json", split(broken, cuts))
    expected_records, expected_error = parse_failing("json", [broken])
    assert records == expected_records
    assert (error.message, error.offset) == (expected_error.message, expected_error.offset)


def test_sample_files_give_the_same_sessions_in_every_layout() -> None:
    json_records = parse_whole("json", (DATA / "sessions.json").read_bytes())
    csv_records = parse_whole("csv", (DATA / "sessions.csv").read_bytes())
    message_rows = session_file("csv-messages", (record.raw for record in json_records))
    message_records = parse_whole("csv", message_rows)

    from_json = sessions_of(json_records)
    assert len(from_json) == 300
    assert sessions_of(csv_records) == from_json
    assert sessions_of(message_records) == without_source_id(from_json)


def test_sample_file_holds_the_real_variants() -> None:
    text = (DATA / "sessions.json").read_text(encoding="utf-8")
    for variant in [
        '"$oid"',
        '"$date"',
        '"$numberLong"',
        '"contact_identifier":"',
        '"contact_identifier":8',
        '"TELEGRAM"',
        '"telegram"',
        '"Telegram"',
        'Z"',
        '-03:00"',
        '"messages":[]',
        "João Silva",
        "Ana Luíza Conceição",
        "Mariana Gonçalves",
        "Benjamin Lynch",
    ]:
        assert variant in text, variant
    assert (DATA / "sessions.json").stat().st_size < 500_000
    records = parse_whole("json", (DATA / "sessions.json").read_bytes())
    assert any(all(m.id is None for m in record.session().messages) and record.raw["messages"] for record in records)


# JSON


def test_truncated_json_reports_the_offset_and_keeps_earlier_records() -> None:
    content = SMALL_FILES["json"]
    lines = content.split(b"\n")  # "[", then one session per line
    cut = len(b"\n".join(lines[:4])) + 1 + len(lines[4]) // 2  # halfway through the fourth session
    records, error = parse_failing("json", split(content[:cut], range(0, cut, 100)))
    assert error.message == f"JSON ended before the array was closed at byte {cut}"
    assert error.offset == cut
    assert [record.raw for record in records] == [parse_whole("json", content)[index].raw for index in range(3)]


def test_broken_json_mid_file_names_a_nearby_offset() -> None:
    content = (DATA / "sessions.json").read_bytes()
    position = content.index(b'"name"', 60_000) + len(b'"name"')
    broken = content[:position] + b"#" + content[position + 1 :]
    records, error = parse_failing("json", split(broken, range(0, len(broken), 8192)))
    assert "invalid JSON near byte" in error.message
    assert error.offset is not None
    assert position - JSON_ERROR_WINDOW < error.offset <= position
    assert len(records) == broken[:position].count(b"\n") - 1  # every session before the broken one


@pytest.mark.parametrize("content", [b'{"name": "x"}', b'  "sessions"', b"\n\t 42"])
def test_json_top_level_must_be_an_array(content: bytes) -> None:
    _, error = parse_failing("json", [content])
    offset = len(content) - len(content.lstrip())
    assert error.message == f"expected a JSON array of sessions at byte {offset}"
    assert error.offset == offset


def test_json_item_that_is_not_an_object_is_that_records_problem() -> None:
    records = parse_whole("json", b'[{"name": "a"}, 17, ["x"], {"name": "b"}]')
    assert [record.record for record in records] == [1, 2, 3, 4]
    assert [record.problem.message if record.problem else None for record in records] == [
        None,
        "expected a JSON object, got number",
        "expected a JSON object, got array",
        None,
    ]
    with pytest.raises(RecordInvalid) as caught:
        records[1].session()
    assert [(error.record, error.field) for error in caught.value.errors] == [(2, "")]


def test_json_numbers_reach_validation_intact() -> None:
    (record,) = parse_whole("json", b'[{"contact_identifier": 85996199709, "other": 1.5}]')
    assert record.raw["contact_identifier"] == 85996199709


def test_json_garbage_after_the_array() -> None:
    _, error = parse_failing("json", [b'[{"name": "a"}] ['])
    assert error.offset == 0
    assert "trailing garbage" in error.message


def test_failed_parser_stays_failed() -> None:
    parser = open_parser("json")
    with pytest.raises(FileFormatError):
        parser.feed(b"{")
    with pytest.raises(FileFormatError, match="expected a JSON array"):
        parser.close()


# Empty files


@pytest.mark.parametrize("kind", ["json", "ndjson", "csv"])
@pytest.mark.parametrize("content", [b"", BOM, b" \r\n\n "])
def test_empty_file(kind: str, content: bytes) -> None:
    records, error = parse_failing(kind, [content])
    assert records == []
    assert error.message.startswith("the file is empty")


# NDJSON


def test_ndjson_reports_lines_and_skips_blank_ones() -> None:
    content = b'{"name": "a"}\r\n\n   \n{"name": \n[1]\n{"name": "\xc3\xa3"}'
    records = parse_whole("ndjson", content)
    assert [(r.record, r.line, r.offset) for r in records] == [(1, 1, 0), (2, 4, 20), (3, 5, 30), (4, 6, 34)]
    assert records[0].raw == {"name": "a"}
    assert records[1].problem is not None and records[1].problem.message.startswith("invalid JSON")
    assert records[1].problem.line == 4
    assert records[2].problem is not None and records[2].problem.message == "expected a JSON object, got array"
    assert records[3].raw == {"name": "ã"}


def test_ndjson_line_longer_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 50)
    records, error = parse_failing("ndjson", [b'{"name": "a"}\n', b'{"name": "' + b"x" * 60])
    assert len(records) == 1
    assert (error.line, error.offset) == (2, 14)


# CSV


def test_csv_semicolons_and_bom() -> None:
    rows = list(csv.reader(io.StringIO(SMALL_FILES["csv"].decode())))
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n").writerows(rows)
    content = BOM + out.getvalue().encode()
    assert sessions_of(parse_whole("csv", content)) == sessions_of(parse_whole("csv", SMALL_FILES["csv"]))


def test_csv_quoted_line_breaks_and_line_numbers() -> None:
    content = (
        HEADER
        + ',Ana,telegram,1,"[\n  {""content"": ""linha 1\\nlinha 2"",\n   ""date"": ""2021-03-03T19:43:38Z""}\n]"\n'
        + ",Bia,telegram,2,\n"
    ).encode()
    records = parse_whole("csv", content)
    assert [(r.record, r.line, r.offset) for r in records] == [(1, 2, len(HEADER)), (2, 6, content.index(b",Bia"))]
    (message,) = records[0].session().messages
    assert message.content == "linha 1\nlinha 2"
    assert records[1].session().messages == ()


def test_csv_missing_columns_are_named() -> None:
    _, error = parse_failing("csv", [b"_id,name,contact_identifier\n1,a,2\n"])
    assert error.line == 1
    assert error.offset == 0
    assert "platform_type, messages" in error.message


def test_csv_message_layout_missing_columns_are_named() -> None:
    _, error = parse_failing("csv", [b"contact_identifier;name;platform_type;message_content\n"])
    assert error.line == 1
    assert "lacks the column(s) message_date;" in error.message


def test_csv_header_case_spaces_order_and_extra_columns_do_not_matter() -> None:
    content = b" Messages ,Platform_Type,notes,NAME,Contact_Identifier\n[],telegram,x,Ana,12\n"
    (record,) = parse_whole("csv", content)
    assert record.session() == ImportedSession(None, "Ana", "telegram", "12", ())


def test_csv_invalid_utf8_names_the_byte() -> None:
    content = HEADER.encode() + b",Jo\xe3o,telegram,1,\n"
    _, error = parse_failing("csv", split(content, range(0, len(content), 7)))
    assert (error.offset, error.line) == (len(HEADER) + 3, 2)
    assert "invalid UTF-8" in error.message


def test_csv_unclosed_quote_at_the_end() -> None:
    content = (HEADER + ',Ana,telegram,1,\n,"Bia,telegram,2,\n').encode()
    records, error = parse_failing("csv", [content])
    assert [record.raw["name"] for record in records] == ["Ana"]
    assert (error.line, error.offset) == (3, content.index(b',"Bia'))


def test_csv_wrong_field_count_and_blank_rows() -> None:
    content = (HEADER + ",Ana,telegram,1,\n\n,,,,\n,Bia,telegram\n;;;;\n,Caio,telegram,3,[]").encode()
    records = parse_whole("csv", content)
    assert [(r.record, r.line) for r in records] == [(1, 2), (2, 5), (3, 6), (4, 7)]
    assert records[1].problem is not None
    assert records[1].problem.message == "expected 5 fields as in the header, got 3"
    assert records[2].problem is not None  # ";;;;" is one field when ',' separates
    assert records[3].session().name == "Caio"


def test_csv_literal_quote_inside_an_unquoted_field() -> None:
    content = (HEADER + ',Ana "Nina" Souza,telegram,1,\n,Bia,telegram,2,\n').encode()
    assert [r.session().name for r in parse_whole("csv", content)] == ['Ana "Nina" Souza', "Bia"]


def test_csv_message_rows_group_consecutive_rows_of_a_contact() -> None:
    content = (
        MESSAGE_HEADER
        + "1,Ana,Telegram,a1,Oi,2021-03-03T19:43:38Z\n"
        + "1,Ana,telegram,,Tudo bem?,2021-03-03T19:44:38Z\n"
        + "2,Bia,telegram,b1,Olá,2021-03-03T19:45:38Z\n"
        + "3,Caio,telegram,,,\n"
        + "1,Ana,telegram,a2,Voltei,2021-03-04T10:00:00Z\n"
    ).encode()
    records = parse_whole("csv", content)
    assert [(r.record, r.line) for r in records] == [(1, 2), (2, 4), (3, 5), (4, 6)]
    sessions = sessions_of(records)
    assert [(s.contact_identifier, [m.content for m in s.messages]) for s in sessions] == [
        ("1", ["Oi", "Tudo bem?"]),
        ("2", ["Olá"]),
        ("3", []),
        ("1", ["Voltei"]),
    ]
    assert sessions[0].messages[1].id is None


def test_csv_message_rows_of_a_long_history_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_MESSAGES_PER_RECORD", 2)
    rows = "".join(f"1,Ana,telegram,m{n},Oi {n},2021-03-03T19:43:3{n}Z\n" for n in range(5))
    records = parse_whole("csv", (MESSAGE_HEADER + rows).encode())
    assert [len(record.session().messages) for record in records] == [2, 2, 1]


def test_csv_message_rows_before_a_broken_row_stand() -> None:
    content = (MESSAGE_HEADER + '1,Ana,telegram,a1,Oi,2021-03-03T19:43:38Z\n1,Ana,telegram,a2,"Oi').encode()
    records, error = parse_failing("csv", [content])
    assert [len(record.session().messages) for record in records] == [1]
    assert error.line == 3


def test_open_parser_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="xml"):
        open_parser("xml")


# Detecting the kind


@pytest.mark.parametrize(
    ("filename", "content_type", "head", "kind"),
    [
        ("sessions.json", "application/json", b'[{"name": "a"}]', "json"),
        ("sessions.json", None, BOM + b"\n  [\n", "json"),
        ("export.json", None, b'{"name": "a"}\n{"name": "b"}\n', "ndjson"),  # mongoexport's default
        ("sessions.jsonl", None, b'{"name": "a"}', "ndjson"),
        ("sessions.csv", "text/csv", HEADER.encode(), "csv"),
        (None, None, BOM + MESSAGE_HEADER.replace(",", ";").encode(), "csv"),
        ("sessions.txt", None, HEADER.encode() + b",Jo\xc3", "csv"),  # ends inside "ã"
        ("sessions.CSV", None, b"", "csv"),
        (None, "application/x-ndjson; charset=utf-8", b"  ", "ndjson"),
        (None, None, b"", "json"),
    ],
)
def test_detect_kind(filename: str | None, content_type: str | None, head: bytes, kind: str) -> None:
    assert detect_kind(filename, content_type, head) == kind


@pytest.mark.parametrize(
    ("filename", "head", "fragment"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", "unsupported file type '.png'"),
        ("sessions.json", b"\x89PNG\r\n\x1a\n\x00\x00", "PNG image"),
        ("sessions.csv", b"PK\x03\x04\x14\x00", "ZIP archive"),
        (None, b"\x1f\x8b\x08\x00", "gzip"),
        (None, b"name,contact\x00\x00", "NUL bytes"),
        ("sessions.csv", "\ufeffname".encode("utf-16"), "UTF-16"),
        ("sessions.xlsx", HEADER.encode(), "'.xlsx'"),
        (None, b"name\xff,contact\n", "not UTF-8"),
        (None, b"just some words\nand more\n", "neither JSON"),
        (None, b"name,\x07contact\n", "control characters"),
    ],
)
def test_detect_kind_refuses_what_no_parser_reads(filename: str | None, head: bytes, fragment: str) -> None:
    with pytest.raises(UnsupportedFileType, match=re.escape(fragment)):
        detect_kind(filename, None, head)


def test_csv_quoted_first_field_spanning_lines() -> None:
    content = b'messages,name,platform_type,contact_identifier\n"[\n]",Ana,telegram,1\n"[]",Bia,telegram,2\n'
    records = parse_whole("csv", content)
    assert [(r.line, r.session().name) for r in records] == [(2, "Ana"), (4, "Bia")]


def test_csv_row_the_csv_module_cannot_read_is_that_records_problem() -> None:
    content = (HEADER + ",Ana,telegram,1,\n,B\ria,telegram,2,\n,Caio,telegram,3,\n").encode()  # a lone CR
    records = parse_whole("csv", content)
    assert [r.record for r in records] == [1, 2, 3]
    assert records[1].problem is not None
    assert records[1].problem.line == 3
    assert records[1].problem.message.startswith("unreadable CSV row")


def test_csv_quoted_field_left_open_is_cut_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_RECORD_BYTES", 100)
    content = (HEADER + ',Ana,telegram,1,\n,"Bia,telegram,2,\n' + "mais uma linha\n" * 10).encode()
    records, error = parse_failing("csv", [content])
    assert [r.raw["name"] for r in records] == ["Ana"]
    assert (error.line, error.offset) == (3, content.index(b',"Bia'))
    assert "not closed within 100 bytes" in error.message


def test_csv_message_rows_around_a_broken_row_keep_their_order() -> None:
    content = (
        MESSAGE_HEADER
        + "1,Ana,telegram,a1,Oi,2021-03-03T19:43:38Z\n"
        + "1,Ana,telegram,a2,Oi de novo,2021-03-03T19:44:38Z\n"
        + "1,Ana,telegram\n"
        + "2,Bia,telegram,b1,Olá,2021-03-03T19:45:38Z\n"
    ).encode()
    records = parse_whole("csv", content)
    assert [(r.record, r.line, r.problem is None) for r in records] == [(1, 2, True), (2, 4, False), (3, 5, True)]
    assert len(records[0].session().messages) == 2


def test_csv_session_with_a_large_messages_cell() -> None:
    raw = next(generate_sessions(1, messages_per_session=1500))
    content = session_file("csv", [raw])
    assert len(content) > 200_000  # over the csv module's default field limit of 128 KiB
    (record,) = parse("csv", split(content, range(0, len(content), 65536)))
    assert len(record.session().messages) == 1500


def test_csv_message_rows_take_an_optional_kind_and_caption() -> None:
    content = (
        b"contact_identifier,name,platform_type,message_id,message_content,message_date,message_kind,message_caption\n"
        b"1,Ana,telegram,m1,Oi,2021-03-03T19:43:38Z,,\n"
        b"1,Ana,telegram,m2,,2021-03-03T19:44:38Z,document,a fatura\n"
    )
    (record,) = parse_whole("csv", content)
    assert [(m.kind, m.content) for m in record.session().messages] == [("text", "Oi"), ("document", "a fatura")]
