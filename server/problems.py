"""The problems an API request can run into, as RFC 9457 documents, wherever they are found.

Handlers raise them; the import machinery behind them raises refusals of its
own domain (server/importing/refusals.py), which `refused` maps to their
status here. The base handlers' `write_error` is the one place a problem's
body is built.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError
from tornado.web import HTTPError

from server import failover
from server.importing import refusals
from server.models.stored import Contended

log = logging.getLogger(__name__)


class ApiError(HTTPError):
    """An HTTP error that becomes an RFC 9457 problem document.

    `kind` names the problem type; `errors` lists field-level problems
    (`{"field": ..., "message": ...}`) for validation failures.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason=None)
        self.detail = detail
        self.kind = kind
        self.errors = errors or []
        self.headers = headers or {}


def field_error(name: str, message: str, where: str = "body") -> dict[str, str]:
    """An entry of a problem's `errors[]`: which field, where in the request (body, query, header), what."""
    return {"field": name, "in": where, "message": message}


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """MongoDB out of reach, or writes racing this one too often, is a 503 with Retry-After:
    the client may try again, it is no bug."""
    try:
        yield
    except Contended as exc:
        log.warning("a request kept meeting other writers: %s", exc)
        raise try_again("contended", "other changes to the same sessions kept racing this request", 1) from exc
    except ServerSelectionTimeoutError as exc:  # no server to send to: before any timeout question
        raise _unavailable(exc) from exc
    except PyMongoError as exc:
        if exc.timeout:
            # QUERY_MAX_TIME_MS ran out (on the server, or while waiting for its
            # answer). The request was valid; the server could not answer it in
            # time, so it is the server's 503, not the client's 4xx.
            log.warning("a request's database time ran out: %s", exc)
            raise try_again("query-timeout", "the database did not answer in time", 5) from exc
        # A replica set electing a primary fails writes with codes and labels, not
        # only with lost connections; those are as temporary (server/failover.py).
        if isinstance(exc, ConnectionFailure) or failover.is_transient(exc):
            raise _unavailable(exc) from exc
        raise


def _unavailable(exc: Exception) -> ApiError:
    log.warning("mongodb unavailable while serving a request: %s", exc)
    return try_again("unavailable", "the database is not answering", 5)


def try_again(kind: str, reason: str, seconds: int) -> ApiError:
    """A 503 for a valid request the server could not serve now: `reason`, and when to ask again."""
    return ApiError(503, f"{reason}; try again shortly", kind=kind, headers={"Retry-After": str(seconds)})


# The status of each kind of refusal of the import domain.
REFUSAL_STATUS: dict[type[refusals.Refused], int] = {
    refusals.Malformed: 400,
    refusals.Conflicting: 409,
    refusals.TooLarge: 413,
    refusals.UnsupportedFile: 415,
    refusals.Unreadable: 422,
    refusals.TryLater: 503,
}


def refused(refusal: refusals.Refused) -> ApiError:
    """The problem that answers a refusal of the import domain."""
    status = next(code for kind, code in REFUSAL_STATUS.items() if isinstance(refusal, kind))
    errors = [
        {
            **field_error(problem.field, problem.message),
            **({"offset": problem.place.offset, "line": problem.place.line} if problem.place else {}),
        }
        for problem in refusal.problems
    ]
    headers = {"Retry-After": str(refusal.retry_after)} if isinstance(refusal, refusals.TryLater) else {}
    return ApiError(status, refusal.detail, kind=refusal.kind, errors=errors, headers=headers)
