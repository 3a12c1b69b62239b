"""The chunks the CLI sends into an import: NDJSON lines, each a record in an envelope.

The CLI reads the file (contract/csvlayouts.py, pandas, ijson) and knows where each record stands in
it, which the chunk alone cannot tell, so every line carries that place:

    {"record": 1204, "line": 1205, "data": {"name": ..., "messages": [...]}}
    {"record": 1205, "line": 1206, "problem": "invalid JSON: unexpected character"}

`record` is the record's 1-based position in the file, `line` its first line
when the CLI knows it (null otherwise), `data` the record as read, and
`problem` what made a record unreadable to the CLI. Reports then point into
the user's file, not into the chunk. A line that is no envelope is a client
bug, not a bad record: the chunk is refused.

A line is measured before it is parsed, as an NDJSON upload's is: one with more
JSON values than a record may hold is that record's problem (its place read
from the envelope's first keys, which the CLI writes first), never built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

from contract.importformat import FileFormatError, Line, Lines, read_envelope
from server.importing.limits import RecordLimits, embedded_values_problem, json_values
from server.importing.parsers import ParsedRecord
from server.importing.records import RecordError

# The envelope's own values beside its data's: an object, three keys, two numbers.
ENVELOPE_VALUES = 8
# The place at the head of an envelope as the CLI writes it (contract.importformat.envelope).
_ENVELOPE_PLACE = re.compile(rb'\{"record":\s*([0-9]{1,18}),\s*"line":\s*([0-9]{1,18}|null)\s*,')


class ChunkParser:
    """A SessionParser over one chunk's envelopes."""

    def __init__(self, limits: RecordLimits | None = None) -> None:
        self._limits = limits or RecordLimits.default()
        self._lines = Lines(self._limits.bytes)
        self._received = 0
        self._records = 0
        self._failure: FileFormatError | None = None

    def feed(self, chunk: bytes) -> list[ParsedRecord]:
        self._check_not_failed()
        offset, self._received = self._received, self._received + len(chunk)
        return self._collect(self._lines.split(chunk, offset))

    def close(self) -> list[ParsedRecord]:
        self._check_not_failed()
        records = self._collect(self._lines.flush())
        if not self._records:
            raise FileFormatError("the chunk is empty: expected one record envelope per line", 0, 1)
        return records

    def _collect(self, lines: Iterable[Line]) -> list[ParsedRecord]:
        records: list[ParsedRecord] = []
        try:
            for line in lines:
                record = self._record(line)
                if record is not None:
                    records.append(record)
                    self._records += 1
        except FileFormatError as failure:
            failure.records = records  # what came before the problem stands, as FileFormatError promises
            self._failure = failure
            raise
        return records

    def _check_not_failed(self) -> None:
        if self._failure is not None:
            raise FileFormatError(self._failure.message, self._failure.offset, self._failure.line)

    def _record(self, line: Line) -> ParsedRecord | None:
        text = line.data.strip()
        if not text:
            return None
        values = json_values(text)
        if values > self._limits.values + ENVELOPE_VALUES:
            place = _ENVELOPE_PLACE.match(text)
            if place is None:
                raise _not_an_envelope(line)
            number, at = int(place[1]), None if place[2] == b"null" else int(place[2])
            message = f"the record holds some {values} JSON values, more than {self._limits.values}; it was skipped"
            return ParsedRecord(number, at, None, {}, RecordError(number, at, None, "", message))
        try:
            envelope = read_envelope(orjson.loads(text))
        except orjson.JSONDecodeError:
            envelope = None
        if envelope is None:
            # Only a client that does not speak the protocol sends this: refuse the chunk.
            raise _not_an_envelope(line)
        number = envelope.record
        if envelope.problem is not None:
            return ParsedRecord(
                number, envelope.line, None, {}, RecordError(number, envelope.line, None, "", envelope.problem)
            )
        assert envelope.data is not None  # an envelope holds either data or a problem
        problem = embedded_values_problem(envelope.data, self._limits.values)
        if problem is not None:
            return ParsedRecord(number, envelope.line, None, {}, RecordError(number, envelope.line, None, "", problem))
        return ParsedRecord(number, envelope.line, None, envelope.data)


def _not_an_envelope(line: Line) -> FileFormatError:
    return FileFormatError(
        f"line {line.number} of the chunk is not a record envelope "
        "({record, line, data} or {record, line, problem}, nothing else)",
        line.offset,
        line.number,
    )
