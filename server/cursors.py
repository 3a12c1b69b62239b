"""Opaque, tamper-evident page cursors.

A cursor is the position where the next page starts, bound to the listing it
came from, signed with HMAC-SHA256 and written in base64url. Every replica
derives the same key from the API token, so a cursor issued by one replica is
accepted by the others, and one forged or edited by a client is refused
instead of steering a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

# Enough to make forging infeasible while keeping URLs short.
SIGNATURE_BYTES = 16
MAX_CURSOR_LENGTH = 512


class CursorInvalid(ValueError):
    """The cursor was not issued by this service, was altered, or is for another listing."""


class CursorCodec:
    def __init__(self, secret: str) -> None:
        # A key of its own, so a cursor reveals nothing usable about the API token.
        self._key = hmac.new(secret.encode(), b"balcao page cursor v1", hashlib.sha256).digest()

    def encode(self, listing: str, position: dict[str, Any]) -> str:
        body = json.dumps({"l": _fingerprint(listing), "p": position},
                          separators=(",", ":"), sort_keys=True).encode()
        token = body + self._sign(body)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def decode(self, listing: str, cursor: str) -> dict[str, Any]:
        """The position inside `cursor`; raises CursorInvalid on any doubt."""
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise CursorInvalid("the cursor is longer than any this service issues")
        try:
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:
            raise CursorInvalid("the cursor is not base64url text") from exc
        body, signature = token[:-SIGNATURE_BYTES], token[-SIGNATURE_BYTES:]
        if len(token) <= SIGNATURE_BYTES or not hmac.compare_digest(signature, self._sign(body)):
            raise CursorInvalid("the cursor was not issued by this service or was altered")
        content = json.loads(body)
        if content.get("l") != _fingerprint(listing):
            raise CursorInvalid("the cursor belongs to another listing (other filters or path)")
        return content["p"]

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def _fingerprint(listing: str) -> str:
    return hashlib.sha256(listing.encode()).hexdigest()[:16]
