"""Case 3 end to end: finishing a session and answering as an agent, seen from Telegram.

fake Telegram -> bot -> JetStream -> server -> MongoDB, then the API call, then
the outbox -> JetStream -> bot -> fake Telegram; NATS is stopped in between
where the goodbye must survive it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from server.config import DEFAULT_GOODBYE, DEFAULT_REPLY
from tests.harness import ApiClient, eventually, settle, sigkill


@pytest.fixture
def api(stack) -> Iterator[ApiClient]:
    """The /v1 API of the stack's server (started by each test)."""
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def texts(telegram, chat_id: int, text: str) -> list[str]:
    return [m["text"] for m in telegram.sent(chat_id) if m["text"] == text]


def open_session(api: ApiClient, contact: str, messages: int = 1) -> dict | None:
    for session in api.get("sessions").json()["items"]:
        if session["contact"]["identifier"] == contact and session["message_count"] >= messages:
            return session
    return None


def test_finishing_says_goodbye_once_and_the_next_message_opens_a_new_session(stack, api, telegram, mongo, clean_nats):
    stack.server()
    stack.bot()
    telegram.send_as_user(8001, "Olá, preciso de ajuda", first_name="Rita", last_name="Lee")
    first = eventually(lambda: open_session(api, "8001"), message="session opened")
    eventually(lambda: texts(telegram, 8001, DEFAULT_REPLY), message="reply")

    assert api.delete(f"sessions/{first['id']}").status_code == 204
    eventually(lambda: texts(telegram, 8001, DEFAULT_GOODBYE), message="goodbye")

    telegram.send_as_user(8001, "Voltei com outra dúvida", first_name="Rita", last_name="Lee")
    second = eventually(lambda: open_session(api, "8001"), message="new session")
    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.messages.count_documents({})))

    second = open_session(api, "8001")
    assert second["id"] != first["id"]
    assert second["message_count"] == 1
    assert second["last_message_preview"] == "Voltei com outra dúvida"
    assert mongo.messages.count_documents({}) == 1
    assert [m["text"] for m in telegram.sent(8001)] == [DEFAULT_REPLY, DEFAULT_GOODBYE, DEFAULT_REPLY]


def test_an_agent_reply_reaches_the_contact_once(stack, api, telegram, clean_nats):
    stack.server()
    stack.bot()
    telegram.send_as_user(8002, "Cadê meu pedido?", first_name="Caetano")
    session = eventually(lambda: open_session(api, "8002"), message="session opened")

    answer = "Seu pedido sai hoje, Caetano."
    assert api.post(f"sessions/{session['id']}/messages", json={"text": answer}).status_code == 201

    eventually(lambda: texts(telegram, 8002, answer), message="agent reply delivered")
    settle(clean_nats.url, lambda: len(telegram.sent()))  # a duplicate would be on its way or sent

    directions = [m["direction"] for m in api.get(f"sessions/{session['id']}/messages").json()["items"]]
    assert directions == ["in", "out"]
    assert [m["text"] for m in telegram.sent(8002)] == [DEFAULT_REPLY, answer]


def test_a_goodbye_promised_while_nats_is_down_is_sent_once_when_it_returns(stack, api, telegram, clean_nats, mongo):
    server = stack.server()
    stack.bot()
    telegram.send_as_user(8003, "Oi", first_name="Gal")
    session = eventually(lambda: open_session(api, "8003"), message="session opened")
    eventually(lambda: texts(telegram, 8003, DEFAULT_REPLY), message="reply")
    # Two more contacts write: their messages and replies are in flight when NATS dies.
    for contact in (8013, 8023):
        telegram.send_as_user(contact, "Oi", first_name="Gal")

    sigkill(clean_nats)
    started = time.monotonic()
    response = api.delete(f"sessions/{session['id']}")
    assert response.status_code == 204
    assert time.monotonic() - started < 3, "finishing must not wait for NATS"
    # The relay has tried, and failed, to publish it: the outbox still holds it.
    eventually(
        lambda: "outbox relay paused, NATS unavailable" in server.log_text(), timeout=30, message="relay failing"
    )
    assert mongo.outbox.count_documents({"key": f"goodbye:{session['id']}"}) == 1
    assert texts(telegram, 8003, DEFAULT_GOODBYE) == []
    clean_nats.start()

    settle(
        clean_nats.url,
        lambda: (len(telegram.sent()), mongo.outbox.count_documents({}), len(telegram.pending_updates())),
    )

    assert [m["text"] for m in telegram.sent(8003)] == [DEFAULT_REPLY, DEFAULT_GOODBYE]
    for contact in (8013, 8023):  # what was in flight when NATS died: stored and answered once
        assert [m["text"] for m in telegram.sent(contact)] == [DEFAULT_REPLY]
        assert mongo.sessions.find_one({"contact_identifier": str(contact)})["message_count"] == 1
    assert mongo.outbox.count_documents({}) == 0


def test_a_goodbye_survives_the_server_crashing_while_nats_is_down(stack, api, telegram, clean_nats, mongo):
    server = stack.server(measured=False)
    stack.bot()
    telegram.send_as_user(8004, "Oi", first_name="Elis")
    session = eventually(lambda: open_session(api, "8004"), message="session opened")

    sigkill(clean_nats)
    assert api.delete(f"sessions/{session['id']}").status_code == 204
    # Killed holding a goodbye it promised and could not publish yet.
    assert mongo.outbox.count_documents({"key": f"goodbye:{session['id']}"}) == 1
    server.stop(signal.SIGKILL)
    clean_nats.start()
    stack.server()

    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.outbox.count_documents({})))

    assert [m["text"] for m in telegram.sent(8004)] == [DEFAULT_REPLY, DEFAULT_GOODBYE]
    assert mongo.outbox.count_documents({}) == 0
