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
from typing import TypeGuard

from server.importing.parsers import FileFormatError, ParsedRecord, open_parser
from server.importing.records import RecordError

MEDIA_TYPE = "application/x-ndjson"


class ChunkParser:
    """A SessionParser over one chunk's envelopes."""

    def __init__(self) -> None:
        self._lines = open_parser("ndjson")

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
        number, line = body.get("record"), body.get("line")
        data, problem = body.get("data"), body.get("problem")
        if envelope.problem is not None or not _whole(number) or not (line is None or _whole(line)) or not (
            isinstance(data, dict) != isinstance(problem, str)
        ):
            # Only a client that does not speak the protocol sends this: refuse the chunk.
            raise FileFormatError(f"line {envelope.line} of the chunk is not a record envelope "
                                  "({record, line, data} or {record, line, problem})", envelope.offset, envelope.line)
        if problem is not None:
            return ParsedRecord(number, line, None, {}, RecordError(number, line, None, "", problem))
        assert isinstance(data, dict)  # the envelope check above: no problem means data is an object
        return ParsedRecord(number, line, None, data)


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
