"""Per-record limits enforced while a record streams, whatever the layout.

The limits are set small here (they are settings), and the hostile records are
generated lazily: each test proves the parser gives up after about the limit,
not after reading (or holding) the whole record.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from contract.importformat import FileFormatError
from server.importing.limits import RecordLimits
from server.importing.parsers import ParsedRecord, open_parser
from server.importing.records import RecordInvalid, normalise_session

LIMITS = RecordLimits(bytes=64 * 1024, depth=16, values=2000, messages=3)
SESSION = b'{"name": "Ana", "platform_type": "telegram", "contact_identifier": 1, "messages": []}'
CHUNK = 8192


def feed_until_failure(
    kind: str, pieces: Iterator[bytes], limits: RecordLimits = LIMITS
) -> tuple[list[ParsedRecord], FileFormatError, int]:
    """Feed pieces until the parser gives up; the records returned, the error and the bytes fed."""
    parser, records, fed = open_parser(kind, limits), [], 0
    for piece in pieces:
        fed += len(piece)
        try:
            records += parser.feed(piece)
        except FileFormatError as error:
            return records + error.records, error, fed
    try:
        records += parser.close()
    except FileFormatError as error:
        return records + error.records, error, fed
    raise AssertionError(f"the parser read {fed} bytes without failing; records: {records}")


def endless(head: bytes, unit: bytes, total: int) -> Iterator[bytes]:
    """`head`, then `unit` repeated up to `total` bytes, in CHUNK-sized pieces, never all held."""
    yield head
    piece = unit * (CHUNK // len(unit))
    for _ in range(total // len(piece)):
        yield piece


def test_a_huge_string_item_ends_the_file_after_about_the_limit() -> None:
    tracemalloc.start()
    records, error, fed = feed_until_failure("json", endless(b"[" + SESSION + b', "', b"x", 900 * 1024 * 1024))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert [r.raw["name"] for r in records] == ["Ana"]  # the record before stands
    assert "single JSON value longer than 65536 bytes" in error.message
    assert "(record 2)" in error.message
    assert error.offset is not None and error.offset <= len(SESSION) + 4
    assert fed < LIMITS.bytes + 3 * CHUNK  # stopped at the limit, not at 900 MB
    assert peak < 8 * LIMITS.bytes


def test_a_ten_million_deep_array_ends_the_file_at_the_depth_limit() -> None:
    records, error, fed = feed_until_failure("json", endless(b"[" + SESSION + b",", b"[", 10_000_000))

    assert len(records) == 1
    assert "nests deeper than 16 levels" in error.message
    assert fed <= len(SESSION) + 2 + CHUNK


def test_an_item_of_many_small_values_is_rejected_and_skipped_and_the_next_one_read() -> None:
    many = b'{"name": "Bia", "messages": [' + b"{}," * 50_000 + b"{}]}"
    parser = open_parser("json", LIMITS)
    records: list[ParsedRecord] = []
    tracemalloc.start()
    for data in (b"[" + SESSION + b",", many, b"," + SESSION + b"]"):
        for start in range(0, len(data), 4096):
            records += parser.feed(data[start : start + 4096])
    records += parser.close()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert [r.record for r in records] == [1, 2, 3]
    assert records[1].problem is not None and "holds more than 2000 values" in records[1].problem.message
    assert records[2].raw["name"] == "Ana"
    assert peak < 4 * len(many)  # the skipped item was never built whole


def test_an_item_longer_than_the_limit_is_rejected_by_its_bytes() -> None:
    limits = RecordLimits(bytes=4096, depth=16, values=1_000_000, messages=3)
    long_item = b'{"name": "Bia", "messages": [' + b'"abcdefghij",' * 1000 + b'"x"]}'
    parser = open_parser("json", limits)
    records = parser.feed(b"[" + SESSION + b"," + long_item + b"," + SESSION + b"]") + parser.close()

    assert [r.problem is None for r in records] == [True, False, True]
    assert "is longer than 4096 bytes" in records[1].problem.message


def test_numbers_too_large_for_64_bits_end_the_file_instead_of_crashing() -> None:
    # The C backend turns such a number into a Python int, whose 4,300-digit
    # limit it mishandles: the process died (SIGSEGV) before this was caught.
    records, error, _ = feed_until_failure(
        "json", iter([b"[" + SESSION + b', {"contact_identifier": ' + b"1" * 5000 + b"}]"])
    )
    assert len(records) == 1
    assert "integer overflow" in error.message and "strings of digits" in error.message


def test_message_rows_of_one_contact_are_cut_at_the_byte_limit() -> None:
    limits = RecordLimits(bytes=300, depth=16, values=1000, messages=1000)
    header = b"contact_identifier,name,platform_type,message_id,message_content,message_date\n"
    rows = b"".join(b"1,Ana,telegram,m%d,%s,2021-03-03T19:43:38Z\n" % (n, b"x" * 60) for n in range(12))
    parser = open_parser("csv", limits)
    records = parser.feed(header + rows) + parser.close()

    sizes = [len(r.session().messages) for r in records]
    assert sum(sizes) == 12 and max(sizes) < 12
    assert all(size * 100 <= 300 + 100 for size in sizes)


def test_message_rows_are_cut_at_the_message_limit_given() -> None:
    header = b"contact_identifier,name,platform_type,message_id,message_content,message_date\n"
    rows = b"".join(b"1,Ana,telegram,m%d,oi,2021-03-03T19:43:38Z\n" % n for n in range(7))
    parser = open_parser("csv", LIMITS)
    records = parser.feed(header + rows) + parser.close()

    assert [len(r.session().messages) for r in records] == [3, 3, 1]


@pytest.mark.parametrize("identifier", ["1" * 4301, "9" * 100_000, "+" + "0" * 5000 + "1" * 4400])
def test_a_contact_identifier_past_the_int_digit_limit_is_that_fields_error(identifier: str) -> None:
    with pytest.raises(RecordInvalid) as invalid:
        normalise_session(
            {"name": "Ana", "platform_type": "telegram", "contact_identifier": identifier, "messages": []},
            record=3,
            line=4,
        )
    (error,) = invalid.value.errors
    assert (error.record, error.line, error.field) == (3, 4, "contact_identifier")
    assert "longer than 20 digits" in error.message


def test_leading_zeros_do_not_count_against_the_digit_limit() -> None:
    session = normalise_session(
        {"name": "Ana", "platform_type": "telegram", "contact_identifier": "0" * 5000 + "85996199709", "messages": []},
        record=1,
    )
    assert session.contact_identifier == "85996199709"


def test_a_decimal_with_a_huge_exponent_is_refused_without_building_it() -> None:
    from decimal import Decimal

    with pytest.raises(RecordInvalid, match="longer than 20 digits"):
        normalise_session(
            {"name": "Ana", "platform_type": "telegram", "contact_identifier": Decimal("1E+999999999"), "messages": []},
            record=1,
        )


def test_a_csv_contact_identifier_past_the_int_digit_limit_is_that_records_error() -> None:
    content = (
        b"_id,name,platform_type,contact_identifier,messages\n,Ana,telegram," + b"7" * 5000 + b",\n,Bia,telegram,2,\n"
    )
    parser = open_parser("csv", LIMITS)
    records = parser.feed(content) + parser.close()

    with pytest.raises(RecordInvalid) as invalid:
        records[0].session()
    assert invalid.value.errors[0].field == "contact_identifier"
    assert records[1].session().contact_identifier == "2"
