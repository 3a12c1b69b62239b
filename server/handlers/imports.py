"""The imports API: uploads streamed into the import engine, the CLI's chunked imports, reports.

    POST /v1/imports                    multipart/form-data, `channel` then `file`: 202 + Location
    POST /v1/imports                    JSON {"channel", "source"}: 201 + Location, a chunked import
    PUT  /v1/imports/{id}/chunks/{seq}  NDJSON record envelopes (contract/importformat.py): 200
    POST /v1/imports/{id}/complete      JSON {"chunks": n}: 200, the import ends and is announced
    GET  /v1/imports/{id}               the report

The two operations of `POST /v1/imports` are told apart by the Content-Type,
in the routing table, so each has its own handler. An upload is imported while
it streams in (server/importing/upload.py); the 202 goes out when the body has
ended, and by then the import has ended too: the body is its report.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule
from tornado.web import stream_request_body, url

from contract.importformat import CHUNK_MEDIA_TYPE
from contract.values import MAX_WHOLE, media_type, whole_number
from runtime.failpoints import failpoint
from server.handlers.base import FieldProblems, invalid_body, key_reused
from server.handlers.importbase import ImportsApiHandler, StreamedBodyHandler, yield_to_other_requests
from server.importing import jobs
from server.importing.chunks import ChunkParser
from server.importing.feed import RecordFeed, Tally
from server.importing.refusals import Refused
from server.importing.reports import report
from server.importing.upload import Upload, checked_channel
from server.models.stored import IdempotencyKeyReused
from server.problems import ApiError, database_errors

log = logging.getLogger(__name__)


IMPORT_ID = r"(?P<import_id>[^/]+)"
# The route takes at most nine digits of sequence number.
MAX_CHUNK_SEQ = 999_999_999
MAX_JSON_BODY = 16 * 1024


class MediaTypeMatches(PathMatches):
    """A path, for requests whose body is of one media type: one operation, one handler."""

    def __init__(self, path_pattern: str, media: str) -> None:
        super().__init__(path_pattern)
        self.media = media

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if media_type(request.headers.get("Content-Type")) != self.media:
            return None
        return super().match(request)


@stream_request_body
class UploadHandler(StreamedBodyHandler):
    """`POST /v1/imports` with a multipart body: the file is imported as it arrives."""

    SUPPORTED_METHODS = ("POST",)
    upload: Upload | None = None

    async def start(self) -> None:
        config = self.services.config
        self.idempotency_key()  # checked as the route's contract says; an upload is not started by key
        self.limit_body(config.import_max_bytes)
        self.take_import_slot()
        self.upload = Upload(self, self.request.headers, self.imports, self.record_limits, config.import_max_bytes)
        self.imports.register(self, self.upload.stop)

    @property
    def answered(self) -> bool:
        return self._finished

    async def data_received(self, chunk: bytes) -> None:
        if self.discarding(chunk) or self.upload is None:
            return
        try:
            with database_errors():
                await self.upload.receive(chunk, self.received)
        except ApiError as error:  # the database failed: the import cannot go on
            self.answer_problem(error)
        await yield_to_other_requests()

    async def post(self) -> None:
        """Import the uploaded file; the answer is its report."""
        if self._finished:
            return  # answered while the body was arriving
        self.check_not_refused()
        assert self.upload is not None  # no refusal: start() made it
        with database_errors():
            job = await self.upload.end()
        self.answer_report(job, 202)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self.upload is not None and self.upload.running and not self._finished:
            self.imports.in_background(self.upload.abandon())

    def on_finish(self) -> None:
        super().on_finish()
        self.imports.unregister(self)


@stream_request_body
class ChunkedImportStartHandler(StreamedBodyHandler):
    """`POST /v1/imports` with a JSON body: an import the CLI feeds in chunks."""

    SUPPORTED_METHODS = ("POST",)

    async def start(self) -> None:
        self._json = bytearray()
        self.limit_body(MAX_JSON_BODY)

    def data_received(self, chunk: bytes) -> None:
        if self.discarding(chunk):
            return
        if self.received > MAX_JSON_BODY:
            self.refuse(ApiError(413, f"a JSON body is at most {MAX_JSON_BODY} bytes", kind="payload-too-large"))
        else:
            self._json += chunk

    async def post(self) -> None:
        """Start an import whose records the client sends in chunks."""
        if self._finished:
            return
        self.check_not_refused()
        self.request.body = bytes(self._json)
        body, problems = self.body_fields(["channel", "source"], "an import")
        problems.check()
        channel = checked_channel(body.get("channel"))
        source = body.get("source", "")
        if not isinstance(source, str) or len(source) > jobs.MAX_SOURCE_LENGTH:
            raise invalid_body(
                "source", f"must be a string of at most {jobs.MAX_SOURCE_LENGTH} characters (the file's name)"
            )
        try:
            job, created = await self.database(
                jobs.create_job, channel, source, "chunks", idempotency_key=self.idempotency_key()
            )
        except IdempotencyKeyReused:
            raise key_reused(
                "this Idempotency-Key started an import with another channel or source; use a new key for a new import"
            ) from None
        failpoint("import.start.after_job_stored")  # stored, the client not yet told
        if created:
            log.info("import %s started for chunks from %r", job["_id"], job["source"])
            self.answer_report(job, 201)
        else:  # a retry: the import its key started, as it stands now
            self.answer_report(job, 201, await self.current_tally(job))


@stream_request_body
class ImportsHandler(StreamedBodyHandler):
    """`POST /v1/imports` with any other body: which two kinds it takes."""

    SUPPORTED_METHODS = ("POST",)

    async def start(self) -> None:
        raise ApiError(
            415,
            "send a file as multipart/form-data with the fields channel and file, "
            "or a JSON object {channel, source} to start a chunked import",
            kind="unsupported-media-type",
        )

    def data_received(self, chunk: bytes) -> None:
        self.discarding(chunk)

    async def post(self) -> None:
        if not self._finished:
            self.check_not_refused()


class ImportHandler(ImportsApiHandler):
    SUPPORTED_METHODS = ("GET",)

    async def get(self, import_id: str) -> None:
        """An import's report: status, counts, first errors, timing."""
        job = await self.find_job(import_id)
        self.write_json(report(job, await self.current_tally(job)))


