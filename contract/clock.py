"""Time as every process keeps it: aware UTC, stored at MongoDB's precision, written as RFC 3339.

Dependency-free, like the rest of `contract`: the server, the bot and the event
payloads all read the time here, so they agree on its zone, its precision and
its text form.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def now() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(UTC)


def aware(at: dt.datetime) -> dt.datetime:
    """`at` with its zone; a naive time is UTC (what MongoDB hands back without tz_aware)."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def stored(at: dt.datetime) -> dt.datetime:
    """`at` as MongoDB keeps it (whole milliseconds), so what is written reads back the same."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def stored_now() -> dt.datetime:
    return stored(now())


def milliseconds(at: dt.datetime) -> int:
    """Whole milliseconds since 1970 (negative before it)."""
    return (aware(at) - EPOCH) // _MILLISECOND


def from_milliseconds(value: int) -> dt.datetime:
    return EPOCH + value * _MILLISECOND


def rfc3339(at: dt.datetime) -> str:
    """`2024-05-01T12:00:00.000Z`: the one text form of a time on the API and in events."""
    return aware(at).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp() -> str:
    """The current time as `rfc3339` writes it."""
    return rfc3339(now())


def parse(value: str, fallback: dt.datetime) -> dt.datetime:
    """An ISO-8601 time (naive means UTC), or `fallback` when `value` is not one."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return fallback
    return aware(parsed)
