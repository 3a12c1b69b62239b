"""The session file format of imports, defined once for the server and the CLI.

What a session file may be (a JSON array, NDJSON, or CSV in one of two
layouts), how its kind is told from its first bytes, how CSV is read into
session records, the rules for a channel and an ObjectId as text, the chunk
envelope the CLI sends, and the writers that produce every format. The server's
streaming parsers (server/importing/parsers.py) and the CLI's chunked readers
(cli/readers.py) both read files through this module, so a file is split into
the same records, at the same lines, with the same problems, whichever of them
reads it.

Standard library only: the CLI installs without the server's dependencies.
Records come out raw (values as read); the server validates them
(server/importing/records.py), whoever read them.
"""

from __future__ import annotations

import csv
import json
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Any, TextIO

KINDS = ("json", "ndjson", "csv")
BOM = b"\xef\xbb\xbf"
# Bounds the memory one record may take: a longer NDJSON line, or a CSV quoted
# field left open, is a broken file rather than a session. A session of 20,000
# messages of 200 bytes fits; real conversations hold a few dozen.
MAX_RECORD_BYTES = 4 * 1024 * 1024
# Consecutive rows of one contact in the one-row-per-message CSV layout become
# one record of at most this many messages, so memory stays bounded when a
# contact has a huge history; the upsert merges the records of one contact.
MAX_MESSAGES_PER_RECORD = 1000
# What detect_kind needs to tell the kinds apart, when the file has it.
HEAD_BYTES = 4096

SESSION_COLUMNS = ("_id", "name", "platform_type", "contact_identifier", "messages")
MESSAGE_COLUMNS = ("contact_identifier", "name", "platform_type", "message_id", "message_content", "message_date")
OPTIONAL_COLUMNS = frozenset({"_id", "message_id"})
DELIMITERS = (",", ";")

# A Telegram channel: its public @username (5 to 32 letters, digits and
# underscores, starting with a letter) or its numeric id, which starts -100.
# ASCII digits only: `\d` alone takes other scripts' digits, which int() reads as
# ASCII ones (the bot would post to another chat than the one written).
CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{4,31}|-100[0-9]{1,16}")
CHANNEL_RULE = "expected @name (5-32 letters, digits or _) or a -100… channel id"
# An ObjectId as text: 24 hexadecimal digits, in either case.
OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")

# The chunks of a chunked import are NDJSON, one envelope per record:
# {"record", "line", "data"} or {"record", "line", "problem"}.
CHUNK_MEDIA_TYPE = "application/x-ndjson"
ENVELOPE_KEYS = frozenset({"record", "line", "data", "problem"})
# 2**53 - 1: the largest whole number every JSON reader holds exactly.
MAX_WHOLE = 2**53 - 1

_JSON_WHITESPACE = b" \t\r\n"
# The inside of a quoted CSV field up to its closing quote: anything but a quote, or a doubled one.
_QUOTED_TEXT = re.compile(r'[^"]*(?:""[^"]*)*')
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnsupportedFileType(ValueError):
    """The file is not a JSON, NDJSON or CSV text file."""


