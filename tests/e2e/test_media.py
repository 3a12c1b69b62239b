"""Contacts' files, locations and contact cards end to end: kept, listed, downloaded, finished."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote

import pytest

from bench.chaos import stored_objects
from tests.harness import ApiClient, eventually

REPLY = "Reply: mensagem recebida"


@pytest.fixture
def api(stack):
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def replies(telegram, chat_id: int) -> int:
    return len([m for m in telegram.sent(chat_id) if m["text"] == REPLY])


def messages_of(api: ApiClient, mongo, contact: str, count: int) -> tuple[str, list[dict]]:
    """The contact's session id and its messages, once `count` are stored."""

    def stored():
        session = mongo.sessions.find_one({"contact_identifier": contact})
        return session if session and mongo.messages.count_documents({"session_id": session["_id"]}) >= count else None

    session = eventually(stored, timeout=60, message=f"{count} messages of {contact} stored")
    response = api.get(f"sessions/{session['_id']}/messages")
    assert response.status_code == 200, response.text
    return str(session["_id"]), response.json()["items"]


def test_photo_document_and_voice_are_kept_listed_and_downloaded_byte_for_byte(stack, api, telegram, mongo):
    stack.server()
    stack.bot()
    photo, document, voice = os.urandom(150_000), os.urandom(300_000) + b"%PDF", os.urandom(40_000)
    telegram.send_as_user(
        5101, "recibo", kind="photo", file={"ref": telegram.store_file(photo)["ref"]}, first_name="Rita"
    )
    telegram.send_as_user(
        5101,
        None,
        kind="document",
        file={
            "ref": telegram.store_file(document)["ref"],
            "file_name": "fatura março.pdf",
            "mime_type": "application/pdf",
        },
        first_name="Rita",
    )
    telegram.send_as_user(5101, None, kind="voice", file={"ref": telegram.store_file(voice)["ref"]}, first_name="Rita")
    telegram.send_as_user(5101, None, kind="location", location={"latitude": -23.5, "longitude": -46.6})
    session_id, items = messages_of(api, mongo, "5101", 4)
    eventually(lambda: replies(telegram, 5101) == 4, timeout=30, message="each message answered")

    assert [item["kind"] for item in items] == ["photo", "document", "voice", "location"]
    assert [item["text"] for item in items] == ["recibo", "", "", ""]
    assert items[1]["file"] == {
        "name": "fatura março.pdf",
        "mime_type": "application/pdf",
        "size": len(document),
        "available": True,
    }
    assert items[0]["file"]["mime_type"] == "image/jpeg" and items[2]["file"]["mime_type"] == "audio/ogg"
    assert items[3]["location"] == {"latitude": -23.5, "longitude": -46.6} and "file" not in items[3]
    for item, content in zip(items, (photo, document, voice), strict=False):
        response = api.get(f"sessions/{session_id}/messages/{item['id']}/file")
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(content).hexdigest()
        assert response.headers["content-type"] == item["file"]["mime_type"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"].startswith("attachment;")
    disposition = api.get(f"sessions/{session_id}/messages/{items[1]['id']}/file").headers["content-disposition"]
    assert 'filename="fatura mar_o.pdf"' in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == "fatura março.pdf"

    # A message without a file has none to download.
    missing = api.get(f"sessions/{session_id}/messages/{items[3]['id']}/file")
    assert missing.status_code == 404 and missing.json()["type"].endswith("/file-not-found")
    session = api.get(f"sessions/{session_id}").json()
    assert session["message_count"] == 4
    assert session["last_message_preview"] == "[location] -23.5, -46.6"

    # Finishing the session deletes its files from the store.
    assert objects_kept(stack) == 3
    assert api.delete(f"sessions/{session_id}").status_code == 204
    eventually(lambda: objects_kept(stack) == 0, timeout=30, message="files deleted with their session")


def objects_kept(stack) -> int:
    """How many files the file store holds (deleted ones left out)."""
    return len(stored_objects(stack.env["NATS_URL"]))
