"""The imports API: uploads streamed into the import engine, the CLI's chunked imports, reports.

    POST /v1/imports                    multipart/form-data, `channel` then `file`: 202 + Location
    POST /v1/imports                    JSON {"channel", "source"}: 201 + Location, a chunked import
    PUT  /v1/imports/{id}/chunks/{seq}  NDJSON record envelopes (server.importing.chunks): 200
    POST /v1/imports/{id}/complete      JSON {"chunks": n}: 200, the import ends and is announced
    GET  /v1/imports/{id}               the report

An upload is imported while it streams in: each network chunk goes through the
incremental parser, and every full batch is upserted before Tornado reads on,
so memory stays flat and a slow database slows the sender rather than filling
buffers. The 202 goes out when the body has ended; by then the import has ended
too, and the body is its report. A problem found before any record was read
(wrong or empty file, CSV header lacking columns, missing or bad channel) is
answered 4xx and leaves no import behind; from the first record on, the import
exists and a later problem ends it as failed, the records before it kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from email.message import Message
from typing import Any

from bson import ObjectId
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget
from tornado.web import stream_request_body, url

from contract.failpoints import failpoint
from server.conversations import utcnow
from server.handlers.base import ApiError, ApiHandler, database_errors
from server.importing import jobs
from server.importing.chunks import MAX_WHOLE, ChunkParser, whole_number
from server.importing.chunks import MEDIA_TYPE as CHUNK_MEDIA_TYPE
from server.importing.feed import RecordFeed, Tally
from server.importing.jobs import Imports
from server.importing.parsers import FileFormatError, RecordLimits, UnsupportedFileType, detect_kind, open_parser

log = logging.getLogger(__name__)


IMPORT_ID = r"(?P<import_id>[^/]+)"
# The route takes at most nine digits of sequence number.
MAX_CHUNK_SEQ = 999_999_999
# A Telegram channel: its public @username (5 to 32 letters, digits and
# underscores, starting with a letter) or its numeric id, which starts -100.
CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{4,31}|-100\d{1,16}")
# What detect_kind needs to tell the formats apart, when the file has it.
HEAD_BYTES = 4096
MAX_FIELD_BYTES = 1024
MAX_JSON_BODY = 16 * 1024
# Tornado cuts a body off at the connection's limit with a bare 400. Uploads get
# this much more, so the handler sees the excess itself and answers 413.
BODY_SLACK = 1024 * 1024
# How much of a refused body is read and dropped before answering (see StreamedBodyHandler).
LINGER_BYTES = 8 * 1024 * 1024
# The `file` part must begin within this much of the body: the channel field and
# a preamble (which RFC 2046 allows, and which the form parser does not take, so
# it is dropped here) are small; anything else up front is not a session file.
MAX_PREAMBLE = 64 * 1024
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")


def channel_ref(raw: object) -> str:
    """The announcement target, checked; @usernames lower-cased, as Telegram ignores case.

    One spelling per channel also gives the bot's rate limiter, which keys on
    the chat id as written, one bucket per channel.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(
            400,
            "channel is required: a Telegram channel as @name or -100… id",
            kind="invalid-channel",
            errors=[field_error("channel", "required")],
        )
    channel = raw.strip()
    if not CHANNEL.fullmatch(channel):
        message = "expected @name (5-32 letters, digits or _) or a -100… channel id"
        raise ApiError(
            400,
            f"channel {channel[:40]!r}: {message}",
            kind="invalid-channel",
            errors=[field_error("channel", message)],
        )
    return channel.lower()


def field_error(name: str, message: str) -> dict[str, str]:
    """An entry of a problem's `errors[]`: every field of this API is in the body."""
    return {"field": name, "in": "body", "message": message}


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


