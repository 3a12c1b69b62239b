"""The two ways the fake refuses: a Bot API error as Telegram words it, and bad test input
(with the checks that find it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

JsonDict = dict[str, Any]

DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
}
DEFAULT_RETRY_AFTER = 1


class ApiError(Exception):
    """A Bot API failure; the HTTP status equals ``error_code``, as on Telegram."""

    def __init__(
        self,
        error_code: int,
        description: str | None = None,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        if error_code == HTTPStatus.TOO_MANY_REQUESTS:
            retry_after = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
            description = description or f"Too Many Requests: retry after {retry_after}"
        super().__init__(description)
        self.error_code = int(error_code)
        self.description = description or DEFAULT_DESCRIPTIONS.get(error_code) or _phrase(error_code)
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id

    def payload(self) -> JsonDict:
        body: JsonDict = {"ok": False, "error_code": self.error_code, "description": self.description}
        # Telegram's ResponseParameters: why to wait, or where a group went.
        parameters = {"retry_after": self.retry_after, "migrate_to_chat_id": self.migrate_to_chat_id}
        if any(value is not None for value in parameters.values()):
            body["parameters"] = {key: value for key, value in parameters.items() if value is not None}
        return body


class ControlError(ValueError):
    """Bad input to a test-control helper; the HTTP control endpoints answer it with 400."""


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


# -- checks of test input, each failure a ControlError that names the value -----------------


def control_fields(body: Any, required: Iterable[str], optional: Iterable[str], what: str) -> JsonDict:
    """``body`` as a dict with every required field and no unknown one."""
    if not isinstance(body, Mapping):
        raise ControlError(f"{what} must be a JSON object")
    missing = [name for name in required if name not in body]
    if missing:
        raise ControlError(f"{what} lacks {', '.join(missing)}")
    known = {*required, *optional}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ControlError(f"{what} has unknown fields: {', '.join(unknown)}")
    return dict(body)


def control_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ControlError(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ControlError(f"{name} must be an integer") from None


def control_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ControlError(f"{name} must be a non-empty string")
    return value
