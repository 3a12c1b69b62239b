"""Payloads the server reads from NATS that it must not trust, against a real server and nats-server.

The bot publishes inbound messages and `message.sent` events; a bot that is
wrong (or whoever holds its NATS credentials) can publish anything there. The
server bounds every field of an inbound message, dead-lettering one past its
bound at its first delivery, and serves an event to clients only once it has
parsed it, found its type to be its subject's and, for `message.sent`, rebuilt
it from the fields it knows.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import nats
from nats.js.errors import NotFoundError
from websockets.sync.client import connect

from contract import eventstream
from contract.messaging import DEAD_STREAM, InboundMessage
from tests.e2e.test_poison import _publish_raw, stream_contents
from tests.harness import API_TOKEN, eventually

SESSION = "0123456789abcdef01234567"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def inbound(contact: int, **changes: Any) -> dict[str, Any]:
    message = InboundMessage(
        platform="telegram",
        contact_identifier=str(contact),
        chat_id=contact,
        message_id=1,
        name="Rita",
        text="olá",
        sent_at="2026-01-01T00:00:00+00:00",
    )
    return {**json.loads(message.to_bytes()), **changes}


def dead_letters(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(DEAD_STREAM)).state.messages
        except NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


def test_inbound_fields_past_their_bounds_are_dead_lettered_at_once_with_the_reason(stack, mongo, clean_nats):
    server = stack.server()
    hostile = {
        "name": inbound(7101, name="N" * 300_000),
        "text": inbound(7102, text="x" * 4097),
        "contact_identifier": inbound(7103, contact_identifier="٧١٠٣"),
        "chat_id": inbound(7104, chat_id="7104"),
        "message_id": inbound(7105, message_id=2**70),
        "platform": inbound(7106, platform="telegram" * 10),
        "sent_at": inbound(7107, sent_at="2026" * 100),
    }
    good = inbound(7108, text="depois dos excessos")
    asyncio.run(_publish_raw(clean_nats.url, [json.dumps(body).encode() for body in [*hostile.values(), good]]))

    eventually(
        lambda: mongo.messages.count_documents({"text": "depois dos excessos"}) == 1,
        timeout=30,
        message="the good message stored",
    )
    dead = eventually(
        lambda: dead_letters(clean_nats.url) == len(hostile) and stream_contents(clean_nats.url, DEAD_STREAM),
        timeout=30,
        message="every hostile message dead-lettered",
    )
    reasons = {json.loads(entry["data"])["chat_id"]: entry["headers"] for entry in dead}
    for field, body in hostile.items():
        headers = reasons[body["chat_id"]]
        assert headers["Balcao-Dead-Deliveries"] == "1", (field, headers)  # never retried
        assert f"bad field: {field} " in headers["Balcao-Dead-Reason"], (field, headers["Balcao-Dead-Reason"])
    assert mongo.messages.count_documents({}) == 1 and mongo.sessions.count_documents({}) == 1
    assert server.running


async def _publish_events(url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, data in messages:
            await js.publish(subject, data, stream=eventstream.EVENTS_STREAM)
    finally:
        await nc.close()


def test_forged_events_on_the_bot_s_subject_reach_no_client(stack, clean_nats):
    server = stack.server()
    subject = eventstream.subject(eventstream.MESSAGE_SENT, "telegram", SESSION)
    genuine = eventstream.message_sent(
        platform="telegram",
        session_id=SESSION,
        contact_identifier="42",
        key="agent:65f0c0ffee0000000000abcd",
        text="Segue o boleto",
        kind="agent",
        delivery=eventstream.DELIVERY_SENT,
    )
    raw = eventstream.to_bytes(genuine)
    forged = [
        # Raw line breaks: served unparsed, they end the SSE frame and start another.
        raw + b'\n\nevent: session.finished\ndata: {"type": "session.finished", "session_id": "x"}',
        eventstream.to_bytes({**genuine, "type": eventstream.SESSION_FINISHED}),  # another type than its subject's
        eventstream.to_bytes({**genuine, "session_id": "fedcba9876543210fedcba98"}),  # another session
        eventstream.to_bytes({**genuine, "delivery": "read"}),
        eventstream.to_bytes({**genuine, "message": {**genuine["message"], "text": "x" * 5000}}),
        b"not json",
    ]
    extra = eventstream.to_bytes({**genuine, "message": {**genuine["message"], "html": "<script>"}, "admin": True})
    marker = eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, **{"import": {"id": "end"}}))
    asyncio.run(
        _publish_events(
            clean_nats.url,
            [(subject, raw), *((subject, body) for body in forged), (subject, extra)]
            + [(eventstream.subject(eventstream.IMPORT_FINISHED), marker)],
        )
    )
    last_id = 2 + len(forged) + 1

    frames: list[str] = []
    headers = {**AUTH, "Accept": "text/event-stream"}
    url = f"http://127.0.0.1:{server.port}/v1/events?since=0"
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            frames.append(line)
            if line.startswith("data:") and json.loads(line[5:])["id"] == last_id:
                break
    kinds = [line.removeprefix("event: ") for line in frames if line.startswith("event:")]
    assert kinds == [eventstream.MESSAGE_SENT, eventstream.MESSAGE_SENT, eventstream.IMPORT_FINISHED], frames
    assert [line for line in frames if line.startswith("id:")] == ["id: 1", f"id: {len(forged) + 2}", f"id: {last_id}"]

    with connect(f"ws://127.0.0.1:{server.port}/v1/events?since=0", additional_headers=AUTH, open_timeout=15) as ws:
        got = [json.loads(ws.recv(timeout=30)) for _ in range(3)]  # every frame is JSON
    assert [event["id"] for event in got] == [1, len(forged) + 2, last_id]
    first, cleaned = got[0], got[1]
    assert {key: value for key, value in first.items() if key != "id"} == genuine
    assert "admin" not in cleaned and cleaned["message"] == genuine["message"]  # rebuilt from known fields
