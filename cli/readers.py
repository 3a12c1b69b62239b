"""Reading session files of any size in chunks, as record envelopes for the import API.

NDJSON goes through pandas in blocks of `chunk_size` lines. A JSON array
cannot: pandas reads JSON in chunks only as NDJSON
(`read_json(lines=True, chunksize=...)`), and would load an array whole, so
arrays are streamed item by item with ijson instead. CSV is read by the import
format's own reader (contract/csvlayouts.py), the one the server reads
uploads with: a file is cut into the same records, at the same lines, with the
same problems, whether it is uploaded or sent by the CLI. (pandas' C reader
reports a bad row only in a warning's text, and a short row not at all.)

Each record leaves as one line of the chunk format the server reads
(contract/importformat.py, server/importing/chunks.py): `{"record", "line",
"data"}`, or `{"record", "line", "problem"}` when the record could not be read
here, so the server reports it in place. Values are sent as read; the server
validates them, so a record is judged the same whether it was uploaded or sent
by the CLI.
"""

from __future__ import annotations

import io
import json
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import numpy as np
import pandas as pd

from contract.csvlayouts import CsvRecords, read_csv_header
from contract.importformat import BOM, HEAD_BYTES, FileFormatError, UnsupportedFileType, detect_kind, envelope
from contract.values import json_type

# How much of a CSV file is read to find its header before the import begins.
CSV_HEAD_BYTES = 64 * 1024
CSV_BLOCK_BYTES = 64 * 1024


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
        body = envelope(record, line, data, problem)
        self.lines.append(
            json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode() + b"\n"
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
    """json (an array), ndjson or csv, from the first bytes, by the rules the server detects uploads by."""
    with open(path, "rb") as file:
        head = file.read(HEAD_BYTES)
    if not head.removeprefix(BOM).strip():
        raise FileUnreadable(f"{path.name} is empty")
    try:
        return detect_kind(path.name, None, head)
    except UnsupportedFileType as exc:
        raise FileUnreadable(f"{path.name}: {exc}") from None


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
                chunk.add(record, None, problem=f"expected a JSON object, got {json_type(item)}")
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
        line = raw.removeprefix(BOM) if number == 1 else raw
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
            chunk.add(record, number, problem=f"expected a JSON object, got {json_type(value)}")
    return chunk, record


def check_file(path: Path, file_format: str) -> None:
    """Raise FileUnreadable for what is wrong from the start (a CSV header), before any import begins."""
    if file_format != "csv":
        return
    with open(path, "rb") as file:
        text = file.read(CSV_HEAD_BYTES).removeprefix(BOM).decode("utf-8", errors="replace")
    header = next((line for line in text.split("\n") if line.strip()), "")
    try:
        read_csv_header(header)
    except FileFormatError as exc:
        raise FileUnreadable(exc.message) from None


def _csv(file: io.BufferedReader, counted: CountingReader, chunk_size: int) -> Iterator[Chunk]:
    reader = CsvRecords()
    chunk, record = Chunk(), 0
    try:
        while True:
            block = file.read(CSV_BLOCK_BYTES)
            for read in reader.feed(block) if block else reader.close():
                record += 1
                chunk.add(record, read.line, _present(read.raw), read.problem)
                if chunk.records >= chunk_size:
                    yield chunk
                    chunk = Chunk()
            if not block:
                break
    except FileFormatError as error:
        if chunk.records:
            yield chunk
        raise FileBroken(error.message, error.offset, error.line) from None
    if chunk.records:
        yield chunk


def _present(raw: dict[str, Any]) -> dict[str, Any]:
    """The record without its empty cells, which the server takes as absent anyway: smaller chunks."""
    present = {name: value for name, value in raw.items() if value is not None}
    if isinstance(messages := present.get("messages"), list):
        present["messages"] = [
            {key: value for key, value in message.items() if value is not None}
            if isinstance(message, dict)
            else message
            for message in messages
        ]
    return present


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
