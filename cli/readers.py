"""Reading session files of any size in chunks, as record envelopes for the import API.

CSV and NDJSON go through pandas in chunks of `chunk_size` rows or lines. A
JSON array cannot: pandas reads JSON in chunks only as NDJSON
(`read_json(lines=True, chunksize=...)`), and would load an array whole, so
arrays are streamed item by item with ijson instead.

Each record leaves as one line of the chunk format the server reads
(server/importing/chunks.py): `{"record", "line", "data"}`, or `{"record",
"line", "problem"}` when the record could not be read here, so the server
reports it in place. Values are sent as read; the server validates them, so a
record is judged the same whether it was uploaded or sent by the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import math
import queue
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import numpy as np
import pandas as pd

FORMATS = ("json", "ndjson", "csv")
SESSION_COLUMNS = ("_id", "name", "platform_type", "contact_identifier", "messages")
MESSAGE_COLUMNS = ("contact_identifier", "name", "platform_type", "message_id", "message_content", "message_date")
OPTIONAL_COLUMNS = {"_id", "message_id"}
# As the server's parser: consecutive rows of one contact become one record of
# at most this many messages.
MAX_MESSAGES_PER_RECORD = 1000
_SKIPPED_LINE = re.compile(r"Skipping line (\d+): (.+)")
_BOM = b"\xef\xbb\xbf"


class FileUnreadable(ValueError):
    """The file cannot be read from the start: wrong format, or a CSV header lacking columns."""


class FileBroken(ValueError):
    """The file cannot be read past this point; the chunks before it stand."""

    def __init__(self, message: str, offset: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.line = message, offset, line


@dataclass
class Chunk:
    lines: list[bytes] = field(default_factory=list)  # one envelope per record, newline-terminated
    position: int = 0  # bytes of the file read when the chunk was complete

    @property
    def records(self) -> int:
        return len(self.lines)

    def add(self, record: int, line: int | None, data: Any = None, problem: str | None = None) -> None:
        envelope: dict[str, Any] = {"record": record, "line": line}
        if problem is not None:
            envelope["problem"] = problem
        else:
            envelope["data"] = data
        self.lines.append(
            json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode() + b"\n"
        )

    def body(self) -> bytes:
        return b"".join(self.lines)


class CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it, for progress and error offsets."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def detect_format(path: Path) -> str:
    """json (an array), ndjson or csv, from the first bytes; the name only breaks ties."""
    with open(path, "rb") as file:
        head = file.read(4096)
    if b"\x00" in head:
        raise FileUnreadable(f"{path.name} is binary, not JSON or CSV text")
    text = head.removeprefix(_BOM).lstrip()
    if not text:
        raise FileUnreadable(f"{path.name} is empty")
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "ndjson"
    header = text.split(b"\n", 1)[0]
    if b"," in header or b";" in header:
        return "csv"
    raise FileUnreadable(
        f"{path.name} is neither JSON (starting with [ or {{) nor CSV (a header line separated by , or ;)"
    )


def read_chunks(file: BinaryIO, file_format: str, chunk_size: int) -> Iterator[Chunk]:
    """The file's records in chunks; raises FileBroken after the chunks read before the break."""
    counted = CountingReader(file)
    buffered: io.BufferedReader = io.BufferedReader(counted, buffer_size=256 * 1024)
    readers = {"json": _json_array, "ndjson": _ndjson, "csv": _csv}
    for chunk in readers[file_format](buffered, counted, chunk_size):
        chunk.position = counted.position
        yield chunk


