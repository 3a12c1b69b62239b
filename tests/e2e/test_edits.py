"""Contacts' edits end to end: the stored text changes, earlier ones are kept (bounded), an
event says so, nothing is answered, and a finished session's message stays finished."""

from __future__ import annotations

import pytest

from contract import eventstream
from server.models.messages import MAX_EARLIER_VERSIONS
from tests.e2e.test_events import open_events, read_until
from tests.harness import ApiClient, eventually, settle

REPLY = "Reply: mensagem recebida"


@pytest.fixture
def api(stack):
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def test_an_edit_changes_the_text_keeps_the_old_one_and_shows_up_as_an_event(stack, api, telegram, mongo):
    stack.server()
    stack.bot()
    with open_events(stack.http_port, "type=message.edited") as ws:
        sent = telegram.send_as_user(5301, "Meu pedido é o 123", first_name="Rita")
        eventually(lambda: [m for m in telegram.sent(5301) if m["text"] == REPLY], timeout=30, message="reply")
        telegram.edit_as_user(5301, sent["message_id"], "Meu pedido é o 124")
        (event,) = read_until(ws, lambda got: len(got) >= 1)
    assert event["type"] == eventstream.MESSAGE_EDITED
    assert event["message"]["text"] == "Meu pedido é o 124"
    assert event["message"]["edited_at"] and event["message"]["content_kind"] == "text"

    session = mongo.sessions.find_one({"contact_identifier": "5301"})
    (message,) = api.get(f"sessions/{session['_id']}/messages").json()["items"]
    assert message["id"] == event["message"]["id"]
    assert message["text"] == "Meu pedido é o 124"
    assert [version["text"] for version in message["earlier_versions"]] == ["Meu pedido é o 123"]
    # An edit is no new message and gets no answer.
    settle(stack.env["NATS_URL"], lambda: len(telegram.sent(5301)))
    assert len(telegram.sent(5301)) == 1
    assert mongo.sessions.find_one({"_id": session["_id"]})["message_count"] == 1


def test_an_edit_storm_keeps_the_last_text_and_a_bounded_history(stack, telegram, mongo):
    stack.server()
    stack.bot()
    sent = telegram.send_as_user(5302, "versão 0", first_name="Caio")
    eventually(lambda: mongo.messages.find_one({"text": "versão 0"}), timeout=30, message="the first version")
    edits = 60
    for number in range(1, edits + 1):
        telegram.edit_as_user(5302, sent["message_id"], f"versão {number}")
    stored = eventually(
        lambda: mongo.messages.find_one({"text": f"versão {edits}"}), timeout=90, message="the last edit applied"
    )
    # Oldest first, the latest MAX_EARLIER_VERSIONS kept: the document does not grow with the storm.
    assert [version["text"] for version in stored["versions"]] == [
        f"versão {number}" for number in range(edits - MAX_EARLIER_VERSIONS, edits)
    ]
    settle(stack.env["NATS_URL"], lambda: mongo.messages.find_one({"_id": stored["_id"]})["text"])
    assert mongo.messages.count_documents({}) == 1
    assert [m["text"] for m in telegram.sent(5302)] == [REPLY]


def test_an_edit_of_a_message_whose_session_was_finished_is_ignored(stack, api, telegram, mongo):
    stack.server()
    stack.bot()
    sent = telegram.send_as_user(5303, "primeira", first_name="Ana")
    session = eventually(lambda: mongo.sessions.find_one({"contact_identifier": "5303"}), timeout=30)
    eventually(lambda: mongo.messages.count_documents({"session_id": session["_id"]}) == 1, timeout=30)
    assert api.delete(f"sessions/{session['_id']}").status_code == 204
    telegram.edit_as_user(5303, sent["message_id"], "editada depois do fim")
    telegram.send_as_user(5303, "nova conversa", first_name="Ana")  # after the edit in the same stream
    eventually(lambda: mongo.messages.find_one({"text": "nova conversa"}), timeout=30, message="the next message")
    settle(stack.env["NATS_URL"], lambda: mongo.messages.count_documents({}))
    assert [m["text"] for m in mongo.messages.find()] == ["nova conversa"]