class ImportsApiHandler(ApiHandler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Sent on every answer, so a 405 also says what the route does take.
        self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))

    @property
    def imports(self) -> Imports:
        return self.settings["imports"]

    @property
    def record_limits(self) -> RecordLimits:
        config = self.settings["config"]
        return RecordLimits(
            config.import_max_record_bytes,
            config.import_max_record_depth,
            config.import_max_record_values,
            config.import_max_record_messages,
        )

    async def find_job(self, raw_id: str) -> dict[str, Any]:
        job = await self.database(jobs.find_job, ObjectId(raw_id)) if _OBJECT_ID.fullmatch(raw_id) else None
        if job is None:
            raise ApiError(404, f"there is no import with id {raw_id[:40]!r}", kind="import-not-found")
        return job

    async def running_chunked_job(self, raw_id: str) -> dict[str, Any]:
        job = await self.find_job(raw_id)
        if job["mode"] != "chunks":
            raise ApiError(
                409, "this import is an upload; only imports started with a JSON body take chunks", kind="not-chunked"
            )
        if job["status"] != jobs.RUNNING:
            raise ApiError(409, f"this import has ended ({job['status']}); start a new one", kind="import-ended")
        return job

    def answer_report(self, job: dict[str, Any], status: int, tally: Tally | None = None) -> None:
        self.set_header("Location", self.reverse_url("import", str(job["_id"])))
        self.write_json(jobs.report(job, tally), status=status)

    def answer_problem(self, error: ApiError) -> None:
        """Answer now, from outside the handler method (the body is still arriving)."""
        if not self._finished:
            self.send_error(error.status_code, exc_info=(type(error), error, None))


class StreamedBodyHandler(ImportsApiHandler):
    """A route whose body is streamed, and which may refuse it before it has all arrived.

    Answering a client that is still sending and then closing the connection
    under it resets the connection, and the client may never read the answer.
    So a refusal is kept, the body read on and dropped, and the answer sent
    when the body ends; as nginx's lingering close does, only for so long: past
    LINGER_BYTES the answer goes at once, whatever becomes of it.
    """

    async def prepare(self) -> None:
        self.received = 0
        self.refusal: ApiError | None = None
        self._refused_at = 0
        self._length = int(length) if (length := self.request.headers.get("Content-Length", "")).isdigit() else None
        try:
            super().prepare()  # the token
            await self.start()
        except ApiError as error:
            self.refuse(error)

    async def start(self) -> None:
        """Check the request before its body; raise ApiError to refuse it."""

    def limit_body(self, limit: int) -> None:
        if self._length is not None and self._length > limit:
            if self.request.connection is not None:
                # So Tornado reads no further than this body, and does not answer 400 itself.
                self.request.connection.set_max_body_size(self._length)
            raise ApiError(
                413, f"the body is {self._length} bytes; at most {limit} are accepted", kind="payload-too-large"
            )
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(limit + BODY_SLACK)
            # Authenticated by now: an upload over a slow link may take this long.
            self.request.connection.set_body_timeout(self.settings["config"].import_body_timeout)

    def refuse(self, error: ApiError) -> None:
        """Answer `error` when the body ends, or at once if too much of it is still to come."""
        if self.refusal is None:
            self.refusal, self._refused_at = error, self.received
        if self._length is not None and self._length - self.received > LINGER_BYTES:
            self.answer_problem(error)

    def discarding(self, chunk: bytes) -> bool:
        """Count the chunk; True when the request is refused and the chunk is to be dropped."""
        self.received += len(chunk)
        if self.refusal is None:
            return False
        if self.received - self._refused_at > LINGER_BYTES:
            self.answer_problem(self.refusal)
        return True

    def check_not_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal


async def yield_to_other_requests() -> None:
    """Let the loop serve others between two chunks of a body.

    Tornado reads a body already in its buffer chunk after chunk without giving
    the loop back (awaiting a finished future does not yield), so a fast client's
    upload of millions of tiny JSON values would hold every other request,
    `/ready` included, until it was parsed whole.
    """
    await asyncio.sleep(0)