def read_ahead(chunks: Iterator[Chunk], depth: int = 2) -> Iterator[Chunk]:
    """The same chunks, read by a thread up to `depth` ahead of the consumer.

    While a chunk is on the wire the next one is being parsed and encoded;
    pandas and the socket both release the GIL for much of their work.
    """
    handoff: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for chunk in chunks:
                handoff.put(chunk)
        except BaseException as error:  # handed over and raised in the consumer
            handoff.put(error)
        else:
            handoff.put(None)

    # A daemon: if the consumer stops early, the reader must not keep the process alive.
    threading.Thread(target=produce, name="read-ahead", daemon=True).start()
    while (item := handoff.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def _json_array(file: BinaryIO, counted: CountingReader, chunk_size: int) -> Iterator[Chunk]:
    chunk, record = Chunk(), 0
    try:
        for item in ijson.items(file, "item", use_float=True):
            record += 1
            if isinstance(item, dict):
                chunk.add(record, None, item)
            else:
                chunk.add(record, None, problem=f"expected a JSON object, got {_json_type(item)}")
            if chunk.records >= chunk_size:
                yield chunk
                chunk = Chunk()
    except ijson.JSONError as error:
        if chunk.records:
            yield chunk
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        # ijson reads ahead, so the break lies within its last read, before this offset.
        offset = counted.position
        raise FileBroken(f"invalid JSON after record {record} (before byte {offset}): {reason}", offset) from None
    if chunk.records:
        yield chunk


def _ndjson(file: BinaryIO, counted: CountingReader, chunk_size: int) -> Iterator[Chunk]:
    block: list[tuple[int, bytes]] = []
    record = 0
    for number, raw in enumerate(file, start=1):
        line = raw.removeprefix(_BOM) if number == 1 else raw
        if line.strip():
            block.append((number, line))
        if len(block) >= chunk_size:
            chunk, record = _ndjson_block(block, record)
            yield chunk
            block = []
    if block:
        yield _ndjson_block(block, record)[0]


def _ndjson_block(block: list[tuple[int, bytes]], record: int) -> tuple[Chunk, int]:
    chunk = Chunk()
    text = b"".join(line if line.endswith(b"\n") else line + b"\n" for _, line in block)
    try:
        # dtype=False: values stay as the JSON had them (no dates, no numeric casts).
        frame = pd.read_json(io.BytesIO(text), lines=True, dtype=False, precise_float=True, encoding="utf-8")
        rows = frame.to_dict(orient="records") if len(frame) == len(block) else None
    except ValueError:
        rows = None  # a line pandas cannot read: judge the lines one by one
    for position, (number, line) in enumerate(block):
        record += 1
        if rows is not None:
            chunk.add(record, number, _plain_record(rows[position]))
            continue
        try:
            value = json.loads(line)
        except ValueError as error:  # UnicodeDecodeError included
            chunk.add(record, number, problem=f"invalid JSON: {error}")
            continue
        if isinstance(value, dict):
            chunk.add(record, number, value)
        else:
            chunk.add(record, number, problem=f"expected a JSON object, got {_json_type(value)}")
    return chunk, record


def check_file(path: Path, file_format: str) -> None:
    """Raise FileUnreadable for what is wrong from the start (a CSV header), before any import begins."""
    if file_format == "csv":
        with open(path, "rb") as file:
            _csv_header(file.read(64 * 1024))


def _csv_header(head: bytes) -> tuple[str, _SessionRows]:
    """The delimiter and the layout the header names; FileUnreadable when it lacks columns."""
    header_text = head.removeprefix(_BOM).split(b"\n", 1)[0].decode("utf-8", errors="replace")
    delimiter = _delimiter(header_text)
    columns = [name.strip().lower() for name in next(csv.reader([header_text], delimiter=delimiter), [])]
    layout = (
        _MessageRows()
        if "messages" not in columns and any(name.startswith("message_") for name in columns)
        else _SessionRows()
    )
    missing = [name for name in layout.columns if name not in OPTIONAL_COLUMNS and name not in columns]
    if missing:
        raise FileUnreadable(
            f"the CSV header lacks the column(s) {', '.join(missing)}; expected {','.join(SESSION_COLUMNS)} "
            f"(one session per row) or {','.join(MESSAGE_COLUMNS)} (one message per row)"
        )
    return delimiter, layout


def _csv(file: io.BufferedReader, counted: CountingReader, chunk_size: int) -> Iterator[Chunk]:
    delimiter, layout = _csv_header(file.peek(64 * 1024)[: 64 * 1024])
    try:
        reader = pd.read_csv(
            file,
            sep=delimiter,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            chunksize=chunk_size,
            encoding="utf-8-sig",
            on_bad_lines="warn",
            engine="c",
            skip_blank_lines=True,
        )
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    frame = next(reader)
                except StopIteration:
                    break
            frame.columns = [str(name).strip().lower() for name in frame.columns]
            chunk = Chunk()
            for row in frame.itertuples(index=False, name=None):
                layout.row(chunk, dict(zip(frame.columns, row)))
            for warning in caught:
                for line, problem in _SKIPPED_LINE.findall(str(warning.message)):
                    layout.broken_row(chunk, int(line), problem)
            if chunk.records:
                yield chunk
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        chunk = Chunk()
        layout.finish(chunk)
        if chunk.records:
            yield chunk
        raise FileBroken(f"the CSV cannot be read further: {str(error).strip()}", counted.position) from None
    chunk = Chunk()
    layout.finish(chunk)
    if chunk.records:
        yield chunk


def _delimiter(header: str) -> str:
    known = set(SESSION_COLUMNS) | set(MESSAGE_COLUMNS)

    def score(delimiter: str) -> tuple[int, int]:
        names = [name.strip().lower() for name in next(csv.reader([header], delimiter=delimiter))]
        return len(known.intersection(names)), len(names)

    return max((",", ";"), key=score)


class _SessionRows:
    columns: tuple[str, ...] = SESSION_COLUMNS

    def __init__(self) -> None:
        self.record = 0

    def row(self, chunk: Chunk, cells: dict[str, Any]) -> None:
        if not any(_cell(value) for value in cells.values()):
            return  # spreadsheets' empty rows (";;;;")
        self.record += 1
        raw: dict[str, Any] = {name: value for name in self.columns if (value := _cell(cells.get(name))) is not None}
        raw.setdefault("messages", [])  # an empty cell is a session without messages
        chunk.add(self.record, None, raw)

    def broken_row(self, chunk: Chunk, line: int, problem: str) -> None:
        self.record += 1
        chunk.add(self.record, line, problem=problem)

    def finish(self, chunk: Chunk) -> None:
        pass


class _MessageRows(_SessionRows):
    """One message per row; consecutive rows of one contact become one session record."""

    columns = MESSAGE_COLUMNS

    def __init__(self) -> None:
        super().__init__()
        self._session: dict[str, Any] | None = None
        self._contact: tuple[str, str] = ("", "")

    def row(self, chunk: Chunk, cells: dict[str, Any]) -> None:
        values = {name: _cell(cells.get(name)) for name in self.columns}
        if not any(value is not None for value in values.values()):
            return
        contact = ((values["platform_type"] or "").strip().lower(), (values["contact_identifier"] or "").strip())
        if self._session is not None and (
            contact != self._contact or len(self._session["messages"]) >= MAX_MESSAGES_PER_RECORD
        ):
            self.finish(chunk)
        if self._session is None:
            self._session = {
                name: values[name]
                for name in ("contact_identifier", "name", "platform_type")
                if values[name] is not None
            }
            self._session["messages"] = []
            self._contact = contact
        message = {"id": values["message_id"], "content": values["message_content"], "date": values["message_date"]}
        if any(value is not None for value in message.values()):
            self._session["messages"].append({key: value for key, value in message.items() if value is not None})

    def broken_row(self, chunk: Chunk, line: int, problem: str) -> None:
        self.finish(chunk)
        super().broken_row(chunk, line, problem)

    def finish(self, chunk: Chunk) -> None:
        if self._session is not None:
            self.record += 1
            chunk.add(self.record, None, self._session)
            self._session = None


def _cell(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def _plain_record(row: dict[str, Any]) -> dict[str, Any]:
    """A pandas row as plain JSON values; absent fields (NaN) are left out."""
    plain = {}
    for name, value in row.items():
        value = _plain(value)
        if value is not None:
            plain[str(name)] = value
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__
