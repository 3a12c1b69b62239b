"""The bytes of the files contacts sent: `GET /v1/sessions/{id}/messages/{message_id}/file`.

Streamed from the object store one chunk at a time, each written out before the
next is read, so a slow client holds one chunk, not the file. The file is always
an attachment, with the type it was stored with, `nosniff` and a sandboxing CSP:
a contact chooses its name and type, and neither may make a browser render it.
"""

from __future__ import annotations

import logging
import unicodedata
from urllib.parse import quote

from tornado.iostream import StreamClosedError
from tornado.web import url

from contract.values import well_formed_media_type
from runtime.filestore import FileCorrupt, FileStore
from server.handlers.sessions import MESSAGE_ID, SESSION_ID, SessionsApiHandler
from server.problems import ApiError

log = logging.getLogger(__name__)

MAX_SERVED_NAME = 150
FALLBACK_NAME = "file"


def safe_file_name(name: str) -> str:
    """The name with nothing that could climb a directory, end a header or reorder what a
    reader sees: path separators become `_`; control, format (bidi overrides, zero widths)
    and unassigned characters are dropped; leading dots and spaces go."""
    kept = []
    for char in unicodedata.normalize("NFC", name):
        if char in "/\\":
            kept.append("_")
        elif unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp"):
            continue
        else:
            kept.append(char)
    cleaned = "".join(kept).strip().lstrip(". ")
    return cleaned[:MAX_SERVED_NAME].rstrip() or FALLBACK_NAME


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII `filename` for old clients and the UTF-8 `filename*` (RFC 6266)."""
    safe = safe_file_name(name)
    ascii_name = "".join(char if " " <= char <= "~" and char not in '"\\%' else "_" for char in safe)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe, safe='')}"


def served_type(stored: str) -> str:
    return well_formed_media_type(stored) or "application/octet-stream"


class MessageFileHandler(SessionsApiHandler):
    SUPPORTED_METHODS = ("GET",)

    @property
    def files(self) -> FileStore:
        return self.services.files

    async def get(self, session_id: str, message_id: str) -> None:
        """The file a contact sent with the message, as they sent it."""
        message = await self.open_message(session_id, message_id)
        file = message.get("file")
        if not file:
            raise ApiError(404, f"message {message_id} has no file", kind="file-not-found")
        info = await self.files.info(file["object_name"]) if file.get("available") and file.get("object_name") else None
        if info is None:
            reason = file.get("reason") or "it is no longer in the file store"
            raise ApiError(404, f"the file of message {message_id} was not kept: {reason}", kind="file-not-kept")
        self.set_header("Content-Type", served_type(file.get("mime_type", "")))
        self.set_header("Content-Length", str(info.size or 0))
        self.set_header("Content-Disposition", content_disposition(file.get("name") or FALLBACK_NAME))
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")
        try:
            async for chunk in self.files.chunks(info):
                self.write(chunk)
                await self.flush()  # out to the client before the next chunk is read
        except StreamClosedError:
            return  # the client went away; nothing was changed
        except FileCorrupt as exc:
            # Headers are out: the only honest signal left is a connection cut short
            # of its Content-Length.
            log.error("file of message %s not served whole: %s", message_id, exc)
            stream = getattr(self.request.connection, "stream", None)
            if stream is not None:
                stream.close()
            return
        self.finish()


default_handlers = [
    url(rf"/v1/sessions/{SESSION_ID}/messages/{MESSAGE_ID}/file", MessageFileHandler, name="session_message_file"),
]
