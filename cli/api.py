"""The REST API as the commands call it: where and with which token, retries, clear errors.

A mistake the user can fix (a wrong URL or token, a bad argument the server
refuses) ends the command with exit code 2 and one line saying what to change;
a failure that may pass (connection lost, 502, 503, 504, 429) is retried
with backoff; a 500, a bug the same request meets again, is not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import click
import httpx

from runtime.retry import RetryPolicy

DEFAULT_API_URL = "http://localhost:8080"
# What may pass if asked again: rate limiting, and a server restarting or overloaded.
# Not 500: the server answers its database being away with 503, so a 500 is a
# bug that the same request meets again; retrying it (and resuming, which sends
# the same chunk) would loop on it for ever.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF = 30.0
# From half a second, doubling to 30 s: the eight retries ride out a minute and a half
# of a server restarting. Stretched at random by up to a quarter, so the many
# clients of one restarted server do not come back in step.
BACKOFF = RetryPolicy(first=0.5, cap=MAX_BACKOFF, jitter=0.25)


class UserError(click.ClickException):
    """A mistake the user can fix: exit code 2, like Click's own usage errors."""

    exit_code = 2


class ApiFailure(click.ClickException):
    """The API did not do what was asked, and asking again will not help."""

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.status = response.status_code if response is not None else None
        self.problem = _problem(response) if response is not None else {}


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--api-url` and `--api-token`, taken by every command that reaches the API."""
    command = click.option(
        "--api-token",
        envvar="BALCAO_API_TOKEN",
        required=True,
        show_envvar=False,
        help="Bearer token of the API (env BALCAO_API_TOKEN).",
    )(command)
    return click.option(
        "--api-url",
        envvar="BALCAO_API_URL",
        default=DEFAULT_API_URL,
        show_default=True,
        help="Base URL of the Balcão API (env BALCAO_API_URL).",
    )(command)


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every API command takes; the command receives an `api` ApiClient."""

    @connection_options
    @functools.wraps(command)
    def with_api(*args: Any, api_url: str, api_token: str, **kwargs: Any) -> Any:
        if not api_url.startswith(("http://", "https://")):
            raise click.BadParameter("must start with http:// or https://", param_hint="--api-url")
        with ApiClient(api_url, api_token) as api:
            return command(*args, api=api, **kwargs)

    return with_api


class ApiClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        retries: int = 8,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self._sleep = sleep
        # The server was reached once (it answered, or a connection was made and then lost):
        # a connection refused is transient from then on, a server restarting.
        self._reached = False
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token.strip()}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        on_retry: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send, retrying what may pass; return a response whose status is in `ok`."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not isinstance(exc, httpx.ConnectError):
                    self._reached = True
                elif not self._reached:
                    raise UserError(
                        f"cannot reach the API at {self.url} ({exc}); check --api-url "
                        "or BALCAO_API_URL, and that the server runs"
                    ) from None
                reason, wait = f"{type(exc).__name__}: {exc}", None
            else:
                self._reached = True
                if response.status_code in ok:
                    return response
                if response.status_code not in TRANSIENT_STATUSES:
                    raise self._refusal(response)
                reason, wait = f"HTTP {response.status_code}", _retry_after(response)
            attempt += 1
            if attempt > self.retries:
                raise ApiFailure(f"{method} {path} failed {attempt} times, last with {reason}")
            delay = BACKOFF.stretched(wait) if wait is not None else BACKOFF.delay(attempt)
            if on_retry is not None:
                on_retry(f"{reason}; retrying in {delay:.1f} s ({attempt}/{self.retries})")
            self._sleep(delay)

    def _refusal(self, response: httpx.Response) -> click.ClickException:
        problem = _problem(response)
        detail = problem.get("detail") or response.reason_phrase
        if response.status_code == 401:
            return UserError(f"the API refused the token ({detail}); check --api-token or BALCAO_API_TOKEN")
        if response.status_code in (400, 403, 404, 405, 413, 415, 422):
            return UserError(detail)
        return ApiFailure(f"HTTP {response.status_code}: {detail}", response)


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return min(MAX_BACKOFF, max(0.0, float(value)))
    except ValueError:
        return None
