"""`sessions list|search|finish`: open sessions over the REST API."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from cli.api import ApiClient, UserError, api_options

PREVIEW_WIDTH = 40
_SESSION_ID = re.compile(r"[0-9a-fA-F]{24}")


@click.group("sessions")
def sessions() -> None:
    """List, search and finish open sessions."""


def listing_options(command: Any) -> Any:
    command = click.option(
        "--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Sessions per page."
    )(command)
    command = click.option("--cursor", help="Continue a listing where the previous page ended.")(command)
    command = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")(command)
    return command


@sessions.command("list")
@listing_options
@api_options
def list_sessions(limit: int, cursor: str | None, as_json: bool, api: ApiClient) -> None:
    """Open sessions, most recent activity first."""
    _show_page(api, {"limit": limit, "cursor": cursor}, as_json)


@sessions.command("search")
@click.argument("name")
@listing_options
@api_options
def search_sessions(name: str, limit: int, cursor: str | None, as_json: bool, api: ApiClient) -> None:
    """Open sessions whose contact's name has words starting with those of NAME (accents and case ignored)."""
    if not name.strip():
        raise click.BadParameter("give at least one letter or digit to search for", param_hint="NAME")
    _show_page(api, {"q": name, "limit": limit, "cursor": cursor}, as_json)


@sessions.command("finish")
@click.argument("session_id", metavar="ID")
@api_options
def finish_session(session_id: str, api: ApiClient) -> None:
    """Finish session ID: it and its messages are deleted and the contact is told goodbye."""
    if not _SESSION_ID.fullmatch(session_id):
        raise click.BadParameter("a session id is 24 hexadecimal digits", param_hint="ID")
    response = api.request("DELETE", f"/v1/sessions/{session_id}", ok=(204, 404))
    if response.status_code == 404:
        raise UserError(f"there is no open session {session_id} (finished already, or never existed)")
    click.echo(f"session {session_id} finished")


def _show_page(api: ApiClient, params: dict[str, Any], as_json: bool) -> None:
    page = api.request("GET", "/v1/sessions", params={k: v for k, v in params.items() if v is not None}).json()
    if as_json:
        click.echo(json.dumps(page, ensure_ascii=False, indent=2))
        return
    items = page["items"]
    if not items:
        click.echo("no open sessions" + (f" match {params['q']!r}" if params.get("q") else ""), err=True)
    rows = [("ID", "NAME", "CONTACT", "LAST MESSAGE", "MSGS", "PREVIEW")]
    for item in items:
        contact = item["contact"]
        rows.append(
            (
                item["id"],
                contact["name"],
                f"{contact['platform']}:{contact['identifier']}",
                item["last_message_at"][:19].replace("T", " "),
                str(item["message_count"]),
                _shorten(item["last_message_preview"]),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    if items:
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if page.get("next_cursor"):
        click.echo(f"more: --cursor {page['next_cursor']}", err=True)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_WIDTH else flat[: PREVIEW_WIDTH - 1] + "…"
