"""Case 3 end to end: finishing a session and answering as an agent, seen from Telegram.

fake Telegram -> bot -> JetStream -> server -> MongoDB, then the API call, then
the outbox -> JetStream -> bot -> fake Telegram; NATS is stopped in between
where the goodbye must survive it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from nats.js.errors import NotFoundError

from contract.eventstream import EVENTS_STREAM
from contract.messaging import DEAD_STREAM, PARKED_STREAM
from server.config import DEFAULT_GOODBYE, DEFAULT_REPLY
from tests.harness import ApiClient, eventually, failpoint_fired, settle, sigkill


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


@pytest.mark.parametrize("point", ["server.reply.after_message_stored", "server.reply.after_promised"])
def test_an_agent_reply_retried_after_the_server_died_is_stored_counted_and_sent_once(
    stack, api, telegram, clean_nats, mongo, tmp_path, point
):
    """The client sent a reply with an Idempotency-Key and the server died before answering:
    after storing it (neither counted nor promised yet), or after promising it. The
    same request to the next server stores nothing again, counts it, and sends it once."""
    log = tmp_path / "failpoints.log"
    crashing = stack.server(BALCAO_FAILPOINTS=f"{point}=kill", BALCAO_FAILPOINTS_LOG=str(log))
    stack.bot()
    telegram.send_as_user(8003, "Cadê meu pedido?", first_name="Gal")
    session = eventually(lambda: open_session(api, "8003"), message="session opened")
    eventually(lambda: texts(telegram, 8003, DEFAULT_REPLY), message="reply")
    answer, key = "Seu pedido sai hoje, Gal.", {"Idempotency-Key": "retry-after-crash"}

    with pytest.raises(httpx.TransportError):
        api.post(f"sessions/{session['id']}/messages", json={"text": answer}, headers=key)
    eventually(lambda: not crashing.running, message="server killed at the fail point")
    assert failpoint_fired(log, point)
    assert mongo.messages.count_documents({"direction": "out"}) == 1  # stored before the crash

    stack.server()
    retried = api.post(f"sessions/{session['id']}/messages", json={"text": answer}, headers=key)
    assert retried.status_code == 201, retried.text

    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.outbox.count_documents({})))
    assert [m["text"] for m in telegram.sent(8003)] == [DEFAULT_REPLY, answer]
    stored = mongo.messages.find_one({"direction": "out"})
    assert retried.json()["id"] == str(stored["_id"]) and mongo.messages.count_documents({}) == 2
    assert mongo.sessions.find_one({"contact_identifier": "8003"})["message_count"] == 2


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


async def _held(url: str) -> dict[str, list[str]]:
    """The subjects each stream holding copies of contacts' data keeps now."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    held: dict[str, list[str]] = {}
    for stream in (EVENTS_STREAM, PARKED_STREAM, DEAD_STREAM):
        state = (await js.stream_info(stream)).state
        subjects = []
        for sequence in range(max(state.first_seq, 1), state.last_seq + 1 if state.messages else 1):
            try:
                subjects.append((await js.get_msg(stream, sequence)).subject)
            except NotFoundError:
                continue  # purged
        held[stream] = subjects
    await nc.close()
    return held


async def _dead_letter_of(url: str, chat: str) -> None:
    """What the consume loop writes for a message of this chat delivered too often."""
    import nats

    nc = await nats.connect(url)
    await nc.jetstream().publish(f"balcao.dead.balcao.inbound.message.{chat}", b'{"chat_id": %s}' % chat.encode())
    await nc.close()


def test_a_finished_session_is_erased_from_the_streams_and_others_are_kept(stack, api, telegram, clean_nats):
    """Its events (all but session.finished), its contact's parked replies and dead
    letters go with it; another contact's stay."""
    stack.server()
    stack.bot()
    for contact in (8101, 8102):
        # The reply is parked; the goodbye after the finish is delivered (parked after the purge, it would stay).
        telegram.add_fault(method="sendMessage", chat_id=contact, error_code=403, times=1)
        telegram.send_as_user(contact, f"meu nome é {contact}", first_name="Rita")
    sessions = {c: eventually(lambda c=c: open_session(api, str(c)), message="session") for c in ("8101", "8102")}
    for contact in ("8101", "8102"):
        asyncio.run(_dead_letter_of(clean_nats.url, contact))

    def parked_and_reported() -> dict[str, list[str]] | None:
        held = asyncio.run(_held(clean_nats.url))
        sent = [s for s in held[EVENTS_STREAM] if s.startswith("balcao.events.message.sent.")]
        return held if len(held[PARKED_STREAM]) == 2 and len(sent) == 2 else None

    before = eventually(parked_and_reported, timeout=30, message="both replies parked and reported")
    erased, kept = sessions["8101"]["id"], sessions["8102"]["id"]
    assert sum(erased in s for s in before[EVENTS_STREAM]) == 3  # opened, received, sent

    assert api.delete(f"sessions/{erased}").status_code == 204
    finished = f"balcao.events.session.finished.telegram.{erased}"

    def finish_published() -> dict[str, list[str]] | None:
        held = asyncio.run(_held(clean_nats.url))
        return held if finished in held[EVENTS_STREAM] else None

    after = eventually(finish_published, message="session.finished published")

    assert [s for s in after[EVENTS_STREAM] if erased in s] == [finished]
    assert sum(kept in s for s in after[EVENTS_STREAM]) == 3
    assert after[PARKED_STREAM] == ["balcao.outbound.parked.8102"]
    assert after[DEAD_STREAM] == ["balcao.dead.balcao.inbound.message.8102"]
