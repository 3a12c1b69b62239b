"""The base handlers: JSON in and out, bearer auth, typed services, and the one place errors are built.

Every problem a request meets becomes its RFC 9457 document in `write_error`:
the handlers' own `ApiError`s, and the refusals of the import domain
(server/importing/refusals.py), which `send_error` gives their status first.
Bad query parameters and bad body fields are gathered by `FieldProblems` and
reported together in one 400.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import unquote_plus

from bson import ObjectId
from tornado.log import app_log
from tornado.web import HTTPError, RequestHandler

from contract.values import media_type, object_id_text
from runtime.httpserver import PROBLEM_TYPE_ROOT
from server.importing.refusals import Refused
from server.problems import ApiError, database_errors, field_error, refused

if TYPE_CHECKING:
    from server.app import Services

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class JsonHandler(RequestHandler):
    """Base for every route: JSON bodies and problem+json errors."""

    @property
    def services(self) -> Services:
        """What the handlers reach: the database, NATS, the outbox, the settings (server/app.py)."""
        return self.settings["services"]

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if self.SUPPORTED_METHODS is not RequestHandler.SUPPORTED_METHODS:
            # A route that names its methods says so on every answer, so its 405s
            # carry the Allow header RFC 9110 requires of them.
            self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))

    def write_json(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        """Answer with the status of the problem raised; a refusal of the import domain becomes its problem here."""
        _, exc, tb = kwargs.get("exc_info", (None, None, None))
        if isinstance(exc, Refused):
            problem = refused(exc)
            if exc.import_id is not None:
                problem.headers["Location"] = self.reverse_url("import", str(exc.import_id))
            exc, kwargs["exc_info"] = problem, (ApiError, problem, tb)
        if isinstance(exc, HTTPError):
            status_code = exc.status_code
        super().send_error(status_code, **kwargs)

    def answer_problem(self, problem: ApiError | Refused) -> None:
        """Answer now, from outside the handler method (a body still arriving, a stream)."""
        if not self._finished:
            self.send_error(exc_info=(type(problem), problem, None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        title = HTTPStatus(status_code).phrase if status_code in HTTPStatus._value2member_map_ else "Error"
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_ROOT + (getattr(exc, "kind", None) or slug(title)),
            "title": title,
            "status": status_code,
            "detail": getattr(exc, "detail", None) or getattr(exc, "log_message", None) or title,
            "instance": self.request.path,
        }
        if getattr(exc, "errors", None):
            problem["errors"] = exc.errors
        for name, value in getattr(exc, "headers", {}).items():
            self.set_header(name, value)
        if status_code >= 500:
            problem["detail"] = "The server could not complete the request; it has been logged."
        self.set_header("Content-Type", "application/problem+json")
        self.finish(json.dumps(problem, ensure_ascii=False))

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[no-untyped-def]
        if isinstance(value, Refused) or (isinstance(value, HTTPError) and value.status_code < 500):
            return  # a client's mistake (or a "not now"), answered in the problem document
        if isinstance(value, HTTPError):
            super().log_exception(typ, value, tb)  # one warning line, through _request_summary
            return
        # Tornado's own line adds the request's repr, with its raw URI (search words are
        # contacts' names); the summary below masks them.
        app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def _request_summary(self) -> str:
        """How Tornado names the request in its log lines, with private query values masked."""
        return f"{self.request.method} {logged_uri(self.request.uri or '')} ({self.request.remote_ip})"

    def json_body(self) -> dict[str, Any]:
        if media_type(self.request.headers.get("Content-Type")) != "application/json":
            raise ApiError(415, "send the body as application/json", kind="unsupported-media-type")
        raw = self.request.body or b""
        if nesting_exceeds(raw, MAX_JSON_DEPTH):
            message = "nests arrays or objects too deeply to be an API request"
            raise ApiError(400, f"the body {message}", kind="invalid-json", errors=[field_error("body", message)])
        try:
            body = json.loads(raw, parse_int=_bounded_int)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(
                400,
                f"the body is not valid JSON: {exc}",
                kind="invalid-json",
                errors=[field_error("body", str(exc))],
            ) from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", kind="invalid-json")
        return body

    def body_fields(self, known: Iterable[str], what: str) -> tuple[dict[str, Any], FieldProblems]:
        """The JSON body, and its problems so far: each field that is not one of `known` (of `what`)."""
        body = self.json_body()
        problems = FieldProblems.of_body()
        for name in sorted(set(body) - set(known)):
            problems.add(name, f"is not a field of {what}")
        return body, problems


class ApiHandler(JsonHandler):
    """Base for `/v1` routes: a valid bearer token is required."""

    def prepare(self) -> None:
        # During a rotation the previous token is accepted too (API_TOKEN_PREVIOUS).
        accepted = self.services.config.api_tokens
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode()
        # Every token is compared, so the time taken says nothing about which one nearly matched.
        matches = [hmac.compare_digest(presented, expected.encode()) for expected in accepted]
        if scheme.lower() != "bearer" or not any(matches):
            raise ApiError(
                401,
                "send `Authorization: Bearer <token>` with a valid API token",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="balcao"'},
            )

    def idempotency_key(self) -> str | None:
        """The client's Idempotency-Key (RFC draft `httpapi-idempotency-key-header`), if sent."""
        raw = self.request.headers.get(IDEMPOTENCY_HEADER)
        if raw is None:
            return None
        if not 1 <= len(raw) <= MAX_IDEMPOTENCY_KEY or not raw.isascii() or not raw.isprintable():
            rule = f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            raise ApiError(
                400,
                f"{IDEMPOTENCY_HEADER} must be {rule}",
                kind="invalid-header",
                errors=[field_error(IDEMPOTENCY_HEADER, rule, "header")],
            )
        return raw

    async def database(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn` on the database threads, each query bounded by QUERY_MAX_TIME_MS (`maxTimeMS`).

        The bulk writes of an import run beside this, unbounded: a batch's time is
        set by its size, not by a client's patience.
        """
        with database_errors():
            seconds = self.services.config.query_max_time_ms / 1000
            return await self.services.database.run_bounded(seconds, fn, *args, **kwargs)


class FieldProblems:
    """Every problem found in one part of a request (its query, its body), reported together in one 400.

    Checks add what they find and go on, so a client learns of every bad field
    at once; `check` raises the 400 if any was found.
    """

    def __init__(self, where: str, kind: str) -> None:
        self.where = where  # "query", "body" or "header": the part of the request each field is in
        self.kind = kind
        self.errors: list[dict[str, str]] = []

    @classmethod
    def of_body(cls) -> FieldProblems:
        return cls("body", "invalid-body")

    def add(self, name: str, message: str, where: str | None = None) -> None:
        self.errors.append(field_error(name, message, where or self.where))

    def check(self) -> None:
        if self.errors:
            raise self.problem()

    def problem(self) -> ApiError:
        detail = "; ".join(f"{error['field']} {error['message']}" for error in self.errors)
        return ApiError(400, detail, kind=self.kind, errors=self.errors)


class ParameterProblems(FieldProblems):
    """The problems of a request's query parameters (`invalid-parameters`), read through `raw`."""

    def __init__(self, handler: RequestHandler) -> None:
        super().__init__("query", "invalid-parameters")
        self._handler = handler

    def raw(self, name: str, strip: bool = False) -> str | None:
        """The parameter as sent (`strip`: without surrounding spaces), or None when it was not."""
        return self._handler.get_query_argument(name, None, strip=strip)


def invalid_body(name: str, message: str) -> ApiError:
    """The 400 for one bad field of a JSON body."""
    problems = FieldProblems.of_body()
    problems.add(name, message)
    return problems.problem()


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


def key_reused(detail: str) -> ApiError:
    """The 422 for an Idempotency-Key sent again with another request than its first."""
    return ApiError(
        422,
        detail,
        kind="idempotency-key-reused",
        errors=[field_error(IDEMPOTENCY_HEADER, "was sent before with a different body", "header")],
    )


# No request body of this API nests more than a few levels. The limit is checked
# before parsing, so every Python answers a deep body alike: CPython's parser
# recurses per level, and where it gives up (RecursionError) differs between
# versions (3.11 stops near 1,000 levels, 3.13 parses far deeper).
MAX_JSON_DEPTH = 64
# A JSON string (its escapes included) or one bracket; brackets inside strings do not nest.
_JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text `body` opens more than `limit` arrays or objects inside one another."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the common case, in two passes of C
    depth = 0
    for match in _JSON_STRUCTURE.finditer(body):
        token = match[0]
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


# No field of this API holds a number near this long; Python refuses to convert
# integers of over 4300 digits (a ValueError, which would be a 500).
MAX_INTEGER_DIGITS = 100


def _bounded_int(digits: str) -> int | float:
    """An integer as JSON wrote it; an absurdly long one becomes infinity, which
    no field accepts, so the field's own check names it."""
    if len(digits) <= MAX_INTEGER_DIGITS:
        return int(digits)
    return float("-inf") if digits.startswith("-") else float("inf")


def object_id(raw: str) -> ObjectId | None:
    """The ObjectId a path names, in either case; None when it names none (a 404, not a 400)."""
    text = object_id_text(raw)
    return None if text is None else ObjectId(text)


# Query parameters whose values are personal data: `q` holds contact names.
PRIVATE_PARAMETERS = frozenset({"q"})


def logged_uri(uri: str) -> str:
    """The request URI with the values of private query parameters masked."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        parts.append(f"{name}=***" if equals and unquote_plus(name) in PRIVATE_PARAMETERS else pair)
    return f"{path}?{'&'.join(parts)}"


def slug(title: str) -> str:
    return "-".join(title.lower().split())


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"no route for {self.request.path}", kind="not-found")