class _FieldPart(BaseTarget):
    """A short text field of the form, such as `channel`."""

    def __init__(self) -> None:
        super().__init__()
        self.value = bytearray()
        self.received = False

    def on_data_received(self, chunk: bytes) -> None:
        if len(self.value) <= MAX_FIELD_BYTES:
            self.value += chunk[: MAX_FIELD_BYTES + 1 - len(self.value)]

    def on_finish(self) -> None:
        self.received = True

    def text(self) -> str | None:
        if not self.received:
            return None
        return self.value.decode("utf-8", errors="replace")


class _FilePart(BaseTarget):
    """The `file` part: holds what one network chunk brought until the handler takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[bytes] = []
        self.size = 0
        self.ended = False

    @property
    def started(self) -> bool:
        return self._started

    def on_data_received(self, chunk: bytes) -> None:
        self.pieces.append(chunk)
        self.size += len(chunk)

    def on_finish(self) -> None:
        self.ended = True

    def take(self) -> list[bytes]:
        pieces, self.pieces = self.pieces, []
        return pieces


@stream_request_body
class ImportsHandler(StreamedBodyHandler):
    SUPPORTED_METHODS = ("POST",)

    async def start(self) -> None:
        self._json: bytearray | None = None
        self._form: StreamingFormDataParser | None = None
        self._lock = asyncio.Lock()
        limit = self.settings["config"].import_max_bytes
        content_type = self.request.headers.get("Content-Type")
        if media_type(content_type) == "application/json":
            self.limit_body(MAX_JSON_BODY)
            self._json = bytearray()
        elif media_type(content_type) == "multipart/form-data":
            self.limit_body(limit)
            self._start_upload()
        else:
            raise ApiError(
                415,
                "send a file as multipart/form-data with the fields channel and file, "
                "or a JSON object {channel, source} to start a chunked import",
                kind="unsupported-media-type",
            )

    async def data_received(self, chunk: bytes) -> None:
        if self.discarding(chunk):
            return
        if self._json is not None:
            if self.received > MAX_JSON_BODY:
                self.refuse(ApiError(413, f"a JSON body is at most {MAX_JSON_BODY} bytes", kind="payload-too-large"))
            else:
                self._json += chunk
            return
        async with self._lock:
            await self._receive(chunk)
        await yield_to_other_requests()

    async def post(self) -> None:
        """Start an import: of the uploaded file, or (JSON body) one the CLI feeds in chunks."""
        if self._finished:
            return  # answered while the body was arriving
        self.check_not_refused()
        if self._json is not None:
            await self._create_chunked_job()
            return
        async with self._lock:
            with database_errors():
                await self._end_upload()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if getattr(self, "_form", None) is not None and not self._finished:
            self.imports.in_background(self._abandon())

    def on_finish(self) -> None:
        self.imports.unregister(self)

    # --- a chunked import (the CLI) -------------------------------------------

    async def _create_chunked_job(self) -> None:
        self.request.body = bytes(self._json or b"")
        body = self.json_body()
        unknown = sorted(set(body) - {"channel", "source"})
        if unknown:
            raise ApiError(
                400,
                f"unknown fields: {', '.join(unknown)}",
                kind="invalid-body",
                errors=[field_error(name, "not a field of an import") for name in unknown],
            )
        channel = channel_ref(body.get("channel"))
        source = body.get("source", "")
        if not isinstance(source, str) or len(source) > jobs.MAX_SOURCE_LENGTH:
            message = f"must be a string of at most {jobs.MAX_SOURCE_LENGTH} characters (the file's name)"
            raise ApiError(400, f"source {message}", kind="invalid-body", errors=[field_error("source", message)])
        job = await self.database(jobs.create_job, channel, source, "chunks")
        log.info("import %s started for chunks from %r", job["_id"], job["source"])
        self.answer_report(job, 201)

    # --- an upload ------------------------------------------------------------

    def _start_upload(self) -> None:
        try:
            self._form = StreamingFormDataParser(self.request.headers)
        except ParseFailedException as exc:
            raise ApiError(400, f"cannot read the multipart body: {exc}", kind="invalid-multipart") from exc
        self._preamble: bytearray | None = bytearray()  # until the first boundary is found
        self._delimiter = b"--" + _boundary(self.request.headers.get("Content-Type", ""))
        self._channel_part, self._file_part = _FieldPart(), _FilePart()
        self._form.register("channel", self._channel_part)
        self._form.register("file", self._file_part)
        self._channel: str | None = None
        self._head = bytearray()
        self._feed: RecordFeed | None = None
        self._job: dict[str, Any] | None = None
        self._batches = 0
        self._reading = True  # the file's bytes are parsed; after a refusal or a failure, dropped
        self._done = False  # the import has ended, or was refused before it began
        self._started_at = utcnow()
        self.imports.register(self, self._stop)

    async def _receive(self, chunk: bytes) -> None:
        if not self._reading or self._finished:
            return
        limit = self.settings["config"].import_max_bytes
        try:
            with database_errors():
                if self.received > limit:
                    await self._end_early(
                        ApiError(413, f"the upload passed the limit of {limit} bytes", kind="payload-too-large"),
                        "too-large",
                    )
                    return
                if (part := self._past_preamble(chunk)) is None:
                    return
                try:
                    self._form.data_received(part)
                except ParseFailedException as exc:
                    await self._end_early(
                        ApiError(400, f"cannot read the multipart body: {exc}", kind="invalid-multipart"),
                        "interrupted",
                        linger=True,
                    )
                    return
                except UnicodeDecodeError as exc:
                    # The form parser decodes part headers as UTF-8, as RFC 7578 has them.
                    message = f"a part's headers are not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
                    await self._end_early(
                        ApiError(
                            400,
                            f"cannot read the multipart body: {message}",
                            kind="invalid-multipart",
                            errors=[field_error("part headers", message)],
                        ),
                        "interrupted",
                        linger=True,
                    )
                    return
                if not self._file_part.started and self.received > MAX_PREAMBLE:
                    message = f"the file part must begin within the first {MAX_PREAMBLE} bytes of the body"
                    self._refuse(
                        ApiError(
                            400,
                            message + " (send only channel before it)",
                            kind="invalid-multipart",
                            errors=[field_error("file", message)],
                        )
                    )
                    return
                await self._pump()
        except ApiError as error:  # the database failed: the import cannot go on
            self._reading = False
            self.answer_problem(error)

    async def _pump(self) -> None:
        """Feed the file's new bytes on: detect the format first, then parse and upsert."""
        if not self._file_part.started or self.refusal is not None:
            return
        if self._channel is None:
            try:
                self._channel = channel_ref(self._channel_part.text())
            except ApiError as error:
                if not self._channel_part.received:
                    error.detail += " (send the channel field before the file)"
                self._refuse(error)
                return
        pieces = self._file_part.take()
        if self._feed is None:
            self._head += b"".join(pieces)
            if len(self._head) < HEAD_BYTES and not self._file_part.ended:
                return
            try:
                kind = detect_kind(
                    self._file_part.multipart_filename, self._file_part.multipart_content_type, bytes(self._head)
                )
            except UnsupportedFileType as exc:
                self._refuse(ApiError(415, str(exc), kind="unsupported-file-type"))
                return
            self._kind = kind
            self._feed = RecordFeed(self.imports.db, open_parser(kind, self.record_limits), on_batch=self._save_batch)
            pieces, self._head = [bytes(self._head)], bytearray()
        for piece in pieces:
            await self._feed.feed(piece)
            if self._feed.failure is not None:
                self._reading = False  # the rest of the file cannot be read; answer when the body ends
                return

    def _refuse(self, error: ApiError) -> None:
        self._reading, self._done = False, True
        self.refuse(error)

    def _past_preamble(self, chunk: bytes) -> bytes | None:
        """The body from its first boundary on; None while that is still to come, or refused."""
        if self._preamble is None:
            return chunk
        self._preamble += chunk
        data = bytes(self._preamble)
        start = 0 if data.startswith(self._delimiter) else data.find(b"\r\n" + self._delimiter)
        if start < 0:
            if len(data) > MAX_PREAMBLE:
                message = f"no part begins within the first {MAX_PREAMBLE} bytes of the body"
                self._refuse(
                    ApiError(
                        400,
                        f"cannot read the multipart body: {message}",
                        kind="invalid-multipart",
                        errors=[field_error("file", message)],
                    )
                )
                return None
            # Keep only what may still hold the start of the boundary line.
            return None
        self._preamble = None
        return data[start + 2 :] if start else data

    async def _save_batch(self, batch: Tally) -> None:
        if self._job is None:
            self._job = await self.database(
                jobs.create_job,
                self._channel or "",
                self._file_part.multipart_filename or "",
                "upload",
                self._kind,
                self._started_at,
            )
            log.info("import %s started for upload %r", self._job["_id"], self._job["source"])
        await self.database(jobs.save_batch, self._job["_id"], self._batches, batch)
        failpoint("import.after_batch_record")
        self._batches += 1

    async def _end_upload(self) -> None:
        if self._reading:
            await self._pump()
        self.check_not_refused()
        if not self._file_part.started:
            missing = ["channel"] if not self._channel_part.received else []
            missing.append("file")
            raise ApiError(
                400,
                f"the form lacks the field(s) {', '.join(missing)}",
                kind="missing-field",
                errors=[field_error(name, "required") for name in missing],
            )
        assert self._feed is not None
        await self._feed.close()
        if self._job is None and (self._feed.failure is not None or not self._file_part.size):
            self._done = True
            self._refuse_unreadable_file()
        if self._job is None:  # a readable file without records, such as `[]`
            await self._save_batch(Tally())
        job = await self._end_import(None)
        assert job is not None
        self.answer_report(job, 202)

    def _refuse_unreadable_file(self) -> None:
        failure = self._feed.failure if self._feed else None
        if not self._file_part.size or failure is None:
            raise ApiError(422, "the file is empty", kind="empty-file", errors=[field_error("file", "empty")])
        where = {"offset": failure.offset, "line": failure.line}
        raise ApiError(
            422,
            f"the file cannot be imported: {failure.message}; nothing was imported",
            kind="invalid-file",
            errors=[{**field_error("file", failure.message), **where}],
        )

    async def _end_import(self, failure: dict[str, Any] | None) -> dict[str, Any] | None:
        """Write what was read, end the import with its report and announcement; None if none began.

        A file that broke before the import ended says why it failed, whatever ended it.
        """
        self._reading, self._done = False, True
        if self._feed is not None:
            await self._feed.finish_early()
            failure = _failure(self._feed.failure) or failure
        if self._job is None:
            return None
        return await self.imports.finish(self._job["_id"], self._feed.total, failure, self._file_part.size)

    def _stopped_at(self, reason: str, message: str) -> dict[str, Any]:
        return {"reason": reason, "message": message, "offset": self._file_part.size, "line": None}

    async def _end_early(self, error: ApiError, reason: str, linger: bool = False) -> None:
        """End the import before the body did: keep what is read, report it, answer.

        Answered now, or with `linger` when the body ends (see StreamedBodyHandler),
        so that a client still sending reads the answer instead of a reset.
        """
        job = await self._end_import(self._stopped_at(reason, error.detail))
        if job is not None:
            error.detail += f"; import {job['_id']} ended as failed, keeping the records read before"
            error.headers["Location"] = self.reverse_url("import", str(job["_id"]))
        if linger:
            self.refuse(error)
        else:
            self.answer_problem(error)

    async def _stop(self) -> None:
        """Shutdown: finish the batch in hand, end the import as failed, answer 503."""
        async with self._lock:
            if self._done or self._finished:
                return
            with contextlib.suppress(ApiError):
                await self._end_early(
                    ApiError(
                        503,
                        "the server is shutting down; send the file again (what is imported already stays unchanged)",
                        kind="unavailable",
                        headers={"Retry-After": "5"},
                    ),
                    "shutdown",
                )

    async def _abandon(self) -> None:
        """The client went away mid-upload: end its import as failed."""
        async with self._lock:
            if not self._done:
                await self._end_import(
                    self._stopped_at(
                        "interrupted",
                        "the client closed the connection before the upload ended, after "
                        f"{self._file_part.size} bytes of the file",
                    )
                )


