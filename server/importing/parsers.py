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

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import PurePath
from typing import Any, Protocol

import ijson  # picks its C backend (yajl2_c) when it is built, the pure-Python one otherwise
import orjson
from ijson.common import ObjectBuilder

from server.importing.records import ImportedSession, RecordError, RecordInvalid, json_type, normalise_session

KINDS = ("json", "ndjson", "csv")
BOM = b"\xef\xbb\xbf"
# Bounds the memory one record may take: a longer NDJSON line, or a CSV quoted
# field left open, is a broken file rather than a session.
MAX_RECORD_BYTES = 16 * 1024 * 1024
# Consecutive rows of one contact in the one-row-per-message CSV layout become
# one record of at most this many messages, so memory stays bounded when a
# contact has a huge history; the upsert merges the records of one contact.
MAX_MESSAGES_PER_RECORD = 1000
# A JSON array item is read value by value; these bound how deep it may nest and
# how many values it may hold, so that the Python objects built for one record
# stay within a small multiple of MAX_RECORD_BYTES (a file of `[{},{},...]`
# would otherwise make some twenty times its size in dicts).
MAX_RECORD_DEPTH = 64
MAX_RECORD_VALUES = 1_000_000
# yajl does not say where in a chunk it failed; feeding it windows of this size,
# aligned on absolute offsets, places an error within this many bytes whatever
# the network's chunk sizes are.
JSON_ERROR_WINDOW = 1024

SESSION_COLUMNS = ("_id", "name", "platform_type", "contact_identifier", "messages")
MESSAGE_COLUMNS = ("contact_identifier", "name", "platform_type", "message_id", "message_content", "message_date")
_OPTIONAL_COLUMNS = {"_id", "message_id"}
_DELIMITERS = (",", ";")
_JSON_WHITESPACE = b" \t\r\n"
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_EXTENSION_KINDS = {".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv", ".txt": None}
_CONTENT_TYPE_KINDS = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/csv": "csv",
}
_BINARY_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook is one)",
    b"\x1f\x8b": "a gzip archive",
    b"%PDF": "a PDF document",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\xd0\xcf\x11\xe0": "an old Office document (.xls)",
    b"\xff\xfe": "UTF-16 text (save it as UTF-8)",
    b"\xfe\xff": "UTF-16 text (save it as UTF-8)",
}


