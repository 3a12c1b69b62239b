"""The session file format of imports, defined once for the server and the CLI.

What a session file may be (a JSON array, NDJSON, or CSV in one of two
layouts), how its kind is told from its first bytes, how its bytes are split
into physical lines, and the chunk envelope the CLI sends. CSV's layouts and
their reader are in `contract.csvlayouts`, the writers that produce every
format in `contract.importwriter`, and the rules for single values (a channel,
an ObjectId as text, a whole number) in `contract.values`. The server's
streaming parsers (server/importing/parsers.py) and the CLI's chunked readers
(cli/readers.py) both read files through these modules, so a file is split into
the same records, at the same lines, with the same problems, whichever of them
reads it.

Standard library only: the CLI installs without the server's dependencies.
Records come out raw (values as read); the server validates them
(server/importing/records.py), whoever read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from contract.values import media_type, whole_number

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
# What a message is, when not a text (contract.messaging.KINDS), and a file's caption:
# the JSON fields `kind` and `caption`, the one-row-per-message columns below.
MESSAGE_CONTENT_COLUMNS = ("message_kind", "message_caption")
OPTIONAL_COLUMNS = frozenset({"_id", "message_id", *MESSAGE_CONTENT_COLUMNS})
DELIMITERS = (",", ";")

# The chunks of a chunked import are NDJSON, one envelope per record:
# {"record", "line", "data"} or {"record", "line", "problem"}.
CHUNK_MEDIA_TYPE = "application/x-ndjson"
ENVELOPE_KEYS = frozenset({"record", "line", "data", "problem"})

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
