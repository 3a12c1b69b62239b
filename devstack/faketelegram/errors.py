"""The two ways the fake refuses: a Bot API error as Telegram words it, and bad test input."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

JsonDict = dict[str, Any]

DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    500: "Internal Server Error",
}
DEFAULT_RETRY_AFTER = 1


class ApiError(Exception):
    """A Bot API failure; the HTTP status equals ``error_code``, as on Telegram."""

    def __init__(self, error_code: int, description: str | None = None, retry_after: int | None = None) -> None:
        if error_code == HTTPStatus.TOO_MANY_REQUESTS:
            retry_after = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
            description = description or f"Too Many Requests: retry after {retry_after}"
        super().__init__(description)
        self.error_code = int(error_code)
        self.description = description or DEFAULT_DESCRIPTIONS.get(error_code) or _phrase(error_code)
        self.retry_after = retry_after

    def payload(self) -> JsonDict:
        body: JsonDict = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


class ControlError(ValueError):
    """Bad input to a test-control helper; the HTTP control endpoints answer it with 400."""


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"
