"""Agents' files end to end: a multipart reply goes out once as sendDocument or sendPhoto,
even when the server dies after promising it; a bad form is refused before anything is kept."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib

import httpx
import pytest

from tests.harness import ApiClient, eventually, failpoint_fired, settle

REPLY = "Reply: mensagem recebida"


@pytest.fixture
def api(stack):
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG image (sendPhoto reads its header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def form(files, data=None, **headers: str) -> dict:
    """A multipart body as bytes (httpx's own encoding), so the answer can be checked
    against the OpenAPI document, which reads the request back."""
    request = httpx.Request("POST", "http://form", files=files, data=data)
    return {"content": request.read(), "headers": {"Content-Type": request.headers["Content-Type"], **headers}}


def open_session_of(api: ApiClient, telegram, contact: int) -> str:
    telegram.send_as_user(contact, "Preciso da segunda via", first_name="Gal")
    eventually(lambda: [m for m in telegram.sent(contact) if m["text"] == REPLY], timeout=30, message="reply")
    (session,) = api.get("sessions").json()["items"]
    return session["id"]


def files_sent(telegram, contact: int) -> list[dict]:
    return [m for m in telegram.sent(contact) if m.get("upload")]


def test_an_agents_pdf_reaches_the_contact_once_though_the_server_died_after_promising_it(
    stack, api, telegram, mongo, clean_nats, tmp_path
):
    log = tmp_path / "failpoints.log"
    point = "server.reply.after_promised"
    crashing = stack.server(BALCAO_FAILPOINTS=f"{point}=kill", BALCAO_FAILPOINTS_LOG=str(log), measured=False)
    stack.bot()
    session = open_session_of(api, telegram, 5401)
    invoice = b"%PDF-1.7\n" + os.urandom(200_000)
    body = form(
        {"file": ("segunda via.pdf", invoice, "application/pdf")},
        {"text": "Sua fatura"},
        **{"Idempotency-Key": "fatura-5401"},
    )

    with pytest.raises(httpx.TransportError):
        api.post(f"sessions/{session}/messages", **body)
    eventually(lambda: not crashing.running, message="server killed at the fail point")
    assert failpoint_fired(log, point)

    stack.server()
    retried = api.post(f"sessions/{session}/messages", **body)
    assert retried.status_code == 201, retried.text
    message = retried.json()
    assert message["kind"] == "document" and message["text"] == "Sua fatura"
    assert message["file"] == {
        "name": "segunda via.pdf",
        "mime_type": "application/pdf",
        "size": len(invoice),
        "available": True,
    }

    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.outbox.count_documents({})))
    (sent,) = files_sent(telegram, 5401)
    assert sent["upload"]["kind"] == "document" and sent["caption"] == "Sua fatura"
    assert sent["upload"]["sha256"] == hashlib.sha256(invoice).hexdigest()
    assert sent["upload"]["file_name"] == "segunda via.pdf"
    assert mongo.messages.count_documents({"direction": "out"}) == 1
    # The agent's file is read back as sent, like a contact's.
    download = api.get(f"sessions/{session}/messages/{message['id']}/file")
    assert download.status_code == 200 and download.content == invoice


def test_an_image_goes_out_as_a_photo_and_a_bad_form_is_refused(stack, api, telegram, mongo, clean_nats):
    stack.server(AGENT_FILE_MAX_BYTES="100000")
    stack.bot()
    session = open_session_of(api, telegram, 5402)
    path = f"sessions/{session}/messages"
    image = png()
    sent = api.post(path, **form({"file": ("foto.png", image, "image/png")}, {"text": "Assim?"}))
    assert sent.status_code == 201, sent.text
    assert sent.json()["kind"] == "photo"

    # Two `file` parts, a caption of 1,025 characters, a file over the limit, no file at all.
    parts = [("file", ("a.pdf", b"a", "application/pdf")), ("file", ("b.pdf", b"b", "application/pdf"))]
    two = api.post(path, **form(parts))
    assert two.status_code == 400 and "2 `file` parts" in two.json()["detail"]
    long = api.post(path, **form({"file": ("a.pdf", b"a", "application/pdf")}, {"text": "x" * 1025}))
    assert long.status_code == 400 and "1024 characters" in long.json()["detail"]
    assert long.json()["errors"][0]["field"] == "text"
    large = api.post(path, **form({"file": ("big.bin", b"\0" * 100_001, "application/octet-stream")}))
    assert large.status_code == 413 and "100000 bytes" in large.json()["detail"]
    none = api.post(path, **form({"other": ("a.txt", b"a", "text/plain")}, {"text": "oi"}))
    assert none.status_code == 400 and none.json()["errors"][0]["field"] == "file"

    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.outbox.count_documents({})))
    (photo,) = files_sent(telegram, 5402)
    assert photo["upload"]["kind"] == "photo" and photo["caption"] == "Assim?"
    assert photo["upload"]["sha256"] == hashlib.sha256(image).hexdigest()
    assert mongo.messages.count_documents({"direction": "out"}) == 1  # nothing refused was stored
