"""An agent's reply longer than one Telegram message, end to end: API -> outbox ->
JetStream -> bot -> fake Telegram, as several ordered messages, each sent once
even when the bot dies between two of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.parts import split_message, utf16_length
from server.config import DEFAULT_REPLY
from tests.harness import ApiClient, eventually, failpoint_fired, settle


@pytest.fixture
def api(stack) -> Iterator[ApiClient]:
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def long_reply() -> str:
    """10,000 characters (10,200 UTF-16 code units: emoji in every paragraph)."""
    paragraphs = [f"Passo {n} 😀: " + "verifique o recibo e a fatura " * 12 for n in range(40)]
    return "\n\n".join(p.strip() for p in paragraphs)[:10_000]


def start_session(api: ApiClient, telegram, contact: int) -> dict:
    telegram.send_as_user(contact, "Preciso de instruções", first_name="Lia")
    eventually(lambda: [m for m in telegram.sent(contact) if m["text"] == DEFAULT_REPLY], message="intake reply")

    def session() -> dict | None:
        items = api.get("sessions").json()["items"]
        return next((s for s in items if s["contact"]["identifier"] == str(contact)), None)

    return eventually(session, message="session")


def agent_texts(telegram, contact: int) -> list[str]:
    return [m["text"] for m in telegram.sent(contact) if m["text"] != DEFAULT_REPLY]


def test_a_10000_character_reply_arrives_as_3_ordered_messages_and_is_stored_whole(stack, api, telegram, clean_nats):
    stack.server()
    stack.bot()
    session = start_session(api, telegram, 6101)
    text = long_reply()
    assert utf16_length(text) > 2 * 4096

    response = api.post(f"sessions/{session['id']}/messages", json={"text": text})
    assert response.status_code == 201
    eventually(lambda: len(agent_texts(telegram, 6101)) >= 3, timeout=30, message="three parts")
    sent = settle(clean_nats.url, lambda: agent_texts(telegram, 6101))

    assert sent == split_message(text)
    assert len(sent) == 3
    assert all(utf16_length(part) <= 4096 for part in sent)
    assert " ".join(sent).split() == text.split()  # in order, nothing lost but the whitespace at the cuts
    stored = api.get(f"sessions/{session['id']}/messages/{response.json()['id']}").json()
    assert stored["text"] == text


def test_a_bot_killed_between_two_parts_sends_none_of_them_twice(stack, api, telegram, clean_nats, tmp_path):
    log = tmp_path / "failpoints.log"
    stack.server()
    bot = stack.bot(
        measured=False,
        BALCAO_FAILPOINTS="bot.delivery.between_parts=kill",
        BALCAO_FAILPOINTS_LOG=str(log),
        BOT_DELIVERY_ACK_WAIT="3",
    )
    session = start_session(api, telegram, 6102)
    text = long_reply()
    assert api.post(f"sessions/{session['id']}/messages", json={"text": text}).status_code == 201
    eventually(lambda: not bot.running, timeout=30, message="bot killed between parts")
    assert failpoint_fired(log, "bot.delivery.between_parts")
    parts = split_message(text)
    assert agent_texts(telegram, 6102) == parts[:1]  # part 1 is out, its progress recorded

    stack.bot(BOT_DELIVERY_ACK_WAIT="3")
    eventually(lambda: len(agent_texts(telegram, 6102)) >= 3, timeout=60, message="the rest of the parts")
    sent = settle(clean_nats.url, lambda: agent_texts(telegram, 6102))
    assert sent == parts