def _boundary(content_type: str) -> bytes:
    """The multipart boundary named by the Content-Type (the form parser has checked it is there)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    return boundary.encode("latin-1", errors="replace") if isinstance(boundary, str) else b""


def _failure(failure: FileFormatError | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {"reason": "invalid-file", "message": failure.message, "offset": failure.offset, "line": failure.line}


class ImportHandler(ImportsApiHandler):
    SUPPORTED_METHODS = ("GET",)

    async def get(self, import_id: str) -> None:
        """An import's report: status, counts, first errors, timing."""
        job = await self.find_job(import_id)
        tally = None
        if job["status"] == jobs.RUNNING:
            tally, _ = await self.database(jobs.batch_totals, job["_id"])
        self.write_json(jobs.report(job, tally))


@stream_request_body
class ImportChunkHandler(StreamedBodyHandler):
    SUPPORTED_METHODS = ("PUT",)

    async def start(self) -> None:
        self._feed: RecordFeed | None = None
        if media_type(self.request.headers.get("Content-Type")) != CHUNK_MEDIA_TYPE:
            raise ApiError(415, f"send a chunk as {CHUNK_MEDIA_TYPE}", kind="unsupported-media-type")
        config = self.settings["config"]
        self.limit_body(config.import_max_bytes)
        job = await self.running_chunked_job(self.path_kwargs["import_id"])
        seq = int(self.path_kwargs["seq"])
        self._job, self._seq = job, seq
        self._stored = await self.database(jobs.find_batch, job["_id"], seq)
        if self._stored is None and seq > job.get("next_chunk", 0):
            job["next_chunk"] = await self.database(jobs.repair_next_chunk, job["_id"])
        if self._stored is None and seq > job.get("next_chunk", 0):
            raise ApiError(
                409,
                f"chunk {job.get('next_chunk', 0)} comes next: chunks are applied in order",
                kind="chunk-out-of-order",
            )
        if self._stored is None:
            if seq >= config.import_max_chunks:
                raise ApiError(
                    413,
                    f"an import takes at most {config.import_max_chunks} chunks; "
                    "complete this one and start another for the rest",
                    kind="too-many-chunks",
                )
            self._bytes_left = config.import_max_chunked_bytes - job.get("bytes_received", 0)
            if self._length is not None and self._length > self._bytes_left:
                raise self._too_many_bytes()
            # A chunk sent again after a crash is judged as its first try would have been.
            self._feed = RecordFeed(self.imports.db, ChunkParser(self.record_limits), origin=f"{job['_id']}:{seq}")

    def _too_many_bytes(self) -> ApiError:
        limit = self.settings["config"].import_max_chunked_bytes
        return ApiError(
            413,
            f"the chunks of one import may hold at most {limit} bytes in all; complete this "
            "import and start another for the rest",
            kind="payload-too-large",
        )

    async def data_received(self, chunk: bytes) -> None:
        if self.discarding(chunk) or self._feed is None:  # a chunk stored before is not read again
            return
        if self.received > self._bytes_left:
            self.refuse(self._too_many_bytes())
            return
        try:
            with database_errors():
                await self._feed.feed(chunk)
        except ApiError as error:
            self.refuse(error)
        await yield_to_other_requests()

    async def put(self, import_id: str, seq: str) -> None:
        """Apply one chunk of records, once: the same chunk again changes nothing."""
        self.check_not_refused()
        if self._stored is not None:
            # The first try may have died between its batch record and advancing the
            # job: advance now, or the next chunk would be refused for good.
            await self.database(jobs.advance_chunks, self._job["_id"], self._seq + 1)
            self.write_json(
                _chunk_report(self._seq, Tally.of(self._stored["counts"], self._stored["errors"]), repeated=True)
            )
            return
        assert self._feed is not None
        with database_errors():
            await self._feed.close()
        if self._feed.failure is not None:
            raise ApiError(400, f"chunk {self._seq} cannot be read: {self._feed.failure.message}", kind="invalid-chunk")
        tally = self._feed.total
        first = await self.database(jobs.save_batch, self._job["_id"], self._seq, tally)
        failpoint("import.chunk.after_batch_record")
        await self.database(jobs.advance_chunks, self._job["_id"], self._seq + 1, self.received)
        self.write_json(_chunk_report(self._seq, tally, repeated=not first))