@stream_request_body
class ImportChunkHandler(StreamedBodyHandler):
    SUPPORTED_METHODS = ("PUT",)

    async def start(self) -> None:
        self._feed: RecordFeed | None = None
        if media_type(self.request.headers.get("Content-Type")) != CHUNK_MEDIA_TYPE:
            raise ApiError(415, f"send a chunk as {CHUNK_MEDIA_TYPE}", kind="unsupported-media-type")
        config = self.services.config
        self.limit_body(config.import_max_bytes)
        self.take_import_slot()
        job = await self.find_job(self.path_kwargs["import_id"])
        limits = jobs.ChunkLimits(config.import_max_chunks, config.import_max_chunked_bytes)
        self._chunk = await self.database(jobs.admit_chunk, job, int(self.path_kwargs["seq"]), self._length, limits)
        if self._chunk.stored is None:
            # A chunk sent again after a crash is judged as its first try would have been.
            origin = f"{job['_id']}:{self._chunk.seq}"
            self._feed = RecordFeed(self.imports.db, ChunkParser(self.record_limits), origin=origin)
            self._touched, self._touch_every = time.monotonic(), jobs.touch_interval(config.import_idle_timeout)

    async def _keep_running(self) -> None:
        """Touch the job while the chunk arrives: one that takes longer than
        IMPORT_IDLE_TIMEOUT is progress all along, not an import to reap."""
        if time.monotonic() - self._touched < self._touch_every:
            return
        self._touched = time.monotonic()
        if not await self.database(jobs.touch_job, self._chunk.job["_id"]):
            raise self._chunk.ended_meanwhile()

    async def data_received(self, chunk: bytes) -> None:
        if self.discarding(chunk) or self._feed is None:  # a chunk stored before is not read again
            return
        try:
            self._chunk.check_received(self.received)
            with database_errors():
                await self._feed.feed(chunk)
            await self._keep_running()
        except (ApiError, Refused) as error:
            self.refuse(error)
            return
        await yield_to_other_requests()

    async def put(self, import_id: str, seq: str) -> None:
        """Apply one chunk of records, once: the same chunk again changes nothing."""
        self.check_not_refused()
        job_id, seq_number = self._chunk.job["_id"], self._chunk.seq
        if self._chunk.stored is not None:
            # The first try may have died between its batch record and advancing the
            # job: advance now, or the next chunk would be refused for good.
            await self.database(jobs.advance_chunks, job_id, seq_number + 1)
            stored = self._chunk.stored
            self.write_json(_chunk_report(seq_number, Tally.of(stored["counts"], stored["errors"]), repeated=True))
            return
        assert self._feed is not None
        with database_errors():
            await self._feed.close()
        if self._feed.failure is not None:
            message = self._feed.failure.message
            raise ApiError(400, f"chunk {seq_number} cannot be read: {message}", kind="invalid-chunk")
        tally = self._feed.total
        try:
            first = await self.database(jobs.save_batch, job_id, seq_number, tally)
        except jobs.ImportEnded:
            raise self._chunk.ended_meanwhile() from None
        failpoint("import.chunk.after_batch_record")
        await self.database(jobs.advance_chunks, job_id, seq_number + 1, self.received)
        self.write_json(_chunk_report(seq_number, tally, repeated=not first))


