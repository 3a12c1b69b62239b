"""Opaque, tamper-evident page cursors.

A cursor is the position where the next page starts, bound to the listing it
came from, signed with HMAC-SHA256 and written in base64url. Every replica
derives the same keys from the same secrets, so a cursor issued by one replica
is accepted by the others, and one forged or edited by a client is refused
instead of steering a query.

Each cursor names the key that signed it (`k`, a fingerprint of the key, not
the key). The codec signs with its first key and accepts any of them, so a key
rotation keeps the cursors clients hold working: the new key signs, the
previous one still verifies. Cursors from before key ids carry none and are
checked against every key.
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
    def __init__(self, *secrets: str) -> None:
        if not secrets or not all(secrets):
            raise ValueError("a cursor codec needs at least one non-empty secret")
        # A key of its own, so a cursor reveals nothing usable about the secret.
        keys = [hmac.new(secret.encode(), b"balcao page cursor v1", hashlib.sha256).digest() for secret in secrets]
        self._keys = {_key_id(key): key for key in keys}
        self._signing_id = _key_id(keys[0])

    def encode(self, listing: str, position: dict[str, Any]) -> str:
        body = json.dumps(
            {"k": self._signing_id, "l": _fingerprint(listing), "p": position}, separators=(",", ":"), sort_keys=True
        ).encode()
        token = body + self._sign(self._keys[self._signing_id], body)
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
        if len(token) <= SIGNATURE_BYTES or not any(
            hmac.compare_digest(signature, self._sign(key, body)) for key in self._candidates(body)
        ):
            raise CursorInvalid("the cursor was not issued by this service or was altered")
        content = json.loads(body)
        if content.get("l") != _fingerprint(listing):
            raise CursorInvalid("the cursor belongs to another listing (other filters or path)")
        return content["p"]

    def _candidates(self, body: bytes) -> list[bytes]:
        """The key the cursor names; every key for a cursor that names none (issued before key ids)."""
        try:
            content = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return []
        if not isinstance(content, dict):
            return []
        if "k" not in content:
            return list(self._keys.values())
        key = self._keys.get(content["k"]) if isinstance(content["k"], str) else None
        return [key] if key is not None else []

    @staticmethod
    def _sign(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"balcao cursor key id" + key).hexdigest()[:8]


def _fingerprint(listing: str) -> str:
    return hashlib.sha256(listing.encode()).hexdigest()[:16]
