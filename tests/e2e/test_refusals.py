"""What Telegram answers about a chat, end to end: a contact who blocked the bot, and a
group that became a supergroup, through the real server, bot, NATS and fake Telegram."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from contract.eventstream import EVENTS_STREAM
from contract.messaging import MOVED_CHATS_BUCKET, PARKED_STREAM
from server.config import DEFAULT_REPLY
from tests.harness import ApiClient, eventually, settle


@pytest.fixture
def api(stack) -> Iterator[ApiClient]:
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def session_of(api: ApiClient, contact: int) -> dict | None:
    items = api.get("sessions").json()["items"]
    return next((s for s in items if s["contact"]["identifier"] == str(contact)), None)


async def _stream_bodies(url: str, stream: str, prefix: str) -> list[dict]:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    found = []
    for sequence in range(max(state.first_seq, 1), state.last_seq + 1 if state.messages else 1):
        try:
            msg = await js.get_msg(stream, sequence)
        except NotFoundError:
            continue
        if msg.subject.startswith(prefix):
            found.append(json.loads(msg.data))
    await nc.close()
    return found


def stream_bodies(url: str, stream: str, prefix: str) -> list[dict]:
    return asyncio.run(_stream_bodies(url, stream, prefix))


def test_a_contact_who_blocked_the_bot_is_marked_and_replies_are_409_until_they_write_again(
    stack, api, telegram, clean_nats
):
    stack.server()
    stack.bot()
    telegram.send_as_user(6201, "Olá", first_name="Bia")
    session = eventually(lambda: session_of(api, 6201), message="session")
    eventually(lambda: telegram.sent(6201), message="intake reply")
    assert session["contact"]["blocked"] is False and session["contact"]["blocked_at"] is None

    telegram.http.post("/_test/users", json={"id": 6201, "first_name": "Bia", "blocked": True}).raise_for_status()
    first = api.post(f"sessions/{session['id']}/messages", json={"text": "Posso ajudar?"})
    assert first.status_code == 201
    marked = eventually(
        lambda: (s := api.get(f"sessions/{session['id']}").json())["contact"]["blocked"] and s,
        timeout=30,
        message="contact marked blocked",
    )
    assert marked["contact"]["blocked_at"]

    refused = api.post(f"sessions/{session['id']}/messages", json={"text": "Ainda aí?"})
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["type"].endswith("contact-blocked")
    assert "blocked the bot" in problem["detail"] and "writes to the bot" in problem["detail"]
    assert len(api.get(f"sessions/{session['id']}/messages").json()["items"]) == 2  # not stored

    def parked_and_reported() -> tuple[int, int]:
        parked = stream_bodies(clean_nats.url, PARKED_STREAM, "balcao.outbound.parked.6201")
        blocked = stream_bodies(clean_nats.url, EVENTS_STREAM, "balcao.events.contact.blocked.")
        return len(parked), len(blocked)

    counts = settle(clean_nats.url, parked_and_reported)
    assert counts == (1, 1)  # parked once, reported once
    [event] = stream_bodies(clean_nats.url, EVENTS_STREAM, "balcao.events.contact.blocked.")
    assert event["session_id"] == session["id"] and "blocked by the user" in event["reason"]
    assert [m["text"] for m in telegram.sent(6201)] == [DEFAULT_REPLY]

    # Writing again starts the bot again (Telegram's rule), and clears the mark.
    telegram.send_as_user(6201, "Desbloqueei", first_name="Bia")
    eventually(
        lambda: not api.get(f"sessions/{session['id']}").json()["contact"]["blocked"],
        timeout=30,
        message="mark cleared",
    )
    assert api.post(f"sessions/{session['id']}/messages", json={"text": "Bem-vinda de volta"}).status_code == 201
    eventually(lambda: any(m["text"] == "Bem-vinda de volta" for m in telegram.sent(6201)), message="delivered")


async def _moved_chat(url: str, chat_id: str) -> str | None:
    import nats
    from nats.js.errors import KeyNotFoundError

    nc = await nats.connect(url)
    try:
        entry = await (await nc.jetstream().key_value(MOVED_CHATS_BUCKET)).get(chat_id)
        return (entry.value or b"").decode()
    except KeyNotFoundError:
        return None
    finally:
        await nc.close()


def upload_empty(api: ApiClient, channel: str) -> dict:
    # A multipart body is streamed, which the contract check cannot read back: the report is checked by the GETs.
    files = {"file": ("a.json", b"[]", "application/json")}
    response = api.post("imports", data={"channel": channel}, files=files, check=False)
    assert response.status_code == 202, response.text
    return response.json()


def test_an_announcement_to_a_group_that_became_a_supergroup_follows_it_and_the_report_says_so(
    stack, api, telegram, clean_nats
):
    telegram.add_group(-4001, "Suporte interno")
    supergroup = telegram.migrate_group(-4001)
    stack.server()
    bot = stack.bot()
    first = upload_empty(api, "-4001")
    assert first["channel_moved_to"] is None  # not known before the announcement is sent
    eventually(lambda: telegram.sent(supergroup), timeout=30, message="announcement in the supergroup")
    moved_to = eventually(
        lambda: api.get(f"imports/{first['id']}").json()["channel_moved_to"], timeout=30, message="report notes it"
    )
    assert moved_to == str(supergroup)
    [moved] = stream_bodies(clean_nats.url, EVENTS_STREAM, "balcao.events.channel.moved.")
    assert (moved["channel"], moved["moved_to"], moved["import"]["id"]) == ("-4001", str(supergroup), first["id"])
    assert asyncio.run(_moved_chat(clean_nats.url, "-4001")) == str(supergroup)  # kept in NATS

    # A restarted bot remembers the move: the next announcement goes straight to the supergroup.
    bot.stop()
    stack.bot()
    second = upload_empty(api, "-4001")
    eventually(lambda: len(telegram.sent(supergroup)) == 2, timeout=30, message="second announcement")
    settle(clean_nats.url, lambda: len(telegram.attempts(-4001)))
    assert len(telegram.attempts(-4001)) == 1, "only the first announcement met the old id"
    eventually(
        lambda: api.get(f"imports/{second['id']}").json()["channel_moved_to"] == str(supergroup),
        message="second report notes it too",
    )