def _chunk_report(seq: int, tally: Tally, repeated: bool) -> dict[str, Any]:
    return {"chunk": seq, "repeated": repeated, "counts": tally.counts(), "errors": tally.errors}


class ImportCompletionHandler(ImportsApiHandler):
    SUPPORTED_METHODS = ("POST",)

    async def post(self, import_id: str) -> None:
        """End a chunked import once all its chunks are in; its summary is announced."""
        body, problems = self.body_fields(["chunks", "failure"], "a completion")
        chunks = whole_number(body.get("chunks"), minimum=0)
        if chunks is None or chunks > MAX_CHUNK_SEQ + 1:
            problems.add("chunks", f"must be the number of chunks sent: a whole number from 0 to {MAX_CHUNK_SEQ + 1}")
        failure = _client_failure(body.get("failure"), problems)
        problems.check()
        assert chunks is not None  # a problem otherwise
        job = await self.find_job(import_id)
        if job["mode"] != "chunks":
            raise ApiError(409, "this import is an upload; it ends by itself", kind="not-chunked")
        if job["status"] != jobs.RUNNING:
            self.answer_report(job, 200)  # completed before: same answer, no second announcement
            return
        await self.database(jobs.tally_batches, job["_id"])  # a chunk whose writer died before adding it
        job = await self.find_job(import_id)
        if job["status"] != jobs.RUNNING:
            self.answer_report(job, 200)  # ended meanwhile (the reaper, another completion)
            return
        stored = job.get("tallied") or 0
        if stored != chunks:
            raise ApiError(
                409,
                f"the import holds {stored} chunks but {chunks} were sent; send chunks "
                f"{stored} to {chunks - 1} before completing",
                kind="chunks-missing",
            )
        with database_errors():
            totals = Tally.of(job.get("counts") or {}, job.get("errors") or [])
            job = await self.imports.finish(job["_id"], totals, failure)
        self.answer_report(job, 200)


def _client_failure(raw: object, problems: FieldProblems) -> dict[str, Any] | None:
    """Where the CLI found the file broken (it parses the file in chunked imports); a problem if malformed."""
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
        problems.add(
            "failure", f"must be {{message: string, offset, line}}, whole numbers from 0 to {MAX_WHOLE} or null"
        )
        return None
    return {"reason": "invalid-file", "message": raw["message"][:500], **where}


default_handlers = [
    Rule(MediaTypeMatches(r"/v1/imports", "multipart/form-data"), UploadHandler),
    Rule(MediaTypeMatches(r"/v1/imports", "application/json"), ChunkedImportStartHandler),
    url(r"/v1/imports", ImportsHandler, name="imports"),
    url(rf"/v1/imports/{IMPORT_ID}", ImportHandler, name="import"),
    url(rf"/v1/imports/{IMPORT_ID}/chunks/(?P<seq>[0-9]{{1,9}})", ImportChunkHandler, name="import_chunk"),
    url(rf"/v1/imports/{IMPORT_ID}/complete", ImportCompletionHandler, name="import_completion"),
]
