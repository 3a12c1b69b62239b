"""The base handlers of the imports API: their services, and a body streamed in that may be refused.

The upload and the chunks of a chunked import are read as they arrive
(`@stream_request_body`), so a refusal can come before the body has ended:
`StreamedBodyHandler` keeps it and answers when it may (see its docstring).
How many such bodies one replica reads at once is bounded by
`server.importing.jobs.ImportSlots`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.httpserver import declared_length
from server.handlers.base import ApiHandler, object_id
from server.importing import jobs
from server.importing.feed import Tally
from server.importing.limits import RecordLimits
from server.importing.refusals import Refused
from server.importing.reports import report
from server.importing.running import Imports
from server.problems import ApiError

# Tornado cuts a body off at the connection's limit with a bare 400. Uploads get
# this much more, so the handler sees the excess itself and answers 413.
BODY_SLACK = 1024 * 1024
# How much of a refused body is read and dropped before answering (see StreamedBodyHandler).
LINGER_BYTES = 8 * 1024 * 1024


class ImportsApiHandler(ApiHandler):
    @property
    def imports(self) -> Imports:
        return self.services.imports

    @property
    def record_limits(self) -> RecordLimits:
        config = self.services.config
        return RecordLimits(
            config.import_max_record_bytes,
            config.import_max_record_depth,
            config.import_max_record_values,
            config.import_max_record_messages,
        )

    async def find_job(self, raw_id: str) -> dict[str, Any]:
        job_id = object_id(raw_id)
        job = None if job_id is None else await self.database(jobs.find_job, job_id)
        if job is None:
            raise ApiError(404, f"there is no import with id {raw_id[:40]!r}", kind="import-not-found")
        return job

    def answer_report(self, job: dict[str, Any], status: int, tally: Tally | None = None) -> None:
        self.set_header("Location", self.reverse_url("import", str(job["_id"])))
        self.write_json(report(job, tally), status=status)

    async def current_tally(self, job: dict[str, Any]) -> Tally | None:
        """A running job's counts so far (with a batch recorded and not yet added); None once it ended."""
        if job["status"] != jobs.RUNNING:
            return None
        return await self.database(jobs.job_totals, job)


class StreamedBodyHandler(ImportsApiHandler):
    """A route whose body is streamed, and which may refuse it before it has all arrived.

    Answering a client that is still sending and then closing the connection
    under it resets the connection, and the client may never read the answer.
    So a refusal is kept, the body read on and dropped, and the answer sent
    when the body ends; as nginx's lingering close does, only for so long: past
    LINGER_BYTES the answer goes at once, whatever becomes of it.
    """

    async def prepare(self) -> None:  # type: ignore[override]  # Tornado awaits a coroutine prepare
        self.received = 0
        self.refusal: ApiError | Refused | None = None
        self._refused_at = 0
        # The guard refused a Content-Length that is not ASCII digits before this ran.
        self._length = declared_length(self.request.headers)
        try:
            super().prepare()  # the token
            await self.start()
        except (ApiError, Refused) as error:
            self.refuse(error)

    async def start(self) -> None:
        """Check the request before its body; raise ApiError or a refusal to refuse it."""

    def limit_body(self, limit: int) -> None:
        if self._length is not None and self._length > limit:
            if self.request.connection is not None:
                # So Tornado reads no further than this body, and does not answer 400 itself.
                self.request.connection.set_max_body_size(self._length)  # type: ignore[attr-defined]
            raise ApiError(
                413, f"the body is {self._length} bytes; at most {limit} are accepted", kind="payload-too-large"
            )
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(limit + BODY_SLACK)  # type: ignore[attr-defined]
            # Authenticated by now: an upload over a slow link may take this long.
            self.request.connection.set_body_timeout(  # type: ignore[attr-defined]
                self.services.config.import_body_timeout
            )

    def refuse(self, error: ApiError | Refused) -> None:
        """Answer `error` when the body ends, or at once if too much of it is still to come."""
        if self.refusal is None:
            self.refusal, self._refused_at = error, self.received
            if self.request.connection is not None and self._length is not None and not self.received:
                # Refused before its body: this route drops it and answers itself, however long.
                self.request.connection.set_max_body_size(self._length)  # type: ignore[attr-defined]
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

    def take_import_slot(self) -> None:
        """Count this request among the imports being read (before its first await), or refuse it."""
        self.services.import_slots.take(self)

    def on_finish(self) -> None:
        self.services.import_slots.release(self)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.services.import_slots.release(self)


async def yield_to_other_requests() -> None:
    """Let the loop serve others between two chunks of a body.

    Tornado reads a body already in its buffer chunk after chunk without giving
    the loop back (awaiting a finished future does not yield), so a fast client's
    upload of millions of tiny JSON values would hold every other request,
    `/ready` included, until it was parsed whole.
    """
    await asyncio.sleep(0)
