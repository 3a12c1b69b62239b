"""Push parsers for session files, fed the upload's bytes as they arrive.

An upload is streamed and may be far larger than memory, so each parser keeps
only the record being read: `feed` returns the records completed by a chunk,
`close` the last ones, and both raise FileFormatError when the file as a whole
cannot be read further (the records that call completed before the problem
ride on the error; the parser then stays failed). A record that is readable but wrong (a JSON item that is
not an object, a broken NDJSON line, a CSV row with the wrong number of fields)
is not fatal: it comes back as a ParsedRecord carrying its `problem`, and
`ParsedRecord.session()` reports it like any other invalid record.

Records come out the same whatever the chunk boundaries are, including chunks
that split a multi-byte character or a byte order mark.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

import ijson  # picks its C backend (yajl2_c) when it is built, the pure-Python one otherwise
import orjson
from ijson.common import ObjectBuilder

from contract.csvlayouts import CsvRecord, CsvRecords
from contract.importformat import (
    KINDS,
    FileFormatError,
    LeadingBom,
    Line,
    Lines,
)
from contract.values import json_type
from server.importing.limits import RecordLimits, embedded_values_problem, json_values
from server.importing.records import ImportedSession, RecordError, RecordInvalid, normalise_session

# yajl does not say where in a chunk it failed; feeding it windows of this size,
# aligned on absolute offsets, places an error within this many bytes whatever
# the network's chunk sizes are.
JSON_ERROR_WINDOW = 1024

_JSON_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    record: int  # 1-based position of the session in the file
    line: int | None  # physical line where the record starts (NDJSON, CSV)
    offset: int | None  # byte offset where the record starts (NDJSON, CSV)
    raw: dict[str, Any]  # {} when the record could not be read: see `problem`
    problem: RecordError | None = None

    def session(self) -> ImportedSession:
        """The validated session; raises RecordInvalid when the record is unreadable or invalid."""
        if self.problem is not None:
            raise RecordInvalid([self.problem])
        return normalise_session(self.raw, record=self.record, line=self.line, offset=self.offset)


class SessionParser(Protocol):
    def feed(self, chunk: bytes) -> list[ParsedRecord]: ...

    def close(self) -> list[ParsedRecord]: ...


def open_parser(kind: str, limits: RecordLimits | None = None) -> SessionParser:
    """A fresh parser for one file of the given kind ("json", "ndjson" or "csv")."""
    parsers: dict[str, type[_StreamParser]] = {"json": _JsonArrayParser, "ndjson": _NdjsonParser, "csv": _CsvParser}
    if kind not in parsers:
        raise ValueError(f"unknown file kind {kind!r}; expected one of {', '.join(KINDS)}")
    return parsers[kind](limits or RecordLimits.default())


class _RecordNumbers:
    """Numbers the records of one file in the order they are returned."""

    def __init__(self, max_values: int) -> None:
        self.count = 0
        self._max_values = max_values

    def record(self, raw: object, line: int | None, offset: int | None) -> ParsedRecord:
        if not isinstance(raw, dict):
            return self.unreadable(line, offset, f"expected a JSON object, got {json_type(raw)}")
        problem = embedded_values_problem(raw, self._max_values)
        if problem is not None:
            return self.unreadable(line, offset, problem)
        self.count += 1
        return ParsedRecord(self.count, line, offset, raw)

    def unreadable(self, line: int | None, offset: int | None, message: str) -> ParsedRecord:
        self.count += 1
        return ParsedRecord(self.count, line, offset, {}, RecordError(self.count, line, offset, "", message))


class _StreamParser:
    """What every kind shares: the BOM, byte accounting and record numbering."""

    def __init__(self, limits: RecordLimits) -> None:
        self._limits = limits
        self._bom = LeadingBom()
        self._received = 0
        self._numbers = _RecordNumbers(limits.values)
        self._failure: FileFormatError | None = None

    def feed(self, chunk: bytes) -> list[ParsedRecord]:
        self._check_not_failed()
        self._received += len(chunk)
        data = self._bom.strip(chunk)
        # What the BOM stripper returns is always the stream's tail, so its offset follows.
        return self._collect(self._parse(data, self._received - len(data)) if data else iter(()))

    def close(self) -> list[ParsedRecord]:
        self._check_not_failed()
        data = self._bom.flush()
        return self._collect(chain(self._parse(data, self._received - len(data)) if data else (), self._finish()))

    def _parse(self, data: bytes, offset: int) -> Iterator[ParsedRecord]:
        raise NotImplementedError

    def _finish(self) -> Iterator[ParsedRecord]:
        raise NotImplementedError

    def _collect(self, records: Iterable[ParsedRecord]) -> list[ParsedRecord]:
        collected: list[ParsedRecord] = []
        try:
            for record in records:
                collected.append(record)
        except FileFormatError as failure:
            failure.records = collected
            self._failure = failure
            raise
        return collected

    def _check_not_failed(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise FileFormatError(failure.message, failure.offset, failure.line)


class _JsonArrayParser(_StreamParser):
    """A JSON array of session objects, read item by item from yajl's events.

    yajl reports no positions, so records carry no line or offset: the record
    number locates them. The item being read is measured while it streams, as
    its bytes and values arrive, so a hostile item is stopped at the limit, not
    after it was built: an item that grows past the record limits is rejected
    and skipped (its values are dropped as they come); one that cannot be
    skipped in bounded memory (a single string longer than the limit, which
    yajl holds whole, or nesting past the depth limit, which yajl stacks) ends
    the file there.

    Numbers are read as yajl reads them (use_float): integers beyond 64 bits
    end the file as invalid JSON rather than reaching int(), whose digit limit
    the C backend cannot report (it crashes the process). No valid session
    holds such a number: identifiers that long are written as strings.
    """

    def __init__(self, limits: RecordLimits) -> None:
        super().__init__(limits)
        self._events = ijson.sendable_list()
        self._coroutine = ijson.basic_parse_coro(self._events, use_float=True)
        self._opened = False  # the array's '[' has been seen
        self._depth = 0  # 1 inside the array, 2 and more inside an item
        self._builder: ObjectBuilder | None = None
        self._item_start = 0  # offset of the window in which the current item began
        self._item_values = 0
        self._skipping = False  # the current item passed a limit: its events are dropped
        self._last_event = 0  # offset of the window in which yajl last produced an event
        self._fed = 0  # offset of the end of what yajl was given

    def _parse(self, data: bytes, offset: int) -> Iterator[ParsedRecord]:
        if not self._opened:
            body = data.lstrip(_JSON_WHITESPACE)
            if not body:
                return
            offset += len(data) - len(body)
            if not body.startswith(b"["):
                raise FileFormatError(f"expected a JSON array of sessions at byte {offset}", offset)
            self._opened = True
            self._last_event = offset
            data = body
        for window_offset, window in _windows(data, offset):
            self._fed = window_offset + len(window)
            try:
                self._coroutine.send(window)
            except ijson.JSONError as error:
                yield from self._take_events(window_offset)  # items the window completed before the error
                raise self._invalid(error, window_offset) from None
            yield from self._take_events(window_offset)
            self._check_token(window_offset)

    def _finish(self) -> Iterator[ParsedRecord]:
        if not self._opened:
            raise FileFormatError("the file is empty: expected a JSON array of sessions", 0)
        try:
            self._coroutine.close()
        except ijson.JSONError as error:
            reason = _yajl_reason(error)
            if "premature EOF" in reason or "Incomplete JSON" in reason:
                message = f"JSON ended before the array was closed at byte {self._received}"
            else:
                message = f"invalid JSON at the end of the file (byte {self._received}): {reason}"
            raise FileFormatError(message, self._received) from None
        yield from self._take_events(self._received)

    def _invalid(self, error: Exception, window_offset: int) -> FileFormatError:
        reason = _yajl_reason(error)
        # The whole window's start, even when the network split this window in two.
        near = window_offset - window_offset % JSON_ERROR_WINDOW
        if "overflow" in reason:
            reason += " (a number too large: write long identifiers as strings of digits)"
        return FileFormatError(f"invalid JSON near byte {near}: {reason}", near)

    def _take_events(self, window_offset: int) -> Iterator[ParsedRecord]:
        """Records that the events yajl produced complete; the current item measured."""
        events = list(self._events)
        del self._events[:]
        if events:
            self._last_event = window_offset
        limits = self._limits
        for event, value in events:
            opening = event in ("start_map", "start_array")
            closing = event in ("end_map", "end_array")
            if self._depth == 1 and not closing:  # an item begins
                self._item_start, self._item_values, self._skipping = window_offset, 0, False
                self._builder = ObjectBuilder()
            if opening:
                self._depth += 1
                if self._depth - 1 > limits.depth:
                    number = self._numbers.count + 1
                    raise FileFormatError(
                        f"record {number} nests deeper than {limits.depth} levels near byte {window_offset}",
                        window_offset,
                    )
            elif closing:
                self._depth -= 1
            if self._depth == 0:
                continue  # the array's own '[' and ']'
            if self._builder is not None and not self._skipping:
                self._item_values += 1
                self._builder.event(event, value)
                if self._item_values > limits.values:
                    yield self._oversized(f"holds more than {limits.values} values")
            if self._depth == 1 and not opening:  # the item has ended
                builder, self._builder = self._builder, None
                if builder is not None and not self._skipping:
                    yield self._numbers.record(builder.value, None, None)
        if self._builder is not None and not self._skipping and self._fed - self._item_start > limits.bytes:
            yield self._oversized(f"is longer than {limits.bytes} bytes")

    def _oversized(self, what: str) -> ParsedRecord:
        """Reject the current item now and drop the rest of it as it streams by."""
        self._skipping, self._builder = True, None
        return self._numbers.unreadable(
            None, self._item_start, f"the record starting near byte {self._item_start} {what}; it was skipped"
        )

    def _check_token(self, window_offset: int) -> None:
        """A single value (a string, a number) that yajl holds whole may not pass the record limit."""
        if self._fed - self._last_event > self._limits.bytes:
            number = self._numbers.count + (0 if self._skipping else 1)
            raise FileFormatError(
                f"a single JSON value longer than {self._limits.bytes} bytes starts after byte {self._last_event} "
                f"(record {number}); the file cannot be read past it",
                self._last_event,
            )


def _yajl_reason(error: Exception) -> str:
    """The first line of yajl's message, the same whatever the chunk boundaries.

    yajl appends the text around the error, cut at a fixed width; when that cut
    splits a multi-byte character every ijson backend gives the message as bytes
    instead of text, so it is decoded here before its first line is taken.
    """
    message = next(iter(error.args), "")
    if isinstance(message, bytes):
        message = message.decode("utf-8", errors="replace")
    return str(message).partition("\n")[0]


def _windows(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    start = 0
    while start < len(data):
        end = start + JSON_ERROR_WINDOW - (offset + start) % JSON_ERROR_WINDOW
        yield offset + start, data[start:end]
        start = end


class _NdjsonParser(_StreamParser):
    """One JSON object per line; blank lines are skipped, a broken line is that record's problem."""

    def __init__(self, limits: RecordLimits) -> None:
        super().__init__(limits)
        self._lines = Lines(limits.bytes)

    def _parse(self, data: bytes, offset: int) -> Iterator[ParsedRecord]:
        return (record for line in self._lines.split(data, offset) if (record := self._read(line)))

    def _finish(self) -> Iterator[ParsedRecord]:
        yield from (record for line in self._lines.flush() if (record := self._read(line)))
        if self._numbers.count == 0:
            raise FileFormatError("the file is empty: expected one JSON session object per line", 0, 1)

    def _read(self, line: Line) -> ParsedRecord | None:
        text = line.data.strip()
        if not text:
            return None
        # Counted before orjson builds them: a line of tiny values (`{},{},...`)
        # becomes some twenty times its size in Python objects.
        values = json_values(text)
        if values > self._limits.values:
            return self._numbers.unreadable(
                line.number,
                line.offset,
                f"the record holds some {values} JSON values, more than {self._limits.values}; it was skipped",
            )
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            return self._numbers.unreadable(line.number, line.offset, f"invalid JSON: {error}")
        return self._numbers.record(raw, line.number, line.offset)


class _CsvParser(_StreamParser):
    """CSV in either layout, read by the format's own reader (contract/csvlayouts.py)."""

    def __init__(self, limits: RecordLimits) -> None:
        super().__init__(limits)
        self._csv = CsvRecords(limits.bytes, limits.messages)

    def feed(self, chunk: bytes) -> list[ParsedRecord]:
        self._check_not_failed()
        return self._collect(self._number(record) for record in self._csv.feed(chunk))

    def close(self) -> list[ParsedRecord]:
        self._check_not_failed()
        return self._collect(self._number(record) for record in self._csv.close())

    def _number(self, record: CsvRecord) -> ParsedRecord:
        if record.problem is not None:
            return self._numbers.unreadable(record.line, record.offset, record.problem)
        return self._numbers.record(record.raw, record.line, record.offset)
