"""The chunks the CLI sends into an import: NDJSON lines, each a record in an envelope.

The CLI reads the file (contract/importformat.py, pandas, ijson) and knows where each record stands in
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

from contract.importformat import CHUNK_MEDIA_TYPE as MEDIA_TYPE
from contract.importformat import MAX_WHOLE, read_envelope, whole_number
from server.importing.parsers import FileFormatError, ParsedRecord, RecordLimits, open_parser
from server.importing.records import RecordError

__all__ = ["MAX_WHOLE", "MEDIA_TYPE", "ChunkParser", "whole_number"]


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

    def _record(self, line: ParsedRecord) -> ParsedRecord:
        envelope = read_envelope(line.raw) if line.problem is None else None
        if envelope is None:
            # Only a client that does not speak the protocol sends this: refuse the chunk.
            raise FileFormatError(
                f"line {line.line} of the chunk is not a record envelope "
                "({record, line, data} or {record, line, problem}, nothing else)",
                line.offset,
                line.line,
            )
        number = envelope.record
        if envelope.problem is not None:
            return ParsedRecord(
                number, envelope.line, None, {}, RecordError(number, envelope.line, None, "", envelope.problem)
            )
        assert envelope.data is not None  # an envelope holds either data or a problem
        return ParsedRecord(number, envelope.line, None, envelope.data)
