"""An upload's import, from the multipart body's bytes as they arrive to the ended import.

The body is streamed: each network chunk goes through the form parser and the
file's incremental parser, and every full batch is upserted before the next
chunk is taken, so memory stays flat and a slow database slows the sender
rather than filling buffers. A problem found before any record was read (wrong
or empty file, CSV header lacking columns, missing or bad channel) refuses the
upload and leaves no import behind; from the first record on, the import
exists and a later problem ends it as failed, the records before it kept.

The request handler (server/handlers/imports.py) owns the HTTP exchange; it
hands the body's chunks to an Upload and answers the refusals the Upload gives
it back through the UploadClient protocol (server/importing/refusals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException

from contract import clock
from contract.importformat import HEAD_BYTES, FileFormatError, UnsupportedFileType, detect_kind
from contract.values import CHANNEL_RULE, channel_ref
from runtime.failpoints import failpoint
from server.importing import jobs
from server.importing.feed import RecordFeed, Tally
from server.importing.limits import RecordLimits
from server.importing.multipart import FieldPart, FilePart, boundary
from server.importing.parsers import open_parser
from server.importing.refusals import (
    Conflicting,
    FieldProblem,
    FilePlace,
    Malformed,
    Refused,
    TooLarge,
    TryLater,
    Unreadable,
    UnsupportedFile,
)
from server.importing.running import Imports

log = logging.getLogger(__name__)

T = TypeVar("T")

# The `file` part must begin within this much of the body: the channel field and
# a preamble (which RFC 2046 allows, and which the form parser does not take, so
# it is dropped here) are small; anything else up front is not a session file.
MAX_PREAMBLE = 64 * 1024


class UploadClient(Protocol):
    """What an upload needs of the request that carries it."""

    @property
    def answered(self) -> bool:
        """An answer has gone out."""

    def refuse(self, refusal: Refused) -> None:
        """Answer `refusal` when the body ends (or at once if too much of it is still to come)."""

    def answer_problem(self, refusal: Refused) -> None:
        """Answer `refusal` now, while the body may still be arriving."""

    async def database(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` on the database threads, bounded as a request's queries are."""


def checked_channel(raw: object) -> str:
    """The announcement target, in its one spelling (contract/values.py); Malformed if it names none."""
    if not isinstance(raw, str) or not raw.strip():
        raise Malformed(
            "invalid-channel",
            "channel is required: a Telegram channel or group as @name or numeric id (-100…, or a basic group's -…)",
            [FieldProblem("channel", "required")],
        )
    channel = channel_ref(raw)
    if channel is None:
        raise Malformed(
            "invalid-channel", f"channel {raw.strip()[:40]!r}: {CHANNEL_RULE}", [FieldProblem("channel", CHANNEL_RULE)]
        )
    return channel