class FileFormatError(ValueError):
    """The file cannot be read past this point.

    Records returned before it stand. `records` holds those that the failing
    call to `feed` or `close` had completed before the problem: they are as
    good as any other, only the call could not return them.
    """

    def __init__(self, message: str, offset: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.line = line
        self.records: list[ParsedRecord] = []


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """What one record of an upload may take; the server's settings give the values."""

    bytes: int
    depth: int
    values: int
    messages: int

    @classmethod
    def default(cls) -> RecordLimits:
        return cls(MAX_RECORD_BYTES, MAX_RECORD_DEPTH, MAX_RECORD_VALUES, MAX_MESSAGES_PER_RECORD)


class UnsupportedFileType(ValueError):
    """The upload is not a JSON, NDJSON or CSV text file."""


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


def detect_kind(filename: str | None, content_type: str | None, head: bytes) -> str:
    """The kind of an upload, from its first bytes (pass at least 4 KiB when the file has them).

    The extension only turns away files no parser reads; the content decides
    between JSON, NDJSON and CSV because exports are often misnamed (mongoexport
    writes NDJSON to `.json` files). The name and the content type decide only
    when the head holds nothing but whitespace.
    """
    suffix = PurePath(filename).suffix.lower() if filename else ""
    if suffix and suffix not in _EXTENSION_KINDS:
        raise UnsupportedFileType(f"unsupported file type {suffix!r}: send a .json, .ndjson, .jsonl or .csv file")
    for signature, description in _BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise UnsupportedFileType(f"the file is {description}, not JSON or CSV text")
    if b"\x00" in head:
        raise UnsupportedFileType("the file is binary (it contains NUL bytes), not JSON or CSV text")
    text = _decode_head(head).removeprefix("\ufeff")
    body = text.lstrip()
    if not body:
        media_type = (content_type or "").split(";")[0].strip().lower()
        return _EXTENSION_KINDS.get(suffix) or _CONTENT_TYPE_KINDS.get(media_type) or "json"
    if body[0] == "[":
        return "json"
    if body[0] == "{":
        return "ndjson"
    if _CONTROL_CHARACTERS.search(text):
        raise UnsupportedFileType("the file holds control characters, not JSON or CSV text")
    header = body.split("\n", 1)[0]
    if any(delimiter in header for delimiter in _DELIMITERS):
        return "csv"
    raise UnsupportedFileType(
        "the file is neither JSON (starting with '[' or '{') nor CSV (a header line separated by ',' or ';')"
    )


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as error:
        # The head may end inside a character that the next chunk completes.
        if error.reason == "unexpected end of data" and error.start >= len(head) - 3:
            return head[: error.start].decode("utf-8")
        raise UnsupportedFileType(f"the file is not UTF-8 text (invalid byte at offset {error.start})") from None


class _LeadingBom:
    """Drops a UTF-8 byte order mark from the start of the stream, even one split across chunks."""

    def __init__(self) -> None:
        self._held = b""
        self._decided = False

    def strip(self, chunk: bytes) -> bytes:
        """The part of the stream not returned before, less a leading BOM."""
        if self._decided:
            return chunk
        self._held += chunk
        if len(self._held) < len(BOM) and BOM.startswith(self._held):
            return b""
        self._decided = True
        data, self._held = self._held, b""
        return data.removeprefix(BOM)

    def flush(self) -> bytes:
        self._decided = True
        data, self._held = self._held, b""
        return data


class _RecordNumbers:
    """Numbers the records of one file in the order they are returned."""

    def __init__(self) -> None:
        self.count = 0

    def record(self, raw: object, line: int | None, offset: int | None) -> ParsedRecord:
        if not isinstance(raw, dict):
            return self.unreadable(line, offset, f"expected a JSON object, got {json_type(raw)}")
        self.count += 1
        return ParsedRecord(self.count, line, offset, raw)

    def unreadable(self, line: int | None, offset: int | None, message: str) -> ParsedRecord:
        self.count += 1
        return ParsedRecord(self.count, line, offset, {}, RecordError(self.count, line, offset, "", message))


class _StreamParser:
    """What every kind shares: the BOM, byte accounting and record numbering."""

    def __init__(self, limits: RecordLimits) -> None:
        self._limits = limits
        self._bom = _LeadingBom()
        self._received = 0
        self._numbers = _RecordNumbers()
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
            reason = str(error).splitlines()[0]
            if "premature EOF" in reason or "Incomplete JSON" in reason:
                message = f"JSON ended before the array was closed at byte {self._received}"
            else:
                message = f"invalid JSON at the end of the file (byte {self._received}): {reason}"
            raise FileFormatError(message, self._received) from None
        yield from self._take_events(self._received)

    def _invalid(self, error: Exception, window_offset: int) -> FileFormatError:
        reason = str(error).splitlines()[0]
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


def _windows(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    start = 0
    while start < len(data):
        end = start + JSON_ERROR_WINDOW - (offset + start) % JSON_ERROR_WINDOW
        yield offset + start, data[start:end]
        start = end


@dataclass(frozen=True, slots=True)
class _Line:
    number: int  # 1-based
    offset: int
    data: bytes  # with its line terminator, if it had one

    def decode(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as error:
            offset = self.offset + error.start
            raise FileFormatError(f"invalid UTF-8 at byte {offset} (line {self.number})", offset, self.number) from None


class _Lines:
    """Splits the byte stream into physical lines.

    Splitting bytes rather than decoded text is safe because 0x0A never occurs
    inside a multi-byte UTF-8 sequence, and it keeps each line's byte offset.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._tail = bytearray()
        self._tail_offset = 0
        self._count = 0

    def split(self, data: bytes, offset: int) -> Iterator[_Line]:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._tail:
                self._tail += data[start : end + 1]
                yield self._line(self._tail_offset, bytes(self._tail))
                self._tail.clear()
            else:
                yield self._line(offset + start, data[start : end + 1])
            start = end + 1
        if start < len(data):
            if not self._tail:
                self._tail_offset = offset + start
            self._tail += data[start:]
            if len(self._tail) > self._max_bytes:
                number = self._count + 1
                raise FileFormatError(
                    f"line {number} is longer than {self._max_bytes} bytes", self._tail_offset, number
                )

    def flush(self) -> Iterator[_Line]:
        """The last line, when the file does not end with a line break."""
        if self._tail:
            yield self._line(self._tail_offset, bytes(self._tail))
            self._tail.clear()

    def _line(self, offset: int, data: bytes) -> _Line:
        self._count += 1
        return _Line(self._count, offset, data)


class _NdjsonParser(_StreamParser):
    """One JSON object per line; blank lines are skipped, a broken line is that record's problem."""

    def __init__(self, limits: RecordLimits) -> None:
        super().__init__(limits)
        self._lines = _Lines(limits.bytes)

    def _parse(self, data: bytes, offset: int) -> Iterator[ParsedRecord]:
        return (record for line in self._lines.split(data, offset) if (record := self._read(line)))

    def _finish(self) -> Iterator[ParsedRecord]:
        yield from (record for line in self._lines.flush() if (record := self._read(line)))
        if self._numbers.count == 0:
            raise FileFormatError("the file is empty: expected one JSON session object per line", 0, 1)

    def _read(self, line: _Line) -> ParsedRecord | None:
        text = line.data.strip()
        if not text:
            return None
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            return self._numbers.unreadable(line.number, line.offset, f"invalid JSON: {error}")
        return self._numbers.record(raw, line.number, line.offset)


class _CsvParser(_StreamParser):
    """CSV in either layout, chosen by the header; ',' or ';' sniffed from the header line.

    Physical lines are gathered until the quotes balance, then the stdlib csv
    module reads the complete record, so quoted fields may hold line breaks.
    """

    def __init__(self, limits: RecordLimits) -> None:
        super().__init__(limits)
        # The csv module refuses fields over 128 KiB by default, and the messages
        # cell of a long session is larger. The limit is process-wide; raising it
        # to the bound this parser enforces anyway harms no other reader.
        if csv.field_size_limit() < limits.bytes:
            csv.field_size_limit(limits.bytes)
        self._lines = _Lines(limits.bytes)
        self._layout: _CsvLayout | None = None
        self._delimiter = ","
        self._pending: list[str] = []  # physical lines of a record whose quoted field is still open
        self._pending_bytes = 0
        self._start: _Line | None = None  # first line of the record being gathered
        self._inside_quotes = False

    def _parse(self, data: bytes, offset: int) -> Iterator[ParsedRecord]:
        for line in self._lines.split(data, offset):
            yield from self._take(line)

    def _finish(self) -> Iterator[ParsedRecord]:
        for line in self._lines.flush():
            yield from self._take(line)
        if self._start is not None:
            if self._layout is not None:
                yield from self._layout.finish()  # the rows read before the broken record stand
            raise FileFormatError(
                f"the file ended inside a quoted field of the record starting at line {self._start.number}",
                self._start.offset,
                self._start.number,
            )
        if self._layout is None:
            raise FileFormatError("the file is empty: expected a CSV header line", 0, 1)
        yield from self._layout.finish()

    def _take(self, line: _Line) -> list[ParsedRecord]:
        text = line.decode()
        if self._layout is None:
            if text.strip():
                self._read_header(text, line)
            return []
        if self._start is None:
            self._start = line
        self._pending.append(text)
        self._pending_bytes += len(line.data)
        self._inside_quotes = _continues_quoted_field(text, self._delimiter, self._inside_quotes)
        if self._inside_quotes:
            if self._pending_bytes > self._limits.bytes:
                raise FileFormatError(
                    f"the quoted field of the record starting at line {self._start.number} "
                    f"is not closed within {self._limits.bytes} bytes",
                    self._start.offset,
                    self._start.number,
                )
            return []
        start, lines, start_bytes = self._start, self._pending, self._pending_bytes
        self._start, self._pending, self._pending_bytes = None, [], 0
        try:
            fields = next(csv.reader(lines, delimiter=self._delimiter), [])
        except csv.Error as error:
            return self._layout.broken_row(start.number, start.offset, f"unreadable CSV row: {error}")
        return self._layout.row(fields, start.number, start.offset, start_bytes)

    def _read_header(self, text: str, line: _Line) -> None:
        self._delimiter = _header_delimiter(text)
        columns = [column.strip().lower() for column in next(csv.reader([text], delimiter=self._delimiter))]
        layout_type = _MessageRows if "messages" not in columns and _mentions_message_columns(columns) else _SessionRows
        required = [column for column in layout_type.columns if column not in _OPTIONAL_COLUMNS]
        missing = [column for column in required if column not in columns]
        if missing:
            raise FileFormatError(
                f"the CSV header lacks the column(s) {', '.join(missing)}; expected "
                f"{','.join(SESSION_COLUMNS)} (one session per row) or "
                f"{','.join(MESSAGE_COLUMNS)} (one message per row)",
                line.offset,
                line.number,
            )
        self._layout = layout_type(columns, self._numbers, self._limits)


def _header_delimiter(header: str) -> str:
    """The delimiter that splits the header into the most known column names."""
    known = set(SESSION_COLUMNS) | set(MESSAGE_COLUMNS)

    def score(delimiter: str) -> tuple[int, int]:
        columns = [column.strip().lower() for column in next(csv.reader([header], delimiter=delimiter))]
        return len(known.intersection(columns)), len(columns)

    return max(_DELIMITERS, key=score)


def _mentions_message_columns(columns: list[str]) -> bool:
    return any(column.startswith("message_") for column in columns)


def _continues_quoted_field(line: str, delimiter: str, inside: bool) -> bool:
    """Whether a quoted field is still open at the end of this physical line.

    Follows the csv module: a quote opens a quoted field only at the start of a
    field, a doubled quote inside one is a literal quote, and any other quote in
    an unquoted field is a literal character. A line that starts outside quotes
    starts a record, so a field starts there.
    """
    position = 0
    if not inside and line.startswith('"'):
        inside, position = True, 1
    while True:
        if inside:
            closing = line.find('"', position)
            if closing < 0:
                return True
            if line.startswith('"', closing + 1):
                position = closing + 2
                continue
            inside, position = False, closing + 1
        else:
            opening = line.find(delimiter + '"', position)
            if opening < 0:
                return False
            inside, position = True, opening + 2


class _CsvLayout:
    """Turns complete CSV rows into session records."""

    columns: tuple[str, ...] = ()

    def __init__(self, header: list[str], numbers: _RecordNumbers, limits: RecordLimits) -> None:
        self._header = header
        self._numbers = numbers
        self._limits = limits
        # Columns not named in the layout are ignored; for a repeated name the first wins.
        self._positions = {name: header.index(name) for name in self.columns if name in header}

    def row(self, fields: list[str], line: int, offset: int, size: int = 0) -> list[ParsedRecord]:
        if not any(field.strip() for field in fields):
            return []  # blank lines and spreadsheets' empty rows (";;;;")
        if len(fields) != len(self._header):
            message = f"expected {len(self._header)} fields as in the header, got {len(fields)}"
            return self.broken_row(line, offset, message)
        cells = {name: _cell(fields[position]) for name, position in self._positions.items()}
        return self._cells(cells, line, offset, size)

    def broken_row(self, line: int, offset: int, message: str) -> list[ParsedRecord]:
        return [self._numbers.unreadable(line, offset, message)]

    def finish(self) -> list[ParsedRecord]:
        return []

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[ParsedRecord]:
        raise NotImplementedError


def _cell(text: str) -> str | None:
    """A cell's text; an empty or blank cell is a missing value."""
    return text if text.strip() else None


class _SessionRows(_CsvLayout):
    """`_id,name,platform_type,contact_identifier,messages`: one session per row, messages as JSON text."""

    columns = SESSION_COLUMNS

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[ParsedRecord]:
        raw: dict[str, Any] = dict(cells)
        if raw.get("messages") is None:
            raw["messages"] = []  # an empty cell is a session without messages
        return [self._numbers.record(raw, line, offset)]


class _MessageRows(_CsvLayout):
    """`contact_identifier,name,platform_type,message_id,message_content,message_date`.

    Consecutive rows of one contact (platform and identifier) form one session
    record. Rows of a contact that are not consecutive make another record for
    the same contact, which the upsert merges into the same session. A row whose
    message cells are all empty stands for a session without messages.
    """

    columns = MESSAGE_COLUMNS

    def __init__(self, header: list[str], numbers: _RecordNumbers, limits: RecordLimits) -> None:
        super().__init__(header, numbers, limits)
        self._session: dict[str, Any] | None = None
        self._bytes = 0  # of the rows gathered into the session
        self._contact: tuple[str, str] = ("", "")
        self._line = 0
        self._offset = 0

    def broken_row(self, line: int, offset: int, message: str) -> list[ParsedRecord]:
        # The session gathered so far goes first, so records stay in file order.
        return self.finish() + super().broken_row(line, offset, message)

    def finish(self) -> list[ParsedRecord]:
        if self._session is None:
            return []
        session, self._session = self._session, None
        return [self._numbers.record(session, self._line, self._offset)]

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[ParsedRecord]:
        contact = ((cells["platform_type"] or "").strip().lower(), (cells["contact_identifier"] or "").strip())
        records: list[ParsedRecord] = []
        # A record is cut at the limits of a JSON item (messages, bytes), so a
        # contact with a huge history takes no more memory than any record.
        if self._session is not None and (
            contact != self._contact
            or len(self._session["messages"]) >= self._limits.messages
            or self._bytes + size > self._limits.bytes
        ):
            records = self.finish()
        if self._session is None:
            self._session = {
                "contact_identifier": cells["contact_identifier"],
                "name": cells["name"],
                "platform_type": cells["platform_type"],
                "messages": [],
            }
            self._contact, self._line, self._offset, self._bytes = contact, line, offset, 0
        self._bytes += size
        message = {"id": cells.get("message_id"), "content": cells["message_content"], "date": cells["message_date"]}
        if any(value is not None for value in message.values()):
            self._session["messages"].append(message)
        return records
