"""Page cursors: opaque, signed, bound to their listing."""

from __future__ import annotations

import base64
import json

import pytest

from server.cursors import MAX_CURSOR_LENGTH, CursorCodec, CursorInvalid

POSITION = {"before": "0001700000000000" + "a" * 24, "slice": 60_000}


@pytest.fixture
def codec() -> CursorCodec:
    return CursorCodec("test-api-token-0123456789abcdef-0123456789")


def test_a_cursor_gives_back_its_position(codec):
    cursor = codec.encode("sessions", POSITION)

    assert codec.decode("sessions", cursor) == POSITION
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(cursor) < MAX_CURSOR_LENGTH


def test_the_position_is_not_readable_as_such(codec):
    cursor = codec.encode("sessions", POSITION)

    assert "sessions" not in base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("latin-1")


@pytest.mark.parametrize("cursor", ["", "====", "!!!", "a", "AAAA", "x" * (MAX_CURSOR_LENGTH + 1)])
def test_garbage_is_refused(codec, cursor):
    with pytest.raises(CursorInvalid):
        codec.decode("sessions", cursor)


def test_an_edited_position_is_refused_even_when_re_encoded(codec):
    cursor = codec.encode("sessions", POSITION)
    token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    body, signature = token[:-16], token[-16:]
    content = json.loads(body)
    content["p"]["before"] = "9" * 40
    forged = base64.urlsafe_b64encode(json.dumps(content).encode() + signature).decode()

    with pytest.raises(CursorInvalid, match="altered"):
        codec.decode("sessions", forged)


def test_another_listing_or_another_deployment_is_refused(codec):
    cursor = codec.encode("sessions?q=ana", POSITION)

    with pytest.raises(CursorInvalid, match="another listing"):
        codec.decode("sessions?q=bob", cursor)
    with pytest.raises(CursorInvalid, match="not issued"):
        CursorCodec("another-token-0123456789abcdef").decode("sessions?q=ana", cursor)


def test_a_rotated_key_still_reads_the_cursors_the_previous_key_signed():
    old = CursorCodec("old-cursor-secret-0123456789abcdef")
    rotated = CursorCodec("new-cursor-secret-0123456789abcdef", "old-cursor-secret-0123456789abcdef")
    held = old.encode("sessions", POSITION)

    assert rotated.decode("sessions", held) == POSITION
    # New cursors are signed with the new key, which the old deployment does not know.
    with pytest.raises(CursorInvalid, match="not issued"):
        old.decode("sessions", rotated.encode("sessions", POSITION))
    # Once the previous key is dropped, its cursors stop working.
    with pytest.raises(CursorInvalid, match="not issued"):
        CursorCodec("new-cursor-secret-0123456789abcdef").decode("sessions", held)


def test_a_cursor_names_its_key_by_fingerprint_only():
    secret = "some-cursor-secret-0123456789abcdef"
    cursor = CursorCodec(secret).encode("sessions", POSITION)
    content = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))[:-16])

    assert len(content["k"]) == 8 and content["k"] not in secret


def test_cursors_issued_before_key_ids_are_still_accepted():
    """The format without `k`: {"l", "p"} signed with the key derived from the secret."""
    import hashlib
    import hmac

    secret = "test-api-token-0123456789abcdef-0123456789"
    key = hmac.new(secret.encode(), b"balcao page cursor v1", hashlib.sha256).digest()
    body = json.dumps(
        {"l": hashlib.sha256(b"sessions").hexdigest()[:16], "p": POSITION}, separators=(",", ":"), sort_keys=True
    ).encode()
    legacy = base64.urlsafe_b64encode(body + hmac.new(key, body, hashlib.sha256).digest()[:16]).decode()

    assert CursorCodec(secret).decode("sessions", legacy.rstrip("=")) == POSITION
