"""The base handlers: JSON in and out, bearer auth, and the one place errors are built."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from pymongo.errors import PyMongoError
from tornado.web import HTTPError, RequestHandler

from server import failover

log = logging.getLogger(__name__)

PROBLEM_TYPE_ROOT = "https://balcao.dev/problems/"


class ApiError(HTTPError):
    """An HTTP error that becomes an RFC 9457 problem document.

    `kind` names the problem type; `errors` lists field-level problems
    (`{"field": ..., "message": ...}`) for validation failures.
    """

    def __init__(self, status: int, detail: str, *, kind: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=None)
        self.detail = detail
        self.kind = kind
        self.errors = errors or []
        self.headers = headers or {}


class JsonHandler(RequestHandler):
    """Base for every route: JSON bodies and problem+json errors."""

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
        if isinstance(value, HTTPError) and value.status_code < 500:
            return  # a client's mistake, answered in the problem document
        super().log_exception(typ, value, tb)

    def json_body(self) -> dict[str, Any]:
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "send the body as application/json", kind="unsupported-media-type")
        try:
            body = json.loads(self.request.body or b"")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", kind="invalid-json") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", kind="invalid-json")
        return body


class ApiHandler(JsonHandler):
    """Base for `/v1` routes: a valid bearer token is required."""

    def prepare(self) -> None:
        expected = self.settings["api_token"].encode()
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(401, "send `Authorization: Bearer <token>` with a valid API token",
                           kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="balcao"'})


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """MongoDB out of reach is a 503 with Retry-After: the client may try again, it is no bug."""
    try:
        yield
    except PyMongoError as exc:
        # A replica set electing a primary fails writes with codes and labels, not
        # only with lost connections; those are as temporary (server/failover.py).
        if not failover.is_transient(exc):
            raise
        log.warning("mongodb unavailable while serving a request: %s", exc)
        raise ApiError(503, "the database is not answering; try again shortly", kind="unavailable",
                       headers={"Retry-After": "5"}) from exc


def slug(title: str) -> str:
    return "-".join(title.lower().split())


class NotFoundHandler(JsonHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"no route for {self.request.path}", kind="not-found")
