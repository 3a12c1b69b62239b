"""The chunks the CLI sends into an import: NDJSON lines, each a record in an envelope.

The CLI reads the file (pandas, ijson) and knows where each record stands in
it, which the chunk alone cannot tell, so every line carries that place:

    {"record": 1204, "line": 1205, "data": {"name": ..., "messages": [...]}}
    {"record": 1205, "line": 1206, "problem": "invalid JSON: unexpected character"}

`record` is the record's 1-based position in the file, `line` its first line
when the CLI knows it (null otherwise), `data` the record as read, and
`problem` what made a record unreadable to the CLI. Reports then point into
the user's file, not into the chunk. A line that is no envelope is a client
bug, not a bad record: the chunk is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from server.importing.parsers import FileFormatError, ParsedRecord, RecordLimits, open_parser
from server.importing.records import RecordError

MEDIA_TYPE = "application/x-ndjson"
# 2**53 - 1: the largest whole number every JSON reader holds exactly.
MAX_WHOLE = 2**53 - 1
_ENVELOPE_KEYS = {"record", "line", "data", "problem"}


class ChunkParser:
    """A SessionParser over one chunk's envelopes."""

    def __init__(self, limits: RecordLimits | None = None) -> None:
        self._lines = open_parser("ndjson", limits)

    def feed(self, chunk: bytes) -> list[ParsedRecord]:
        return self._unwrap(self._lines.feed, chunk)

    def close(self) -> list[ParsedRecord]:
        return self._unwrap(self._lines.close)

    def _unwrap(self, step: Callable[..., list[ParsedRecord]], *args: bytes) -> list[ParsedRecord]:
        failure: FileFormatError | None = None
        try:
            envelopes = step(*args)
        except FileFormatError as error:
            envelopes, failure = error.records, error
        records = []
        for envelope in envelopes:
            try:
                records.append(self._record(envelope))
            except FileFormatError as malformed:
                failure = malformed
                break
        if failure is not None:
            failure.records = records  # what came before the problem stands, as FileFormatError promises
            raise failure
        return records

    def _record(self, envelope: ParsedRecord) -> ParsedRecord:
        body = envelope.raw
        number, line = whole_number(body.get("record")), body.get("line")
        line = None if line is None else whole_number(line) or False
        data, problem = body.get("data"), body.get("problem")
        if (
            envelope.problem is not None
            or not number
            or line is False
            or not set(body) <= _ENVELOPE_KEYS
            or not (isinstance(data, dict) != isinstance(problem, str))
        ):
            # Only a client that does not speak the protocol sends this: refuse the chunk.
            raise FileFormatError(
                f"line {envelope.line} of the chunk is not a record envelope "
                "({record, line, data} or {record, line, problem}, nothing else)",
                envelope.offset,
                envelope.line,
            )
        if problem is not None:
            return ParsedRecord(number, line, None, {}, RecordError(number, line, None, "", problem))
        assert isinstance(data, dict)  # the envelope check above: no problem means data is an object
        return ParsedRecord(number, line, None, data)


def whole_number(value: object, minimum: int = 1) -> int | None:
    """A whole number from JSON within [minimum, MAX_WHOLE], as an int; None otherwise.

    JSON has one number type, so 7.0 is the whole number 7 (JSON Schema agrees);
    true is no number, though Python's bool is an int. The bound keeps the value
    exact in every JSON reader and storable in BSON.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if minimum <= value <= MAX_WHOLE else None
