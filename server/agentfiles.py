"""An agent's file, as `POST /v1/sessions/{id}/messages` receives it in a multipart form.

The form has `text` (the caption, optional) and one `file`. The body is parsed as
it arrives (streaming_form_data, as the import uploads are) and the file spooled
to a temporary file, counted against AGENT_FILE_MAX_BYTES: memory holds one
network chunk, whatever the file's size. Every problem with the form is collected
and reported together once the body has ended.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from contract.messaging import MAX_CAPTION_LENGTH, MAX_FILE_NAME_LENGTH
from contract.values import well_formed_media_type
from server.importing.multipart import FieldPart
from server.problems import ApiError, field_error

# Room in the body for the form around the file: boundaries, part headers, the caption.
FORM_SLACK = 64 * 1024
# A caption of MAX_CAPTION_LENGTH characters is at most four UTF-8 bytes each.
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_LENGTH
# What sendPhoto takes; any other file goes out through sendDocument.
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"})


class SpooledFilePart(BaseTarget):
    """The `file` part, written to a temporary file as it arrives, counted and hashed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.spool: IO[bytes] = tempfile.TemporaryFile()
        self.size = 0
        self.parts = 0
        self.too_large = False
        self.digest = hashlib.sha256()
        self._max_bytes = max_bytes

    def on_start(self) -> None:
        self.parts += 1

    def on_data_received(self, chunk: bytes) -> None:
        if self.parts > 1 or self.too_large:
            return  # refused: a second file, or past the limit; the rest is only counted
        self.size += len(chunk)
        if self.size > self._max_bytes:
            self.too_large = True
            return
        self.digest.update(chunk)
        self.spool.write(chunk)


@dataclass(frozen=True)
class AgentFile:
    spool: IO[bytes]
    name: str
    mime_type: str
    size: int
    sha256: str

    @property
    def send_as(self) -> str:
        return "photo" if self.mime_type in PHOTO_TYPES else "document"


class AgentUpload:
    """One agent's multipart reply being received."""

    def __init__(self, headers: Mapping[str, str], max_file_bytes: int) -> None:
        try:
            self._form = StreamingFormDataParser(headers)
        except ParseFailedException as exc:
            raise ApiError(400, f"cannot read the multipart body: {exc}", kind="invalid-multipart") from exc
        self._max_file_bytes = max_file_bytes
        self._caption = FieldPart(limit=MAX_CAPTION_BYTES)
        self._file = SpooledFilePart(max_file_bytes)
        self._form.register("text", self._caption)
        self._form.register("file", self._file)
        self._broken: str | None = None

    def receive(self, chunk: bytes) -> None:
        if self._broken is not None:
            return
        try:
            self._form.data_received(chunk)
        except ParseFailedException as exc:
            self._broken = str(exc) or "malformed multipart body"

    def close(self) -> None:
        self._file.spool.close()

    def result(self) -> tuple[str, AgentFile]:
        """(caption, file), or a 400 naming every problem of the form."""
        if self._broken is not None:
            raise ApiError(400, f"cannot read the multipart body: {self._broken}", kind="invalid-multipart")
        errors = []
        caption = self._caption.text() or ""
        if len(self._caption.value) > MAX_CAPTION_BYTES or len(caption) > MAX_CAPTION_LENGTH:
            errors.append(
                field_error(
                    "text",
                    f"a caption is at most {MAX_CAPTION_LENGTH} characters (Telegram's limit), "
                    f"got {len(caption) if len(self._caption.value) <= MAX_CAPTION_BYTES else 'more'}",
                )
            )
        part = self._file
        if part.parts == 0:
            errors.append(field_error("file", "is required: the file to send, as a form part named `file`"))
        elif part.parts > 1:
            errors.append(field_error("file", f"must be sent once; the form has {part.parts} `file` parts"))
        elif part.too_large:
            errors.append(field_error("file", f"is larger than the {self._max_file_bytes} bytes accepted"))
        elif part.size == 0:
            errors.append(field_error("file", "is empty"))
        if errors:
            detail = "; ".join(f"{error['field']} {error['message']}" for error in errors)
            status = 413 if part.too_large and len(errors) == 1 else 400
            raise ApiError(status, detail, kind="payload-too-large" if status == 413 else "invalid-body", errors=errors)
        part.spool.flush()
        part.spool.seek(0)
        name = (part.multipart_filename or "").strip()[:MAX_FILE_NAME_LENGTH] or "file"
        mime_type = well_formed_media_type(part.multipart_content_type) or "application/octet-stream"
        return caption, AgentFile(part.spool, name, mime_type, part.size, part.digest.hexdigest())
