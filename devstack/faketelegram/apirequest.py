"""A Bot API request's parameters: its query string, and its body read as it arrives.

python-telegram-bot POSTs application/x-www-form-urlencoded, or multipart/form-data when it
uploads a file, with nested objects and lists JSON-encoded inside the field values; other
clients POST JSON. A body without files is small and read whole (up to MAX_PLAIN_BODY). A
multipart body's files go to the fake's spool chunk by chunk, so a 50 MB upload never sits in
memory; each becomes an Upload among the parameters, under its part's name.

A body over the limits is still read to its end, then refused with 413 "Request Entity Too
Large", as Telegram's front answers: a client that is still sending when the connection
closes under it would see a broken pipe instead of the answer.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import tornado.httputil
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from devstack.faketelegram.errors import ApiError
from devstack.faketelegram.files import MAX_UPLOAD_SIZE, Blob, FileStore, Spool

JsonDict = dict[str, Any]

# Method parameters other than files: a 4,096-character text with its markup is far below.
MAX_PLAIN_BODY = 1024 * 1024
MAX_BODY = MAX_UPLOAD_SIZE + MAX_PLAIN_BODY
# What Tornado lets through to be read and dropped before it cuts the connection itself.
MAX_READ_BODY = 1024 * 1024 * 1024
TOO_LARGE = "Request Entity Too Large"
GENERIC_TYPES = frozenset({"", "application/octet-stream"})


@dataclass
class Upload:
    """One file part of a multipart request, spooled."""

    file_name: str | None
    content_type: str | None
    blob: Blob
    # Set once a file record holds the bytes; an upload nothing took is deleted after the call.
    taken: bool = False

    @property
    def mime_type(self) -> str:
        """The part's own type if it names one, else what the file name suggests."""
        declared = (self.content_type or "").split(";", 1)[0].strip().lower()
        if declared not in GENERIC_TYPES:
            return declared
        guessed = mimetypes.guess_type(self.file_name or "", strict=False)[0]
        return guessed or "application/octet-stream"

    def to_json(self) -> JsonDict:
        return {
            "file_name": self.file_name,
            "content_type": self.content_type,
            "size": self.blob.size,
            "sha256": self.blob.sha256,
        }


class RequestBody:
    """One request's body, fed chunk by chunk (Tornado's stream_request_body)."""

    def __init__(self, headers: tornado.httputil.HTTPHeaders, files: FileStore) -> None:
        self._files = files
        self._headers = headers
        self._content_type = headers.get("Content-Type", "")
        self.error: ApiError | None = None
        self._plain = bytearray()
        self._values: dict[str, str] = {}
        self._value_bytes = 0
        self.uploads: dict[str, Upload] = {}
        self._parser: StreamingFormDataParser | None = None
        self._part: _PartTarget | None = None
        declared = headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            self.error = ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE)
        elif self._content_type.startswith("multipart/form-data"):
            self._start_multipart()

    def _start_multipart(self) -> None:
        try:
            self._parser = StreamingFormDataParser(self._headers)
        except ParseFailedException:
            self.error = ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse multipart/form-data")
            return
        self._part = _PartTarget(self)
        # One target takes every part: the form's field names are the method's parameters
        # and attach:// names, which are not known in advance. The parser asks `matches`
        # once per part, as its headers end, so that call names the part to come.
        self._parser.register("", self._part, matches=self._part.named)

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        if self._parser is None:
            self._plain += chunk
            if len(self._plain) > MAX_PLAIN_BODY:
                self.refuse_too_large()
            return
        try:
            self._parser.data_received(chunk)
        except ParseFailedException:
            self.error = ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse multipart/form-data")

    def refuse_too_large(self) -> None:
        self.error = ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE)
        self._plain.clear()
        if self._part is not None:
            self._part.drop()

    def params(self, query: Mapping[str, list[bytes]]) -> JsonDict:
        """Query string plus body: JSON keeps its types, form fields arrive as strings, files
        as Uploads."""
        params = _decode_arguments(query)
        if self.error is not None:
            return params
        if self._parser is not None:
            params.update(self._values)
            params.update(self.uploads)
        elif self._content_type.startswith("application/json"):
            params.update(_json_body(bytes(self._plain)))
        elif self._content_type.startswith("application/x-www-form-urlencoded"):
            arguments: dict[str, list[bytes]] = {}
            tornado.httputil.parse_body_arguments(self._content_type, bytes(self._plain), arguments, {})
            params.update(_decode_arguments(arguments))
        return params

    def release(self) -> None:
        """Deletes the spooled uploads that no file record took, and any half-read one."""
        if self._part is not None:
            self._part.drop()
        for upload in self.uploads.values():
            if not upload.taken and upload.blob.path is not None:
                upload.blob.path.unlink(missing_ok=True)
        self.uploads.clear()

    # -- parts --------------------------------------------------------------------------------

    def add_value(self, name: str, value: bytes) -> None:
        self._value_bytes += len(value)
        if self._value_bytes > MAX_PLAIN_BODY:
            self.refuse_too_large()
            return
        self._values[name] = value.decode("utf-8", "replace")

    def add_upload(self, name: str, upload: Upload) -> None:
        # A repeated part replaces the earlier one, whose bytes go.
        earlier = self.uploads.pop(name, None)
        if earlier is not None and earlier.blob.path is not None:
            earlier.blob.path.unlink(missing_ok=True)
        self.uploads[name] = upload

    def spool(self) -> Spool:
        return self._files.spool(limit=MAX_UPLOAD_SIZE)


class _PartTarget(BaseTarget):
    """Every part of the form: a part with a file name is a file, spooled; others are values."""

    def __init__(self, body: RequestBody) -> None:
        super().__init__()
        self._body = body
        self._name = ""
        self._spool: Spool | None = None
        self._value = bytearray()

    def named(self, registered: str, name: str) -> bool:
        self._name = name
        return True

    def on_start(self) -> None:
        if self._body.error is not None:
            return
        # The parser sets a part's type after starting it; a part without one must not
        # inherit the previous part's.
        self.multipart_content_type = None
        self._value.clear()
        self._spool = self._body.spool() if self.multipart_filename is not None else None

    def on_data_received(self, chunk: bytes) -> None:
        # Parts the parser still hands out from a chunk after a refusal are dropped.
        if self._body.error is not None:
            return
        if self._spool is None:
            self._value += chunk
            if len(self._value) > MAX_PLAIN_BODY:
                self._body.refuse_too_large()
            return
        self._spool.write(chunk)
        if self._spool.over_limit:
            self._body.refuse_too_large()

    def on_finish(self) -> None:
        if self._body.error is not None:
            return
        if self._spool is None:
            self._body.add_value(self._name, bytes(self._value))
            return
        upload = Upload(self.multipart_filename, self.multipart_content_type, self._spool.finish())
        self._spool = None
        self._body.add_upload(self._name, upload)

    def drop(self) -> None:
        if self._spool is not None:
            self._spool.discard()
            self._spool = None


def _decode_arguments(arguments: Mapping[str, list[bytes]]) -> JsonDict:
    return {name: values[-1].decode("utf-8", "replace") for name, values in arguments.items() if values}


def _json_body(body: bytes) -> JsonDict:
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse JSON object") from None
    if not isinstance(parsed, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse JSON object") from None
    return parsed
