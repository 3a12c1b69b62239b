"""Hostile files from contacts, against the real bot and server: sizes that lie, names
that climb directories or reorder text, types that would make a browser render them."""

from __future__ import annotations

import hashlib

import pytest

from bench.faketelegram import generated_sha256, peak_rss
from contract.messaging import MAX_DOWNLOAD_BYTES
from tests.harness import ApiClient, eventually

MIB = 1024 * 1024


@pytest.fixture
def api(stack):
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def stored_messages(mongo, contact: str, count: int) -> list[dict]:
    def found():
        docs = list(mongo.messages.find({"key": {"$regex": f"^telegram:{contact}:"}}).sort("sent_at", 1))
        return docs if len(docs) >= count else None

    return eventually(found, timeout=90, message=f"{count} messages of {contact}")


def test_sizes_that_lie_are_counted_not_trusted_and_memory_stays_flat(stack, api, telegram, mongo):
    stack.server()
    bot = stack.bot()
    telegram.send_as_user(5201, "aquecimento")  # the bot's imports and connections, before the peak is read
    stored_messages(mongo, "5201", 1)
    assert bot.popen is not None
    before = peak_rss(bot.popen.pid)

    # 20 MiB announced as 2 KB: kept whole, its real size recorded.
    real = MAX_DOWNLOAD_BYTES
    telegram.send_as_user(5201, None, kind="document", file={"size": real, "seed": 7, "file_size": 2048})
    # One byte past the Bot API's limit, announced as 2 KB: not kept, and said why.
    telegram.send_as_user(5201, None, kind="document", file={"size": real + 1, "seed": 8, "file_size": 2048})
    kept, too_large = stored_messages(mongo, "5201", 3)[1:]

    assert kept["file"]["size"] == real and kept["file"]["available"] is True
    assert too_large["file"]["available"] is False
    assert "20 MB" in too_large["file"]["reason"]
    # Each downloaded 20 MiB; the bot's peak grew by far less than one file.
    assert peak_rss(bot.popen.pid) - before < 12 * MIB

    session = str(kept["session_id"])
    body = api.get(f"sessions/{session}/messages/{kept['_id']}/file")
    assert body.status_code == 200
    assert hashlib.sha256(body.content).hexdigest() == generated_sha256(7, real)
    gone = api.get(f"sessions/{session}/messages/{too_large['_id']}/file")
    assert gone.status_code == 404 and gone.json()["type"].endswith("/file-not-kept")
    assert "20 MB" in gone.json()["detail"]
    listed = api.get(f"sessions/{session}/messages").json()["items"][2]["file"]
    assert listed["available"] is False and listed["size"] == 2048 and "20 MB" in listed["reason"]


def test_a_hostile_name_and_a_lying_type_are_served_as_a_safe_attachment(stack, api, telegram, mongo):
    stack.server()
    stack.bot()
    page = b"<html><script>alert(document.cookie)</script></html>"
    name = "../../etc/\\pass\x00wd\r\nX-Evil: 1\u202egnp.exe"
    telegram.send_as_user(
        5202,
        "veja",
        kind="document",
        file={"ref": telegram.store_file(page)["ref"], "file_name": name, "mime_type": "text/html"},
    )
    (message,) = stored_messages(mongo, "5202", 1)
    assert message["file"]["name"] == name  # kept as sent; made safe where it is used

    response = api.get(f"sessions/{message['session_id']}/messages/{message['_id']}/file")
    assert response.status_code == 200 and response.content == page
    assert response.headers["content-type"] == "text/html"  # as stored ...
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("sandbox")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; ")  # ... but never rendered inline
    assert "X-Evil" not in response.headers
    for forbidden in ("/", "\\", "\x00", "\r", "\n", "\u202e"):
        assert forbidden not in disposition, forbidden
    # Separators made `_`, control and bidi characters dropped, no leading dot.
    assert 'filename="_.._etc__passwdX-Evil: 1gnp.exe"' in disposition
    assert "%E2%80%AE" not in disposition  # the right-to-left override is gone from filename* too
