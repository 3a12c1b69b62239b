"""`watch` and `reply`: follow the live event stream, and answer a session from the terminal.

`watch` is the reference client of GET /v1/events: it remembers the id of the
last event it printed and, when the connection drops (network, a replica
restarting), reconnects with `since=<that id>`, so nothing is missed or
printed twice.

What it prints comes from contacts (names, texts) and goes to a terminal, so
no control character (escape sequences, line breaks), format character (bidi
overrides that reorder the line, zero-width ones) or line separator reaches
it: a line replaces them with spaces, `--json` writes them as JSON escapes
(the same JSON, safe to print).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import unicodedata
from typing import Any
from urllib.parse import urlencode

import click
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from cli.api import ApiClient, UserError, api_options, connection_options
from runtime.retry import RetryPolicy

SUBPROTOCOL = "balcao.v1"
CLOSE_GONE = 4410
CLOSE_SLOW = 4008
# A follower reconnects for as long as it runs, and sooner than the API client
# retries (at most 15 s apart, not 30): someone watching wants the stream back.
RECONNECT = RetryPolicy(first=0.5, cap=15.0, jitter=0.25)
TYPES = (
    "session.opened",
    "message.received",
    "message.edited",
    "message.sent",
    "session.finished",
    "import.finished",
    "contact.blocked",
    "channel.moved",
)
_SESSION_ID = re.compile(r"[0-9a-fA-F]{24}")
# Control, format (bidi overrides, zero-width), line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def terminal_text(value: object) -> str:
    """`value` as text fit for a terminal line: unprintable characters become spaces, blanks one space."""
    text = str(value)
    return " ".join("".join(" " if unicodedata.category(char) in _UNPRINTABLE else char for char in text).split())


def terminal_json(event: dict[str, Any]) -> str:
    """`event` as one JSON line, with every unprintable character written as an escape."""
    dumped = json.dumps(event, ensure_ascii=False)
    return "".join(json.dumps(char)[1:-1] if unicodedata.category(char) in _UNPRINTABLE else char for char in dumped)


def events_url(api_url: str, query: dict[str, Any]) -> str:
    base = api_url.rstrip("/")
    base = "wss://" + base[len("https://") :] if base.startswith("https://") else "ws://" + base[len("http://") :]
    wanted = {name: value for name, value in query.items() if value is not None}
    return f"{base}/v1/events" + (f"?{urlencode(wanted)}" if wanted else "")


class Tail:
    """Turns events into one readable line each, remembering contacts' names by session."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def line(self, event: dict[str, Any]) -> str:
        session = event.get("session_id") or ""
        contact = event.get("contact") or {}
        if contact.get("name"):
            self.names[session] = contact["name"]
        who = self.names.get(session) or contact.get("identifier") or ""
        when = _local_time(event.get("at", ""))
        kind = event.get("type", "?")
        message = event.get("message") or {}
        if kind == "message.received":
            what = f"<- {content(message)}"
        elif kind == "message.edited":
            what = f"<~ {content(message)} (edited)"
        elif kind == "message.sent":
            what = f"-> {message.get('text', '')} [{event.get('delivery', '')}]"
        elif kind == "import.finished":
            details = event.get("import") or {}
            what = f"import {details.get('id', '')} {details.get('status', '')} {details.get('counts', {})}"
        elif kind == "contact.blocked":
            what = f"contact blocked the bot: {event.get('reason', '')}"
        elif kind == "channel.moved":
            details = event.get("import") or {}
            moved = f"channel {event.get('channel', '')} moved to {event.get('moved_to', '')}"
            what = f"{moved} (import {details['id']})" if details.get("id") else moved
        else:
            what = kind.replace("session.", "session ")
        who, session, what = terminal_text(who), terminal_text(session), terminal_text(what)
        return f"{when}  {who[:24]:<24}  {session[-8:]:<8}  {what}"


def content(message: dict[str, Any]) -> str:
    """A message's text, after its kind, file name and size when it is not a plain text:
    `[document fatura.pdf 120.5 KB] segunda via`."""
    text = str(message.get("text", ""))
    kind = message.get("content_kind") or "text"
    if kind == "text":
        return text
    file = message.get("file") or {}
    label = " ".join(str(part) for part in (kind, file.get("name"), _size(file.get("size"))) if part)
    if file and not file.get("available", True):
        label += " not kept"
    return f"[{label}] {text}".rstrip()


def _size(size: object) -> str:
    if not isinstance(size, int) or isinstance(size, bool):
        return ""
    for unit in ("B", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return ""


def _local_time(at: str) -> str:
    try:
        return dt.datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


@click.command("watch")
@click.option("--session", "session_id", help="Only this session's events.")
@click.option("--type", "kind", type=click.Choice(TYPES), help="Only events of this type.")
@click.option("--platform", help="Only this platform's events (e.g. telegram).")
@click.option("--since", type=click.IntRange(0), help="Start after this event id (default: only new events).")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line, for piping.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many events.")
@connection_options
def watch(
    session_id: str | None,
    kind: str | None,
    platform: str | None,
    since: int | None,
    as_json: bool,
    count: int | None,
    api_url: str,
    api_token: str,
) -> None:
    """Follow sessions live: one line per event, resuming by itself after a dropped connection."""
    if not api_url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with http:// or https://", param_hint="--api-url")
    if session_id is not None and not _SESSION_ID.fullmatch(session_id):
        raise click.BadParameter("must be a session id (24 hex digits)", param_hint="--session")
    tail, printed, attempt = Tail(), 0, 0
    headers = {"Authorization": f"Bearer {api_token.strip()}"}
    while True:
        url = events_url(
            api_url, {"session": session_id and session_id.lower(), "type": kind, "platform": platform, "since": since}
        )
        try:
            with connect(
                url,
                additional_headers=headers,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=10,
                ping_interval=20,
                ping_timeout=30,
            ) as socket:
                attempt = 0
                for raw in socket:
                    event = json.loads(raw)
                    since = event["id"]
                    click.echo(terminal_json(event) if as_json else tail.line(event))
                    printed += 1
                    if count is not None and printed >= count:
                        return
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise UserError("the API refused the token; check --api-token or BALCAO_API_TOKEN") from None
            if status in (400, 404, 406):
                raise UserError(f"the API refused the stream (HTTP {status}): {_detail(exc)}") from None
            reason = f"HTTP {status}"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code == CLOSE_GONE:
                click.echo(
                    "events since the last one seen are no longer kept; reload the sessions "
                    "(balcao sessions list). Following new events.",
                    err=True,
                )
                since = None
            reason = f"connection closed ({code or 'no close frame'})"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        attempt += 1
        delay = RECONNECT.delay(attempt)
        click.echo(f"{reason}; reconnecting in {delay:.1f} s" + (f" from event {since}" if since else ""), err=True)
        time.sleep(delay)


def _detail(exc: InvalidStatus) -> str:
    try:
        return json.loads(exc.response.body or b"{}").get("detail", "")
    except ValueError:
        return ""


@click.command("reply")
@click.argument("session_id", metavar="SESSION")
@click.argument("text")
@api_options
def reply(session_id: str, text: str, api: ApiClient) -> None:
    """Send TEXT to the contact of SESSION, as an agent."""
    if not _SESSION_ID.fullmatch(session_id):
        raise click.BadParameter("must be a session id (24 hex digits)", param_hint="SESSION")
    response = api.request("POST", f"/v1/sessions/{session_id.lower()}/messages", ok=(201,), json={"text": text})
    click.echo(f"sent as message {response.json().get('id', '')}")
