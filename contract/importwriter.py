"""Writing session files in every format the import reads: JSON, NDJSON, and CSV in both layouts.

`balcao generate` writes test files with these writers, and the tests read
what they write back through the server's and the CLI's readers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from contract.importformat import MESSAGE_COLUMNS, SESSION_COLUMNS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

WRITER_FORMATS = ("json", "ndjson", "csv", "csv-messages")
# The kind a reader takes each written format as.
WRITER_KINDS = {"json": "json", "ndjson": "ndjson", "csv": "csv", "csv-messages": "csv"}


def write_sessions(sessions: Iterable[dict[str, Any]], out: TextIO, file_format: str) -> int:
    """Write sessions to `out` as they come, in one of WRITER_FORMATS; return how many were written."""
    writers = {"json": _write_json, "ndjson": _write_ndjson, "csv": _write_csv, "csv-messages": _write_csv_messages}
    if file_format not in writers:
        raise ValueError(f"unknown format {file_format!r}; expected one of {', '.join(WRITER_FORMATS)}")
    return writers[file_format](sessions, out)


def utc_text(moment: datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a Z, as the session files write dates."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _write_json(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    # One session per line inside the array: still a JSON array, but readable and diffable.
    written = 0
    out.write("[")
    for session in sessions:
        out.write(",\n" if written else "\n")
        out.write(_json(session))
        written += 1
    out.write("\n]\n")
    return written


def _write_ndjson(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    written = 0
    for session in sessions:
        out.write(_json(session) + "\n")
        written += 1
    return written


def _write_csv(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SESSION_COLUMNS)
    written = 0
    for session in sessions:
        source_id = session["_id"]
        writer.writerow(
            [
                source_id["$oid"] if isinstance(source_id, dict) else source_id,
                session["name"],
                session["platform_type"],
                session["contact_identifier"],
                _json(session["messages"]),
            ]
        )
        written += 1
    return written


def _write_csv_messages(sessions: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MESSAGE_COLUMNS)
    written = 0
    for session in sessions:
        contact = [session["contact_identifier"], session["name"], session["platform_type"]]
        # A session without messages still needs its row, with the message cells empty.
        for message in session["messages"] or [{}]:
            date = message.get("date", "")
            writer.writerow([*contact, message.get("id", ""), message.get("content", ""), _date_text(date)])
        written += 1
    return written


def _date_text(date: str | dict[str, Any]) -> str:
    """A spreadsheet cell holds text, so MongoDB's {"$date": ...} becomes ISO-8601."""
    if not isinstance(date, dict):
        return date
    value = date["$date"]
    if isinstance(value, str):
        return value
    millis = int(value["$numberLong"]) if isinstance(value, dict) else value
    return utc_text(_EPOCH + timedelta(milliseconds=millis))