def _chunk_report(seq: int, tally: Tally, repeated: bool) -> dict[str, Any]:
    return {"chunk": seq, "repeated": repeated, "counts": tally.counts(), "errors": tally.errors}


class ImportCompletionHandler(ImportsApiHandler):
    SUPPORTED_METHODS = ("POST",)

    async def post(self, import_id: str) -> None:
        """End a chunked import once all its chunks are in; its summary is announced."""
        body = self.json_body()
        unknown = sorted(set(body) - {"chunks", "failure"})
        if unknown:
            raise ApiError(
                400,
                f"unknown fields: {', '.join(unknown)}",
                kind="invalid-body",
                errors=[field_error(name, "not a field of a completion") for name in unknown],
            )
        chunks = whole_number(body.get("chunks"), minimum=0)
        if chunks is None or chunks > MAX_CHUNK_SEQ + 1:
            raise ApiError(
                400,
                "chunks must be the number of chunks sent",
                kind="invalid-body",
                errors=[field_error("chunks", f"a whole number from 0 to {MAX_CHUNK_SEQ + 1} is required")],
            )
        failure = _client_failure(body.get("failure"))
        job = await self.find_job(import_id)
        if job["mode"] != "chunks":
            raise ApiError(409, "this import is an upload; it ends by itself", kind="not-chunked")
        if job["status"] != jobs.RUNNING:
            self.answer_report(job, 200)  # completed before: same answer, no second announcement
            return
        tally, stored = await self.database(jobs.batch_totals, job["_id"])
        if stored != chunks:
            raise ApiError(
                409,
                f"the import holds {stored} chunks but {chunks} were sent; send chunks "
                f"{stored} to {chunks - 1} before completing",
                kind="chunks-missing",
            )
        with database_errors():
            job = await self.imports.finish(job["_id"], tally, failure)
        self.answer_report(job, 200)


