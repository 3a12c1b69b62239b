"""Schemathesis extensions for the contract run (loaded through SCHEMATHESIS_HOOKS).

What a JSON Schema cannot generate by itself, generated here, so that every
check applies to every operation:

- an import chunk is NDJSON: the document gives its body as the array of its
  lines, and the serializer writes one JSON line per item;
- an upload's `file` (format `balcao-session-file`) is a small session file in
  one of the accepted layouts;
- `q` (format `balcao-name-search`) takes Unicode letters, which no pattern
  every JSON Schema validator reads can say;
- a page cursor (format `balcao-cursor`) is signed by the server and bound to
  its listing, so no generator can forge one: a valid request carries one the
  server issued for the same listing (as a client follows `next_cursor`), taken
  from the server named by BALCAO_CONTRACT_URL; invalid requests keep the
  generated value, which the server must refuse.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import httpx
import schemathesis
from hypothesis import strategies as st

from cli.generate import generate_sessions
from contract.importwriter import write_sessions


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    if isinstance(value, list):
        return b"".join(json.dumps(item, ensure_ascii=False).encode() + b"\n" for item in value)
    return value if isinstance(value, bytes) else str(value).encode()


def _session_file(layout: str, count: int, seed: int) -> str:
    out = io.StringIO()
    write_sessions(generate_sessions(count, seed=seed, messages_per_session=1), out, layout)
    return out.getvalue()


schemathesis.openapi.format(
    "balcao-session-file",
    st.builds(
        _session_file,
        st.sampled_from(["json", "ndjson", "csv", "csv-messages"]),
        st.integers(0, 3),
        st.integers(0, 2**16),
    ),
)
# As the server reads `q`: letters, digits, combining marks, spaces, apostrophes, hyphens; one letter or digit at least.
schemathesis.openapi.format(
    "balcao-name-search",
    st.text(
        st.characters(categories=["L", "N", "M"]) | st.sampled_from(" '’-"),
        max_size=40,
    ).filter(lambda text: not text.strip() or any(char.isalnum() for char in text)),
)
schemathesis.openapi.format("balcao-cursor", st.from_regex(r"\A[A-Za-z0-9_-]{40,80}\Z"))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.headers and "Idempotency-Key" in case.headers and case.meta and case.meta.generation.mode.is_positive:
        # A client picks a key per reply; a generated key used again with another
        # text is a misuse (422), not a valid request.
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    query = case.query or {}
    if "cursor" not in query or case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    issued = _issued_cursor(case.formatted_path, {k: v for k, v in query.items() if k not in ("cursor", "limit")})
    if issued is None:
        del query["cursor"]  # the listing has a single page: no cursor exists for it
    else:
        query["cursor"] = issued
    return case


def _issued_cursor(path: str, query: dict[str, Any]) -> str | None:
    base = os.environ["BALCAO_CONTRACT_URL"]
    token = os.environ["BALCAO_CONTRACT_TOKEN"]
    response = httpx.get(
        f"{base}{path}", params={**query, "limit": 1}, timeout=20, headers={"Authorization": f"Bearer {token}"}
    )
    if response.status_code != 200:
        return None
    return response.json().get("next_cursor")
