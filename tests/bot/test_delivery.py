"""Outbound delivery against the real nats-server and the fake Bot API (in process)."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
import pytest_asyncio
from nats.js.errors import APIError
from telegram import Bot

from bot.delivery import Delivery, RollingSecond, delivered_bucket, delivered_key
from bot.parts import split_message
from contract.messaging import OUTBOUND_STREAM, OUTBOUND_SUBJECT, PARKED_STREAM, PARKED_SUBJECT, OutboundMessage
from devstack.faketelegram import FakeTelegram
from runtime import jetstream

TOKEN = "7:delivery-test"


@pytest_asyncio.fixture
async def fake():
    telegram = FakeTelegram(TOKEN)
    await telegram.start(port=0)
    yield telegram
    await telegram.stop()


@pytest_asyncio.fixture
async def js(clean_nats):
    nc = await nats.connect(clean_nats.url)
    context = nc.jetstream()
    await jetstream.ensure_streams(context)
    yield context
    await nc.close()


@pytest_asyncio.fixture
async def delivery(fake, js):
    async with Bot(TOKEN, base_url=f"{fake.base_url}/bot") as bot:
        running = Delivery(bot, js, batch_size=10)
        task = asyncio.create_task(running.run())
        yield running
        running.stop()
        await asyncio.wait_for(task, 10)


async def publish(js, key: str, chat_id: str, text: str) -> None:
    message = OutboundMessage(key=key, chat_id=chat_id, text=text)
    await js.publish(OUTBOUND_SUBJECT, message.to_bytes(), headers={"Nats-Msg-Id": key})


async def until(check, timeout: float = 10.0):
    for _ in range(int(timeout / 0.05)):
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


@pytest.mark.asyncio
async def test_messages_for_one_chat_keep_their_order_across_a_retry_after(fake, js, delivery):
    fake.register_user(11, "Ana")
    fake.add_fault("sendMessage", 429, chat_id=11, retry_after=1, times=1)
    for n in range(3):
        await publish(js, f"k{n}", "11", f"texto {n}")
    sent = await until(lambda: [m["text"] for m in fake.sent(11)] if len(fake.sent(11)) == 3 else None)
    assert sent == ["texto 0", "texto 1", "texto 2"]


@pytest.mark.asyncio
async def test_channel_names_and_ids_are_both_delivered(fake, js, delivery):
    channel = fake.register_channel(username="@suporte", title="Suporte")
    await publish(js, "a1", "@suporte", "por nome")
    await publish(js, "a2", str(channel["id"]), "por id")
    texts = await until(
        lambda: sorted(m["text"] for m in fake.sent("@suporte")) if len(fake.sent("@suporte")) == 2 else None
    )
    assert texts == ["por id", "por nome"]


@pytest.mark.asyncio
async def test_undeliverable_message_is_parked_with_its_reason(fake, js, delivery):
    await publish(js, "lost", "999", "ninguém")  # never talked to the bot: chat not found
    fake.register_user(12, "Bia")
    await publish(js, "fine", "12", "ok")
    await until(lambda: fake.sent(12))
    subscription = await js.pull_subscribe(f"{PARKED_SUBJECT}.>", durable="test-parked", stream=PARKED_STREAM)
    parked = await subscription.fetch(1, timeout=5)
    assert parked[0].subject == f"{PARKED_SUBJECT}.999"  # per chat: a finish purges its contact's
    body = json.loads(parked[0].data)
    assert body["key"] == "lost"
    assert "chat not found" in body["meta"]["reason"].lower()
    assert fake.sent(999) == []


@pytest.mark.asyncio
async def test_a_full_parked_stream_keeps_what_it_holds_and_the_next_stays_outbound(fake, js, delivery):
    """At the cap the parked stream refuses the next message instead of pushing out the
    oldest: that one stays in the outbound stream, tried again, until there is room."""
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=8192))
    earlier = 0
    with pytest.raises(APIError, match="maximum bytes"):
        for n in range(100):
            await js.publish(PARKED_SUBJECT, f"{n:04d}".encode() + b"p" * 996)
            earlier += 1
    await publish(js, "refused", "998", "ninguém" * 150)  # chat not found: to be parked

    # Telegram refused it twice: parking failed once and the bot came back to it.
    await until(lambda: len(fake.attempts(998)) >= 2, timeout=20)
    parked = await js.stream_info(PARKED_STREAM)
    assert parked.state.messages == earlier
    assert (await js.get_msg(PARKED_STREAM, 1)).data.startswith(b"0000")
    assert (await js.stream_info(OUTBOUND_STREAM)).state.messages == 1  # not acknowledged


@pytest.mark.asyncio
async def test_a_redelivered_message_already_sent_is_not_sent_again(fake, js):
    fake.register_user(13, "Caio")
    # A bot sent "k-sent", recorded it, and died before acknowledging.
    bucket = await delivered_bucket(js)
    await bucket.put(delivered_key("k-sent"), b"1")
    await publish(js, "k-sent", "13", "já enviado")
    await publish(js, "k-new", "13", "novo")
    subscription = await js.pull_subscribe(OUTBOUND_SUBJECT, durable="bot-outbound")
    first = await subscription.fetch(2, timeout=5)
    for msg in first:
        await msg.nak()
    await subscription.unsubscribe()

    async with Bot(TOKEN, base_url=f"{fake.base_url}/bot") as bot:
        running = Delivery(bot, js)
        task = asyncio.create_task(running.run())
        await until(lambda: fake.sent(13))
        await asyncio.sleep(0.5)
        running.stop()
        await asyncio.wait_for(task, 10)
    assert [m["text"] for m in fake.sent(13)] == ["novo"]


@pytest.mark.asyncio
async def test_same_key_published_again_as_a_new_stream_message_is_sent_once(fake, js, delivery):
    fake.register_user(14, "Davi")
    message = OutboundMessage(key="reply:14:1", chat_id="14", text="Reply: mensagem recebida")
    await js.publish(OUTBOUND_SUBJECT, message.to_bytes(), headers={"Nats-Msg-Id": "first-publish"})
    await until(lambda: fake.sent(14))
    # The outbox relay published it again past the de-duplication window (or NATS
    # forgot the window in a restart): a distinct stream message, delivered first time.
    await js.publish(OUTBOUND_SUBJECT, message.to_bytes(), headers={"Nats-Msg-Id": "second-publish"})
    await publish(js, "after", "14", "depois")
    await until(lambda: any(m["text"] == "depois" for m in fake.sent(14)))
    assert [m["text"] for m in fake.sent(14)] == ["Reply: mensagem recebida", "depois"]


@pytest.mark.asyncio
async def test_a_burst_to_one_chat_does_not_delay_other_chats(fake, js, delivery):
    fake.register_user(20, "Rajada")
    others = list(range(21, 26))
    for user in others:
        fake.register_user(user, f"Outro {user}")
    burst = 10  # replies owed to one chat: 10 s at Telegram's 1/s per chat
    for n in range(burst):
        await publish(js, f"burst{n}", "20", f"rajada {n}")
    await until(lambda: fake.sent(20))
    for user in others:
        await publish(js, f"other{user}", str(user), "sua vez")
    await until(lambda: all(fake.sent(user) for user in others), timeout=10)
    # Measured by the burst's own progress, not the clock, so a slow machine cannot fake it.
    burst_sent = len(fake.sent(20))
    assert burst_sent < burst - 2, "the others must not have waited for the burst to drain"
    await until(lambda: len(fake.sent(20)) == burst, timeout=30)
    assert [m["text"] for m in fake.sent(20)] == [f"rajada {n}" for n in range(burst)]
    assert all(a["status"] == 200 for a in fake.attempts()), "paced sends must never meet a 429"


@pytest.mark.asyncio
async def test_no_30_sends_reach_telegram_in_a_rolling_second_when_one_is_slow_on_the_way(fake, js, delivery):
    # Telegram counts a send when it arrives. The first reply is held up 0.5 s on
    # the way; sends started 1/30 s apart would then put 31 into the second after it.
    # The bot keeps one below Telegram's 30, so even 30 never arrive in one second.
    chats = list(range(300, 345))
    for chat in chats:
        fake.register_user(chat, f"Contato {chat}")
    fake.delay_arrival("sendMessage", 0.5, chat_id=chats[0])
    for chat in chats:
        await publish(js, f"slow{chat}", str(chat), "Reply: mensagem recebida")
    await until(lambda: len(fake.sent()) == len(chats), timeout=30)
    attempts = [a for a in fake.attempts() if a["method"] == "sendMessage"]
    assert [a for a in attempts if a["status"] != 200] == [], "a 429 from Telegram's rolling second"
    arrivals = sorted(a["at"] for a in attempts)
    # At most 29, not exactly: on a busy machine the sends may come slower than that.
    assert max(sum(1 for at in arrivals if first <= at < first + 1.0) for first in arrivals) <= 29


def test_the_rolling_second_lets_a_burst_go_at_once_and_holds_each_send_a_second_after_its_answer():
    now = [100.0]
    window = RollingSecond(30, clock=lambda: now[0])
    rooms = []
    for _ in range(30):  # a batch of replies is not spaced out
        assert window.wait() == 0.0
        rooms.append(window.reserve())
    assert window.wait() is None, "all 30 in flight: wait for an answer"
    now[0] = 100.2
    rooms[0].requested = True
    window.release(rooms[0])
    assert window.wait() == pytest.approx(1.0), "answered at 100.2: room again at 101.2"
    window.release(rooms[1])  # never sent (already delivered, say): its room is free at once
    assert window.wait() == 0.0


def test_a_sends_second_starts_at_its_answer_not_when_its_bookkeeping_is_done():
    now = [100.0]
    settled = []
    window = RollingSecond(2, clock=lambda: now[0], on_settled=lambda: settled.append(now[0]))
    slow, failed = window.reserve(), window.reserve()
    assert window.wait() is None, "both in flight"
    with window.requesting(slow):
        now[0] = 100.1  # the answer comes back
    assert settled == [100.1], "a scheduler waiting for an answer is told"
    now[0] = 100.4  # the delivered marker, the report and the ack took 0.3 s
    window.release(slow)
    assert settled == [100.1], "settled once"
    with pytest.raises(RuntimeError), window.requesting(failed):
        now[0] = 100.5
        raise RuntimeError("connection reset")  # the request may have reached Telegram
    window.release(failed)
    assert window.wait() == pytest.approx(0.6), "room again at 101.1, a second after the first answer"
    now[0] = 101.1
    assert window.wait() == 0.0
    window.reserve()
    assert window.wait() == pytest.approx(0.4), "the failed send's room is held until 101.5"


def long_reply() -> str:
    """10,000 characters in paragraphs, emoji among them: three Telegram messages."""
    paragraphs = [f"Parte {n} 😀 " + "resposta longa " * 40 for n in range(20)]
    return "\n\n".join(p.strip() for p in paragraphs)[:10_000]


@pytest.mark.asyncio
async def test_a_long_message_goes_out_as_its_parts_in_order_and_is_marked_delivered(fake, js, delivery):
    fake.register_user(15, "Edu")
    text = long_reply()
    await publish(js, "long", "15", text)
    await publish(js, "after-long", "15", "depois")
    sent = await until(lambda: [m["text"] for m in fake.sent(15)] if len(fake.sent(15)) == 4 else None, timeout=20)
    assert sent == [*split_message(text), "depois"]
    assert len(sent) == 4
    assert (await (await delivered_bucket(js)).get(delivered_key("long"))).value == b"1"


@pytest.mark.asyncio
async def test_a_redelivered_long_message_resumes_after_the_parts_recorded(fake, js):
    fake.register_user(16, "Fabi")
    text = long_reply()
    parts = split_message(text)
    # A bot sent part 1, recorded it, and died before part 2.
    await (await delivered_bucket(js)).put(delivered_key("half"), b"parts:1")
    await publish(js, "half", "16", text)

    async with Bot(TOKEN, base_url=f"{fake.base_url}/bot") as bot:
        running = Delivery(bot, js)
        task = asyncio.create_task(running.run())
        await until(lambda: len(fake.sent(16)) == 2, timeout=20)
        await until(lambda: not running.held)
        running.stop()
        await asyncio.wait_for(task, 10)
    assert [m["text"] for m in fake.sent(16)] == parts[1:]