def _client_failure(raw: object) -> dict[str, Any] | None:
    """Where the CLI found the file broken (it parses the file in chunked imports)."""
    if raw is None:
        return None
    where = {
        name: None if not isinstance(raw, dict) or raw.get(name) is None else whole_number(raw[name], 0)
        for name in ("offset", "line")
    }
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("message"), str)
        or not set(raw) <= {"message", "offset", "line"}
        or any(where[name] is None and raw.get(name) is not None for name in where)
    ):
        raise ApiError(
            400,
            "failure must be {message, offset, line}",
            kind="invalid-body",
            errors=[
                field_error(
                    "failure",
                    f"expected {{message: string, offset, line}}, whole numbers from 0 to {MAX_WHOLE} or null",
                )
            ],
        )
    return {"reason": "invalid-file", "message": raw["message"][:500], **where}


default_handlers = [
    url(r"/v1/imports", ImportsHandler, name="imports"),
    url(rf"/v1/imports/{IMPORT_ID}", ImportHandler, name="import"),
    url(rf"/v1/imports/{IMPORT_ID}/chunks/(?P<seq>[0-9]{{1,9}})", ImportChunkHandler, name="import_chunk"),
    url(rf"/v1/imports/{IMPORT_ID}/complete", ImportCompletionHandler, name="import_completion"),
]