class Upload:
    """One multipart upload being imported while it arrives.

    Its steps (`receive`, `end`, `stop`, `abandon`) take turns under one lock:
    a shutdown or a dropped connection waits for the chunk in hand.
    """

    def __init__(
        self,
        client: UploadClient,
        headers: Mapping[str, str],
        imports: Imports,
        limits: RecordLimits,
        max_bytes: int,
    ) -> None:
        try:
            self._form = StreamingFormDataParser(headers)
        except ParseFailedException as exc:
            raise Malformed("invalid-multipart", f"cannot read the multipart body: {exc}") from exc
        self._client = client
        self._imports = imports
        self._limits = limits
        self._max_bytes = max_bytes
        self._lock = asyncio.Lock()
        self._received = 0  # bytes of the body
        self._preamble: bytearray | None = bytearray()  # until the first boundary is found
        self._delimiter = b"--" + boundary(headers.get("Content-Type", ""))
        self._channel_part, self._file_part = FieldPart(), FilePart()
        self._form.register("channel", self._channel_part)
        self._form.register("file", self._file_part)
        self._channel: str | None = None
        self._head = bytearray()
        self._kind: str | None = None
        self._feed: RecordFeed | None = None
        self._job: dict[str, Any] | None = None
        self._batches = 0
        self._refusal: Refused | None = None
        self._reading = True  # the file's bytes are parsed; after a refusal or a failure, dropped
        self._done = False  # the import has ended, or was refused before it began
        self._started_at = clock.now()

    @property
    def running(self) -> bool:
        """Neither ended nor refused: a dropped connection must end it."""
        return not self._done

    async def receive(self, chunk: bytes, received: int) -> None:
        """The body's next chunk; `received` counts the body's bytes so far, this chunk's included.

        Refusals go to the client; anything else raised (the database failed)
        ends the reading, and the caller answers it.
        """
        async with self._lock:
            self._received = received
            if not self._reading or self._client.answered:
                return
            try:
                await self._receive(chunk)
            except BaseException:
                self._reading = False  # the import cannot go on
                raise

    async def end(self) -> dict[str, Any]:
        """The body has ended: read the rest, end the import and return it; the refusal if refused."""
        async with self._lock:
            if self._reading:
                await self._pump()
            if self._refusal is not None:
                raise self._refusal
            if not self._file_part.started:
                missing = ["channel"] if not self._channel_part.received else []
                missing.append("file")
                raise Malformed(
                    "missing-field",
                    f"the form lacks the field(s) {', '.join(missing)}",
                    [FieldProblem(name, "required") for name in missing],
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
            return job

    async def stop(self) -> None:
        """Shutdown: finish the batch in hand, end the import as failed, answer 503."""
        async with self._lock:
            if self._done or self._client.answered:
                return
            with contextlib.suppress(Refused):
                await self._end_early(
                    TryLater(
                        "unavailable",
                        "the server is shutting down; send the file again (what is imported already stays unchanged)",
                        5,
                    ),
                    "shutdown",
                )

    async def abandon(self) -> None:
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

    async def _receive(self, chunk: bytes) -> None:
        if self._received > self._max_bytes:
            await self._end_early(
                TooLarge("payload-too-large", f"the upload passed the limit of {self._max_bytes} bytes"), "too-large"
            )
            return
        if (part := self._past_preamble(chunk)) is None:
            return
        try:
            self._form.data_received(part)
        except ParseFailedException as exc:
            await self._end_early(
                Malformed("invalid-multipart", f"cannot read the multipart body: {exc}"), "interrupted", linger=True
            )
            return
        except UnicodeDecodeError as exc:
            # The form parser decodes part headers as UTF-8, as RFC 7578 has them.
            message = f"a part's headers are not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
            await self._end_early(
                Malformed(
                    "invalid-multipart",
                    f"cannot read the multipart body: {message}",
                    [FieldProblem("part headers", message)],
                ),
                "interrupted",
                linger=True,
            )
            return
        if not self._file_part.started and self._received > MAX_PREAMBLE:
            message = f"the file part must begin within the first {MAX_PREAMBLE} bytes of the body"
            self._refuse(
                Malformed(
                    "invalid-multipart", message + " (send only channel before it)", [FieldProblem("file", message)]
                )
            )
            return
        await self._pump()

    async def _pump(self) -> None:
        """Feed the file's new bytes on: detect the format first, then parse and upsert."""
        if not self._file_part.started or self._refusal is not None:
            return
        if self._channel is None:
            try:
                self._channel = checked_channel(self._channel_part.text())
            except Malformed as error:
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
                self._kind = detect_kind(
                    self._file_part.multipart_filename, self._file_part.multipart_content_type, bytes(self._head)
                )
            except UnsupportedFileType as exc:
                self._refuse(UnsupportedFile("unsupported-file-type", str(exc)))
                return
            parser = open_parser(self._kind, self._limits)
            self._feed = RecordFeed(self._imports.db, parser, on_batch=self._save_batch)
            pieces, self._head = [bytes(self._head)], bytearray()
        for piece in pieces:
            await self._feed.feed(piece)
            if self._feed.failure is not None:
                self._reading = False  # the rest of the file cannot be read; answer when the body ends
                return

    def _refuse(self, refusal: Refused) -> None:
        self._reading, self._done = False, True
        self._linger(refusal)

    def _linger(self, refusal: Refused) -> None:
        if self._refusal is None:
            self._refusal = refusal
        self._client.refuse(refusal)

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
                    Malformed(
                        "invalid-multipart",
                        f"cannot read the multipart body: {message}",
                        [FieldProblem("file", message)],
                    )
                )
            return None
        self._preamble = None
        return data[start + 2 :] if start else data

    async def _save_batch(self, batch: Tally) -> None:
        if self._job is None:
            job, _ = await self._client.database(
                jobs.create_job,
                self._channel or "",
                self._file_part.multipart_filename or "",
                "upload",
                self._kind,
                self._started_at,
            )
            self._job = job
            log.info("import %s started for upload %r", job["_id"], job["source"])
        try:
            await self._client.database(jobs.save_batch, self._job["_id"], self._batches, batch)
        except jobs.ImportEnded:
            self._done = True  # the reaper ended it: its report stands
            raise Conflicting(
                "import-ended", f"import {self._job['_id']} ended while the file arrived (see its report)"
            ) from None
        failpoint("import.after_batch_record")
        self._batches += 1

    def _refuse_unreadable_file(self) -> None:
        failure = self._feed.failure if self._feed else None
        if not self._file_part.size or failure is None:
            raise Unreadable("empty-file", "the file is empty", [FieldProblem("file", "empty")])
        raise Unreadable(
            "invalid-file",
            f"the file cannot be imported: {failure.message}; nothing was imported",
            [FieldProblem("file", failure.message, FilePlace(failure.line, failure.offset))],
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
        total = self._feed.total if self._feed is not None else Tally()
        return await self._imports.finish(self._job["_id"], total, failure, self._file_part.size)

    def _stopped_at(self, reason: str, message: str) -> dict[str, Any]:
        return {"reason": reason, "message": message, "offset": self._file_part.size, "line": None}

    async def _end_early(self, refusal: Refused, reason: str, linger: bool = False) -> None:
        """End the import before the body did: keep what is read, report it, answer.

        Answered now, or with `linger` when the body ends, so that a client still
        sending reads the answer instead of a reset.
        """
        job = await self._end_import(self._stopped_at(reason, refusal.detail))
        if job is not None:
            refusal.detail += f"; import {job['_id']} ended as failed, keeping the records read before"
            refusal.import_id = job["_id"]
        if linger:
            self._linger(refusal)
        else:
            self._client.answer_problem(refusal)


def _failure(failure: FileFormatError | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {"reason": "invalid-file", "message": failure.message, "offset": failure.offset, "line": failure.line}
