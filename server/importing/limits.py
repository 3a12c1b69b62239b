"""What one record of an import may take, and how a record is measured before it is built.

The upload's parsers (server.importing.parsers) and the chunks' reader
(server.importing.chunks) bound each record by these limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from contract.importformat import MAX_MESSAGES_PER_RECORD, MAX_RECORD_BYTES

# A record is measured before it is built (a JSON array item value by value, an
# NDJSON line by its punctuation); these bound how deep it may nest and how many
# values it may hold, so that the Python objects built for one record stay
# within a small multiple of MAX_RECORD_BYTES (a line of `[{},{},...]` would
# otherwise make some twenty times its size in dicts). A message is eight values
# (an object, three keys, three strings): 200,000 hold 25,000 messages, about
# what MAX_RECORD_BYTES holds of ordinary ones.
MAX_RECORD_DEPTH = 64
MAX_RECORD_VALUES = 200_000
# A JSON string, escapes included; what is left once they are taken out is the
# punctuation that separates values.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_STRING_TEXT = re.compile(_JSON_STRING.pattern.decode())


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """What one record of an upload may take; the server's settings give the values."""

    bytes: int
    depth: int
    values: int
    messages: int

    @classmethod
    def default(cls) -> RecordLimits:
        return cls(MAX_RECORD_BYTES, MAX_RECORD_DEPTH, MAX_RECORD_VALUES, MAX_MESSAGES_PER_RECORD)


def json_values(text: bytes | str) -> int:
    """About as many values as yajl's events for the JSON `text` (what a JSON array
    item is bounded by), counted from its punctuation outside strings.

    An object or array is two events (its start and end), every key or value
    after the first one inside it follows a `,`, and every key is followed by a `:`.
    """
    if isinstance(text, str):
        rest = _JSON_STRING_TEXT.sub("", text).encode(errors="replace")  # the punctuation counted is ASCII
    else:
        rest = _JSON_STRING.sub(b"", text)
    return 2 * (rest.count(b"{") + rest.count(b"[")) + rest.count(b",") + rest.count(b":") + 1


def embedded_values_problem(raw: dict[str, Any], limit: int) -> str | None:
    """Why a record whose messages are JSON text (the session-per-row CSV layout's
    cell) is skipped before that text is parsed: more values than `limit`."""
    messages = raw.get("messages")
    if not isinstance(messages, str):
        return None
    values = json_values(messages)
    if values <= limit:
        return None
    return f"its messages hold some {values} JSON values, more than {limit}; it was skipped"