class FileFormatError(ValueError):
    """The file cannot be read past this point.

    Records returned before it stand. `records` holds those that the failing
    call had completed before the problem: they are as good as any other, only
    the call could not return them.
    """

    def __init__(self, message: str, offset: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.line = line
        self.records: list[Any] = []


# --- small rules --------------------------------------------------------------


def media_type(value: str | None) -> str:
    """The media type of a Content-Type header, lower-case, without parameters."""
    return (value or "").split(";")[0].strip().lower()


def channel_ref(text: str) -> str | None:
    """The channel in its one spelling (@usernames lower-cased: Telegram ignores case); None if it is none."""
    channel = text.strip()
    return channel.lower() if CHANNEL.fullmatch(channel) else None


def object_id_text(text: str) -> str | None:
    """The ObjectId written in `text`, as lower-case hex; None when it is none.

    Ids are compared as lower-case text, so every reader of an id from outside
    (a URL, a file) lower-cases it first.
    """
    return text.lower() if OBJECT_ID.fullmatch(text) else None


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


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages a file's author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


# --- the chunk envelope -------------------------------------------------------


def envelope(
    record: int, line: int | None, data: dict[str, Any] | None = None, problem: str | None = None
) -> dict[str, Any]:
    """One record of a chunk: where it stands in the user's file, and the record or why it is unreadable."""
    body: dict[str, Any] = {"record": record, "line": line}
    if problem is not None:
        body["problem"] = problem
    else:
        body["data"] = data
    return body


@dataclass(frozen=True, slots=True)
class Envelope:
    record: int
    line: int | None
    data: dict[str, Any] | None
    problem: str | None


def read_envelope(body: object) -> Envelope | None:
    """The envelope in one decoded chunk line; None when the line is no envelope."""
    if not isinstance(body, dict) or not set(body) <= ENVELOPE_KEYS:
        return None
    number, line = whole_number(body.get("record")), body.get("line")
    line = None if line is None else whole_number(line) or False
    data, problem = body.get("data"), body.get("problem")
    if not number or line is False or isinstance(data, dict) == isinstance(problem, str):
        return None
    return Envelope(
        number, line, data if isinstance(data, dict) else None, problem if isinstance(problem, str) else None
    )


# --- telling the kinds apart --------------------------------------------------


def detect_kind(filename: str | None, content_type: str | None, head: bytes) -> str:
    """The kind of a file, from its first bytes (pass HEAD_BYTES when the file has them).

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
        return _EXTENSION_KINDS.get(suffix) or _CONTENT_TYPE_KINDS.get(media_type(content_type)) or "json"
    if body[0] == "[":
        return "json"
    if body[0] == "{":
        return "ndjson"
    if _CONTROL_CHARACTERS.search(text):
        raise UnsupportedFileType("the file holds control characters, not JSON or CSV text")
    header = body.split("\n", 1)[0]
    if any(delimiter in header for delimiter in DELIMITERS):
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


# --- physical lines -----------------------------------------------------------


class LeadingBom:
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


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based, counting every physical line of the file
    offset: int
    data: bytes  # with its line terminator, if it had one

    def decode(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as error:
            offset = self.offset + error.start
            raise FileFormatError(f"invalid UTF-8 at byte {offset} (line {self.number})", offset, self.number) from None


class Lines:
    """Splits a byte stream into physical lines.

    Splitting bytes rather than decoded text is safe because 0x0A never occurs
    inside a multi-byte UTF-8 sequence, and it keeps each line's byte offset.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._tail = bytearray()
        self._tail_offset = 0
        self._count = 0

    def split(self, data: bytes, offset: int) -> Iterator[Line]:
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

    def flush(self) -> Iterator[Line]:
        """The last line, when the file does not end with a line break."""
        if self._tail:
            yield self._line(self._tail_offset, bytes(self._tail))
            self._tail.clear()

    def _line(self, offset: int, data: bytes) -> Line:
        self._count += 1
        return Line(self._count, offset, data)


# --- CSV ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvRecord:
    """One session record read from CSV, or the reason its row could not be read."""

    line: int  # physical line where the record starts; the header is line 1
    offset: int  # byte offset where the record starts
    raw: dict[str, Any]  # {} when the row could not be read: see `problem`
    problem: str | None = None


class CsvRecords:
    """CSV in either layout, chosen by the header; ',' or ';' sniffed from the header line.

    Fed the file's bytes as they come (a leading BOM is dropped), it returns the
    records they complete. Physical lines are gathered until the quotes
    balance, then the stdlib csv module reads the complete record, so quoted
    fields may hold line breaks. A row with the wrong number of fields comes
    back as a record carrying its problem; raises FileFormatError when the file
    cannot be read further (the iterator has returned the records before it).
    """

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES, max_messages: int = MAX_MESSAGES_PER_RECORD) -> None:
        # The csv module refuses fields over 128 KiB by default, and the messages
        # cell of a long session is larger. The limit is process-wide; raising it
        # to the bound this reader enforces anyway harms no other reader.
        if csv.field_size_limit() < max_record_bytes:
            csv.field_size_limit(max_record_bytes)
        self._max_bytes = max_record_bytes
        self._max_messages = max_messages
        self._bom = LeadingBom()
        self._received = 0
        self._lines = Lines(max_record_bytes)
        self._layout: _CsvLayout | None = None
        self._delimiter = ","
        self._pending: list[str] = []  # physical lines of a record whose quoted field is still open
        self._pending_bytes = 0
        self._start: Line | None = None  # first line of the record being gathered
        self._inside_quotes = False

    def feed(self, chunk: bytes) -> Iterator[CsvRecord]:
        self._received += len(chunk)
        data = self._bom.strip(chunk)
        # What the BOM stripper returns is always the stream's tail, so its offset follows.
        for line in self._lines.split(data, self._received - len(data)):
            yield from self._take(line)

    def close(self) -> Iterator[CsvRecord]:
        data = self._bom.flush()
        for line in self._lines.split(data, self._received - len(data)):
            yield from self._take(line)
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

    def _take(self, line: Line) -> list[CsvRecord]:
        text = line.decode()
        if self._layout is None:
            if text.strip():
                self._delimiter, layout_type = read_csv_header(text, line)
                columns = _columns(text, self._delimiter)
                self._layout = layout_type(columns, self._max_bytes, self._max_messages)
            return []
        if self._start is None:
            self._start = line
        self._pending.append(text)
        self._pending_bytes += len(line.data)
        self._inside_quotes = continues_quoted_field(text, self._delimiter, self._inside_quotes)
        if self._inside_quotes:
            if self._pending_bytes > self._max_bytes:
                raise FileFormatError(
                    f"the quoted field of the record starting at line {self._start.number} "
                    f"is not closed within {self._max_bytes} bytes",
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


def read_csv_header(text: str, line: Line | None = None) -> tuple[str, type[_CsvLayout]]:
    """The delimiter and the layout a header line names; FileFormatError when it lacks columns or is unreadable."""
    try:
        delimiter = _header_delimiter(text)
        columns = _columns(text, delimiter)
    except csv.Error as error:  # a lone carriage return, for one
        raise FileFormatError(
            f"unreadable CSV header: {error}", line.offset if line else 0, line.number if line else 1
        ) from None
    layout_type = _MessageRows if "messages" not in columns and _mentions_message_columns(columns) else _SessionRows
    required = [column for column in layout_type.columns if column not in OPTIONAL_COLUMNS]
    missing = [column for column in required if column not in columns]
    if missing:
        raise FileFormatError(
            f"the CSV header lacks the column(s) {', '.join(missing)}; expected "
            f"{','.join(SESSION_COLUMNS)} (one session per row) or "
            f"{','.join(MESSAGE_COLUMNS)} (one message per row)",
            line.offset if line else 0,
            line.number if line else 1,
        )
    return delimiter, layout_type


def _columns(header: str, delimiter: str) -> list[str]:
    return [column.strip().lower() for column in next(csv.reader([header], delimiter=delimiter), [])]


def _header_delimiter(header: str) -> str:
    """The delimiter that splits the header into the most known column names."""
    known = set(SESSION_COLUMNS) | set(MESSAGE_COLUMNS)

    def score(delimiter: str) -> tuple[int, int]:
        columns = _columns(header, delimiter)
        return len(known.intersection(columns)), len(columns)

    return max(DELIMITERS, key=score)


def _mentions_message_columns(columns: list[str]) -> bool:
    return any(column.startswith("message_") for column in columns)


def continues_quoted_field(line: str, delimiter: str, inside: bool) -> bool:
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
            # One regex step over the quoted text and its doubled quotes (a
            # messages cell holds dozens), then the closing quote, if any.
            match = _QUOTED_TEXT.match(line, position)
            closing = match.end() if match else position
            if closing >= len(line):
                return True
            inside, position = False, closing + 1
        else:
            opening = line.find(delimiter + '"', position)
            if opening < 0:
                return False
            inside, position = True, opening + 2


class _CsvLayout:
    """Turns complete CSV rows into session records."""

    columns: tuple[str, ...] = ()

    def __init__(self, header: list[str], max_bytes: int, max_messages: int) -> None:
        self._header = header
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        # Columns not named in the layout are ignored; for a repeated name the first wins.
        self._positions = {name: header.index(name) for name in self.columns if name in header}

    def row(self, fields: list[str], line: int, offset: int, size: int = 0) -> list[CsvRecord]:
        if not any(field.strip() for field in fields):
            return []  # blank lines and spreadsheets' empty rows (";;;;")
        if len(fields) != len(self._header):
            message = f"expected {len(self._header)} fields as in the header, got {len(fields)}"
            return self.broken_row(line, offset, message)
        cells = {name: _cell(fields[position]) for name, position in self._positions.items()}
        return self._cells(cells, line, offset, size)

    def broken_row(self, line: int, offset: int, message: str) -> list[CsvRecord]:
        return [CsvRecord(line, offset, {}, message)]

    def finish(self) -> list[CsvRecord]:
        return []

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[CsvRecord]:
        raise NotImplementedError


def _cell(text: str) -> str | None:
    """A cell's text; an empty or blank cell is a missing value."""
    return text if text.strip() else None


class _SessionRows(_CsvLayout):
    """`_id,name,platform_type,contact_identifier,messages`: one session per row, messages as JSON text."""

    columns = SESSION_COLUMNS

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[CsvRecord]:
        raw: dict[str, Any] = dict(cells)
        if raw.get("messages") is None:
            raw["messages"] = []  # an empty cell is a session without messages
        return [CsvRecord(line, offset, raw)]


class _MessageRows(_CsvLayout):
    """`contact_identifier,name,platform_type,message_id,message_content,message_date`.

    Consecutive rows of one contact (platform and identifier) form one session
    record. Rows of a contact that are not consecutive make another record for
    the same contact, which the upsert merges into the same session. A row whose
    message cells are all empty stands for a session without messages.
    """

    columns = MESSAGE_COLUMNS

    def __init__(self, header: list[str], max_bytes: int, max_messages: int) -> None:
        super().__init__(header, max_bytes, max_messages)
        self._session: dict[str, Any] | None = None
        self._bytes = 0  # of the rows gathered into the session
        self._contact: tuple[str, str] = ("", "")
        self._line = 0
        self._offset = 0

    def broken_row(self, line: int, offset: int, message: str) -> list[CsvRecord]:
        # The session gathered so far goes first, so records stay in file order.
        return self.finish() + super().broken_row(line, offset, message)

    def finish(self) -> list[CsvRecord]:
        if self._session is None:
            return []
        session, self._session = self._session, None
        return [CsvRecord(self._line, self._offset, session)]

    def _cells(self, cells: dict[str, str | None], line: int, offset: int, size: int) -> list[CsvRecord]:
        contact = ((cells["platform_type"] or "").strip().lower(), (cells["contact_identifier"] or "").strip())
        records: list[CsvRecord] = []
        # A record is cut at the limits of a JSON item (messages, bytes), so a
        # contact with a huge history takes no more memory than any record.
        if self._session is not None and (
            contact != self._contact
            or len(self._session["messages"]) >= self._max_messages
            or self._bytes + size > self._max_bytes
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


# --- writing ------------------------------------------------------------------

WRITER_FORMATS = ("json", "ndjson", "csv", "csv-messages")
# The kind a reader takes each written format as.
WRITER_KINDS = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}


def write_sessions(sessions: Iterable[dict[str, Any]], out: TextIO, file_format: str) -> int:
    """Write sessions to `out` as they come, in one of WRITER_FORMATS; return how many were written."""
    writers = {"json": _write_json, "ndjson": _write_ndjson, "csv": _write_csv, "csv-messages": _write_csv_messages}
    if file_format not in writers:
        raise ValueError(f"unknown format {file_format!r}; expected one of {', '.join(WRITER_FORMATS)}")
    return writers[file_format](sessions, out)


def utc_text(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, as the session files write dates."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _write_json(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    # One session per line inside the array: still a JSON array, but readable and diffable.
    written = 0
    out.write("[")
    for session in sessions:
        out.write(",\n" if written else "\n")
        out.write(_json(session))
        written += 1
    out.write("\n]\n")
    return written


def _write_ndjson(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    written = 0
    for session in sessions:
        out.write(_json(session) + "\n")
        written += 1
    return written


def _write_csv(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SESSION_COLUMNS)
    written = 0
    for session in sessions:
        source_id = session["_id"]
        writer.writerow(
            [
                source_id["$oid"] if isinstance(source_id, dict) else source_id,
                session["name"],
                session["platform_type"],
                session["contact_identifier"],
                _json(session["messages"]),
            ]
        )
        written += 1
    return written


def _write_csv_messages(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MESSAGE_COLUMNS)
    written = 0
    for session in sessions:
        contact = [session["contact_identifier"], session["name"], session["platform_type"]]
        # A session without messages still needs its row, with the message cells empty.
        for message in session["messages"] or [{}]:
            date = message.get("date", "")
            writer.writerow([*contact, message.get("id", ""), message.get("content", ""), _date_text(date)])
        written += 1
    return written


def _date_text(date: str | dict[str, Any]) -> str:
    """A spreadsheet cell holds text, so MongoDB's {"$date": ...} becomes ISO-8601."""
    if not isinstance(date, dict):
        return date
    value = date["$date"]
    if isinstance(value, str):
        return value
    millis = int(value["$numberLong"]) if isinstance(value, dict) else value
    return utc_text(_EPOCH + timedelta(milliseconds=millis))
