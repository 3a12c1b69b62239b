"""The parts of an upload's multipart form, as the form parser hands them over.

`streaming_form_data` parses the body; these targets keep what an upload
needs of each part: a short text field (`channel`), and the file's bytes
until the upload takes them (server.importing.upload).
"""

from __future__ import annotations

from email.message import Message

from streaming_form_data.targets import BaseTarget

MAX_FIELD_BYTES = 1024


class FieldPart(BaseTarget):
    """A short text field of the form, such as `channel`."""

    def __init__(self, limit: int = MAX_FIELD_BYTES) -> None:
        super().__init__()
        self.value = bytearray()
        self.received = False
        self._limit = limit  # bytes kept: one more than this says the field is too long

    def on_data_received(self, chunk: bytes) -> None:
        if len(self.value) <= self._limit:
            self.value += chunk[: self._limit + 1 - len(self.value)]

    def on_finish(self) -> None:
        self.received = True

    def text(self) -> str | None:
        if not self.received:
            return None
        return self.value.decode("utf-8", errors="replace")


class FilePart(BaseTarget):
    """The `file` part: holds what one network chunk brought until the upload takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[bytes] = []
        self.size = 0
        self.ended = False

    @property
    def started(self) -> bool:
        return bool(self._started)

    def on_data_received(self, chunk: bytes) -> None:
        self.pieces.append(chunk)
        self.size += len(chunk)

    def on_finish(self) -> None:
        self.ended = True

    def take(self) -> list[bytes]:
        pieces, self.pieces = self.pieces, []
        return pieces


def boundary(content_type: str) -> bytes:
    """The multipart boundary named by the Content-Type (the form parser has checked it is there)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    return boundary.encode("latin-1", errors="replace") if isinstance(boundary, str) else b""
