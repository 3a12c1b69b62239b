"""A payload no decoder can read is dead-lettered, never a crash loop (real server, nats-server)."""

from __future__ import annotations

import asyncio

import nats
from nats.js.errors import NotFoundError

from contract.messaging import DEAD_STREAM, INBOUND_STREAM, INBOUND_SUBJECT, InboundMessage
from tests.harness import eventually, outbound_messages

# Python's json gives up on these with RecursionError and ValueError, not JSONDecodeError.
NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_INTEGER = b'{"platform": "telegram", "contact_identifier": "1", "chat_id": 1' + b"9" * 5000 + b"}"
POISON = [NESTED, HUGE_INTEGER, b"\xff\xfe not utf-8", b'{"nested": ' * 2000 + b"1" + b"}" * 2000]


async def _publish_raw(url: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for number, payload in enumerate(payloads):
            await js.publish(INBOUND_SUBJECT, payload, headers={"Nats-Msg-Id": f"poison-{number}"})
    finally:
        await nc.close()


async def _stream_state(url: str, stream: str) -> tuple[int, list[dict]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            state = (await js.stream_info(stream)).state
        except NotFoundError:
            return 0, []
        found = []
        for sequence in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, sequence)
            except NotFoundError:
                continue
            found.append({"data": msg.data, "headers": dict(msg.headers or {}), "subject": msg.subject})
        return state.messages, found
    finally:
        await nc.close()


def stream_contents(url: str, stream: str) -> list[dict]:
    return asyncio.run(_stream_state(url, stream))[1]


def stream_size(url: str, stream: str) -> int:
    return asyncio.run(_stream_state(url, stream))[0]


def test_poison_payloads_are_dead_lettered_and_a_good_message_is_answered(stack, mongo, clean_nats):
    server = stack.server()
    good = InboundMessage(
        platform="telegram",
        contact_identifier="7007",
        chat_id=7007,
        message_id=1,
        name="Rita",
        text="depois do veneno",
        sent_at="2026-01-01T00:00:00+00:00",
    )
    asyncio.run(_publish_raw(clean_nats.url, [*POISON, good.to_bytes()]))

    eventually(
        lambda: mongo.messages.count_documents({"text": "depois do veneno"}) == 1,
        timeout=30,
        message="the good message stored",
    )
    dead = eventually(
        lambda: (lambda found: found if len(found) == len(POISON) else None)(
            stream_contents(clean_nats.url, DEAD_STREAM)
        ),
        timeout=30,
        message="every poison dead-lettered",
    )
    eventually(
        lambda: stream_size(clean_nats.url, INBOUND_STREAM) == 0, timeout=30, message="the inbound stream emptied"
    )

    assert server.running, server.log_text()
    assert sorted(entry["data"] for entry in dead) == sorted(POISON)
    for entry in dead:
        assert entry["headers"]["Balcao-Dead-Subject"] == INBOUND_SUBJECT
        assert entry["headers"]["Balcao-Dead-Reason"]
        assert entry["headers"]["Nats-Msg-Id"].startswith("poison-")
    assert [m.text for m in outbound_messages(clean_nats.url) if m.chat_id == "7007"] == ["Reply: mensagem recebida"]
    assert mongo.messages.count_documents({}) == 1
    assert server.log_text().count("dead-lettered") == len(POISON)
    metrics = __import__("httpx").get(f"{stack.api_url}/metrics").text
    assert f'balcao_dead_lettered_total{{stream="{INBOUND_STREAM}"}} {float(len(POISON))}' in metrics
