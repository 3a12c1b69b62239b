"""Property tests of the upload parsers: hostile bytes raise only the documented errors, and break nothing before them.

Documented: `feed` and `close` raise FileFormatError and nothing else;
`ParsedRecord.session()` raises RecordInvalid and nothing else. A file broken
at some byte keeps every record that ended before it, whatever the chunking.
Example counts stay modest so the module runs in seconds.
"""

from __future__ import annotations

import io
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.generate import generate_sessions
from contract.importformat import BOM, FileFormatError
from contract.importwriter import write_sessions
from server.importing.limits import RecordLimits
from server.importing.parsers import ParsedRecord, open_parser
from server.importing.records import ImportedSession, RecordInvalid, normalise_session

LAYOUTS = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}
# Small, so that fuzzing also crosses the limits, not only the syntax.
LIMITS = RecordLimits(bytes=2048, depth=8, values=200, messages=3)
EXAMPLES = 40
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SESSIONS = list(generate_sessions(6, seed=5, flavour="sample", messages_per_session=2))
# Bytes that matter to some parser: structure, quotes, escapes, delimiters, line ends, broken UTF-8, digits.
SHARP = st.sampled_from(
    [
        b"[",
        b"]",
        b"{",
        b"}",
        b'"',
        b"\\",
        b",",
        b";",
        b":",
        b"\n",
        b"\r",
        b"\xff",
        b"\xc3",
        b"\x00",
        b"9" * 40,
        b"-",
        b"1e999",
        b"null",
        b"\xef\xbb\xbf",
        b" ",
    ]
)
GARBAGE = st.lists(st.one_of(SHARP, st.binary(max_size=8)), max_size=12).map(b"".join)


def file_of(layout: str, sessions: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    write_sessions(sessions, out, layout)
    return out.getvalue().encode()


def record_ends(layout: str) -> tuple[bytes, list[int]]:
    """The file of SESSIONS, and for each record the byte offset at which the parser has it complete."""
    whole = file_of(layout, SESSIONS)
    ends = []
    for count in range(1, len(SESSIONS) + 1):
        prefix = file_of(layout, SESSIONS[:count])
        ends.append(len(os.path.commonprefix([whole, prefix])))
    if layout == "csv-messages":
        # A contact's rows make a record once the next contact's first row is read: ask for the whole next one.
        ends = [*ends[1:], len(whole) + 1]
    return whole, ends


FILES = {layout: record_ends(layout) for layout in LAYOUTS}
EXPECTED = [normalise_session(raw, record=index) for index, raw in enumerate(SESSIONS, 1)]


def parse_chunked(kind: str, data: bytes, cuts: list[int]) -> tuple[list[ParsedRecord], FileFormatError | None]:
    """Every record the parser returns, and its FileFormatError if it gave one; any other exception escapes."""
    bounds = [0, *sorted({cut % (len(data) + 1) for cut in cuts}), len(data)]
    parser, records = open_parser(kind, LIMITS), []
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            records += parser.feed(data[start:end])
        records += parser.close()
    except FileFormatError as error:
        return records + error.records, error
    return records, None


def sessions_or_problems(records: list[ParsedRecord]) -> list[ImportedSession | None]:
    """Each record's session, None for an invalid one; only RecordInvalid may come out of validation."""
    out: list[ImportedSession | None] = []
    for record in records:
        try:
            out.append(record.session())
        except RecordInvalid:
            out.append(None)
    return out


def same_session(got: ImportedSession | None, expected: ImportedSession) -> bool:
    return (
        got is not None
        and got.name == expected.name
        and got.messages == expected.messages
        and got.contact_identifier == expected.contact_identifier
    )


@FUZZ
@given(layout=st.sampled_from(sorted(LAYOUTS)), data=st.data())
def test_a_broken_file_keeps_the_records_before_the_break(layout: str, data: st.DataObject) -> None:
    whole, ends = FILES[layout]
    cut = data.draw(st.integers(0, len(whole)), label="cut")
    garbage = data.draw(GARBAGE, label="garbage")
    keep_tail = data.draw(st.booleans(), label="keep_tail")
    broken = whole[:cut] + garbage + (whole[cut:] if keep_tail else b"")
    if data.draw(st.booleans(), label="bom"):
        broken, ends = BOM + broken, [end + len(BOM) for end in ends]
        cut += len(BOM)
    cuts = data.draw(st.lists(st.integers(0, len(broken)), max_size=6), label="chunks")

    records, _ = parse_chunked(LAYOUTS[layout], broken, cuts)

    sessions = sessions_or_problems(records)
    kept = sum(end <= cut for end in ends)
    assert len(sessions) >= kept
    for got, expected in zip(sessions[:kept], EXPECTED[:kept], strict=True):
        assert same_session(got, expected)


@FUZZ
@given(
    kind=st.sampled_from(sorted(set(LAYOUTS.values()))),
    content=st.lists(st.one_of(SHARP, st.binary(max_size=16)), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 2000), max_size=5),
)
def test_arbitrary_bytes_raise_only_the_documented_errors(kind: str, content: bytes, cuts: list[int]) -> None:
    records, _ = parse_chunked(kind, content, cuts)
    sessions_or_problems(records)


def document_text(values: st.SearchStrategy) -> st.SearchStrategy:
    """JSON-like values with hostile numbers and nesting, written as the parsers' input text."""
    import json

    return values.map(lambda value: json.dumps(value, ensure_ascii=False))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(["9" * 5000, "0" * 30 + "1", "+55 85 99619 9709"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "platform_type",
                    "contact_identifier",
                    "messages",
                    "content",
                    "date",
                    "id",
                    "_id",
                    "$date",
                    "$oid",
                    "$numberLong",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


# Written out, as no JSON serialiser writes them: numbers past 64 bits and the
# int-str limit (the C backend crashed on these), huge exponents, deep nesting.
RAW_ITEMS = [
    "9" * 5000,
    '{"contact_identifier": ' + "9" * 4400 + "}",
    '{"contact_identifier": 1e999999999}',
    '{"contact_identifier": 1E+25}',
    "[" * 50 + "]" * 50,
    '{"messages": ' + "[" * 20 + "]" * 20 + "}",
]


@FUZZ
@given(
    items=st.lists(document_text(JSON_VALUES) | st.sampled_from(RAW_ITEMS), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 4000), max_size=4),
)
def test_any_json_items_give_records_or_their_problems(items: list[str], cuts: list[int]) -> None:
    array = ("[" + ",".join(items) + "]").encode()
    records, error = parse_chunked("json", array, cuts)
    sessions_or_problems(records)
    if error is None:
        assert len(records) == len(items)
    lines = "\n".join(items).encode()
    records, _ = parse_chunked("ndjson", lines, cuts)
    sessions_or_problems(records)


@FUZZ
@given(
    cells=st.lists(
        st.lists(st.text(max_size=20) | st.sampled_from(["9" * 5000, '"', '""', "\n", ";"]), min_size=6, max_size=6),
        max_size=6,
    ),
    layout=st.sampled_from(
        [
            "_id,name,platform_type,contact_identifier,messages,extra",
            "contact_identifier,name,platform_type,message_id,message_content,message_date",
        ]
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=4),
)
def test_any_csv_cells_give_records_or_their_problems(cells: list[list[str]], layout: str, cuts: list[int]) -> None:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(layout.split(","))
    writer.writerows(cells)
    records, _ = parse_chunked("csv", out.getvalue().encode(), cuts)
    sessions_or_problems(records)
