"""CSV session files: the two layouts and their reader, fed bytes as they arrive.

One session per row (`SESSION_COLUMNS`, its messages as JSON text in one
cell) or one message per row (`MESSAGE_COLUMNS`, a contact's consecutive rows
gathered into one record); the header says which, and whether ',' or ';'
separates the fields. The server's parsers and the CLI's readers both read
CSV through `CsvRecords`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from contract.importformat import (
    DELIMITERS,
    MAX_MESSAGES_PER_RECORD,
    MAX_RECORD_BYTES,
    MESSAGE_COLUMNS,
    MESSAGE_CONTENT_COLUMNS,
    OPTIONAL_COLUMNS,
    SESSION_COLUMNS,
    FileFormatError,
    LeadingBom,
    Line,
    Lines,
)

# The inside of a quoted CSV field up to its closing quote: anything but a quote, or a doubled one.
_QUOTED_TEXT = re.compile(r'[^"]*(?:""[^"]*)*')


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

    columns = (*MESSAGE_COLUMNS, *MESSAGE_CONTENT_COLUMNS)

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
            # Only when given, so a file without these columns reads as it always did.
            for name in ("kind", "caption"):
                if cells.get(f"message_{name}") is not None:
                    message[name] = cells[f"message_{name}"]
            self._session["messages"].append(message)
        return records
