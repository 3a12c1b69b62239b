"""The relay and the poller against the real nats-server and the fake Bot API (in process).

What they promise: a polled batch goes to JetStream at once, one lane per chat,
each chat's messages in the order sent; the offset that confirms updates to
Telegram moves only past updates JetStream acknowledged, all of them before it.
JetStream refuses a message here by the inbound stream's own size limit, so a
refused update is refused by the real server until the limit is raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json

import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from telegram.ext import Application, ApplicationBuilder

from bot.relay import ONLY_TEXT, WELCOME, Poller, Relay
from contract.messaging import INBOUND_STREAM
from devstack.faketelegram import FakeTelegram
from runtime import jetstream

TOKEN = "7:relay-test"
TOO_LONG = "x" * 2000  # over the size limit refused() sets, under Telegram's 4,096 characters


class CountingJetStream:
    """The real JetStream context, counting the publishes in flight at once, per chat too."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.in_flight: dict[int, int] = {}
        self.most = 0
        self.most_in_one_chat = 0

    async def publish(self, subject: str, payload: bytes, **kwargs):
        chat = json.loads(payload)["chat_id"]
        self.in_flight[chat] = self.in_flight.get(chat, 0) + 1
        self.most = max(self.most, sum(self.in_flight.values()))
        self.most_in_one_chat = max(self.most_in_one_chat, self.in_flight[chat])
        try:
            return await self._js.publish(subject, payload, **kwargs)
        finally:
            self.in_flight[chat] -= 1


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
async def application(fake):
    app: Application = (
        ApplicationBuilder()
        .token(TOKEN)
        .base_url(f"{fake.base_url}/bot")
        .base_file_url(f"{fake.base_url}/file/bot")
        .updater(None)
        .build()
    )
    await app.initialize()
    yield app
    await app.shutdown()


async def stored(js: JetStreamContext) -> list[dict]:
    """The inbound stream's messages, in stream order."""
    state = (await js.stream_info(INBOUND_STREAM)).state
    if not state.messages:
        return []
    sequences = range(state.first_seq, state.last_seq + 1)
    return [json.loads((await js.get_msg(INBOUND_STREAM, seq)).data) for seq in sequences]


async def refuse_long_messages(js: JetStreamContext, refused: bool) -> None:
    """The inbound stream refuses messages over 1 KiB (JetStream's own check), or takes them again."""
    config = (await js.stream_info(INBOUND_STREAM)).config
    await js.update_stream(config=dataclasses.replace(config, max_msg_size=1024 if refused else -1))


async def until(check, timeout: float = 20.0):
    """Poll `check()` (plain or async) until it returns something truthy; that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


def write(fake: FakeTelegram, user: int, text: str) -> int:
    return fake.inject_message({"id": user, "first_name": f"Contato {user}"}, text)["update_id"]


async def poll(application: Application, relay: Relay) -> tuple[Poller, asyncio.Task]:
    poller = Poller(application, relay, timeout=1)
    return poller, asyncio.create_task(poller.run())


async def stopped(poller: Poller, task: asyncio.Task, within: float = 15.0) -> None:
    """Stop the poller; it must end by itself within `within` seconds (wait_for would cancel
    it, and the poller takes a cancellation as a way to stop)."""
    poller.stop()
    done, _ = await asyncio.wait({task}, timeout=within)
    assert task in done, f"the poller was still running {within} s after stop()"
    task.result()


@pytest.mark.asyncio
async def test_a_polled_batch_is_relayed_at_once_each_chat_in_its_order(fake, js, application):
    counting = CountingJetStream(js)
    relay = Relay(application, counting)
    sent = [(user, f"mensagem {n} de {user}") for n in range(3) for user in range(101, 121)]
    update_ids = [write(fake, user, text) for user, text in sent]
    poller, task = await poll(application, relay)

    await until(lambda: fake.confirmed_offset > update_ids[-1])
    await stopped(poller, task)

    messages = await stored(js)
    assert sorted((int(m["contact_identifier"]), m["text"]) for m in messages) == sorted(sent)
    for user in range(101, 121):
        in_stream_order = [m["text"] for m in messages if m["contact_identifier"] == str(user)]
        assert in_stream_order == [f"mensagem {n} de {user}" for n in range(3)]
    assert counting.most == 20  # every chat's lane at once...
    assert counting.most_in_one_chat == 1  # ...and one message of a chat at a time
    assert not fake.pending_updates()


@pytest.mark.asyncio
async def test_the_offset_waits_for_a_refused_update_while_the_rest_of_the_batch_is_relayed(fake, js, application):
    relay = Relay(application, js)
    await refuse_long_messages(js, True)
    refused = write(fake, 201, TOO_LONG)
    behind = [write(fake, 202, "depois, na mesma conversa")]
    others = [write(fake, user, f"de {user}") for user in (203, 204, 205)]
    poller, task = await poll(application, relay)

    # The other chats' updates reach JetStream past the refused one; nothing is confirmed.
    await until(lambda: fake.deliveries(others[-1]) >= 1)
    assert {m["text"] for m in await until(lambda: _all_stored(js, 4))} == {
        "depois, na mesma conversa",
        "de 203",
        "de 204",
        "de 205",
    }
    await asyncio.sleep(2.5)  # a few tries of the refused update
    assert fake.confirmed_offset <= refused
    assert [u["update_id"] for u in fake.pending_updates()] == [refused, *behind, *others]

    await refuse_long_messages(js, False)
    await until(lambda: fake.confirmed_offset > others[-1])
    await stopped(poller, task)
    messages = await stored(js)
    assert len(messages) == 5 and messages[-1]["text"] == TOO_LONG  # each once
    assert not fake.pending_updates()


async def _all_stored(js: JetStreamContext, count: int) -> list[dict] | None:
    messages = await stored(js)
    return messages if len(messages) >= count else None


@pytest.mark.asyncio
async def test_a_chats_messages_wait_behind_its_refused_one(fake, js, application):
    relay = Relay(application, js)
    await refuse_long_messages(js, True)
    write(fake, 301, TOO_LONG)
    later = write(fake, 301, "segunda")
    poller, task = await poll(application, relay)
    await until(lambda: fake.deliveries(later) >= 1)
    await asyncio.sleep(1.5)

    assert await stored(js) == []  # "segunda" is not stored before the first

    await refuse_long_messages(js, False)
    await until(lambda: fake.confirmed_offset > later)
    await stopped(poller, task)
    assert [m["text"] for m in await stored(js)] == [TOO_LONG, "segunda"]


@pytest.mark.asyncio
async def test_stopped_while_an_update_waits_confirms_only_the_updates_before_it(fake, js, application):
    relay = Relay(application, js)
    await refuse_long_messages(js, True)
    first = write(fake, 401, "primeira")
    refused = write(fake, 402, TOO_LONG)
    after = write(fake, 403, "terceira")
    poller, task = await poll(application, relay)
    await until(lambda: _all_stored(js, 2))

    await stopped(poller, task)

    # "terceira" is in JetStream but comes again (de-duplicated there): only "primeira" is confirmed.
    assert fake.confirmed_offset == refused
    assert [u["update_id"] for u in fake.pending_updates()] == [refused, after]
    assert first < refused


@pytest.mark.asyncio
async def test_handle_says_whether_each_update_was_relayed_however_many_run_at_once(fake, js, application):
    relay = Relay(application, js, patience=0.5)
    await refuse_long_messages(js, True)
    write(fake, 501, TOO_LONG)
    write(fake, 502, "curta")
    long_update, short_update = await application.bot.get_updates(timeout=0)

    assert await asyncio.gather(relay.handle(long_update), relay.handle(short_update)) == [False, True]
    await refuse_long_messages(js, False)
    assert await relay.handle(long_update) is True  # the failure was that try's, not the update's for good
    assert sorted(m["text"] for m in await stored(js)) == sorted([TOO_LONG, "curta"])


@pytest.mark.asyncio
async def test_a_failing_get_updates_is_asked_again(fake, js, application):
    relay = Relay(application, js)
    fake.add_fault("getUpdates", 502, times=2)
    update_id = write(fake, 601, "olá")
    poller, task = await poll(application, relay)

    await until(lambda: fake.confirmed_offset > update_id, timeout=30)
    await stopped(poller, task)
    assert [m["text"] for m in await stored(js)] == ["olá"]


@pytest.mark.asyncio
async def test_one_try_waits_out_a_stream_without_a_leader(fake, js, application):
    """No stream answering (as while its leader is elected): the publish is tried again within the patience."""
    relay = Relay(application, js, patience=30.0)
    config = (await js.stream_info(INBOUND_STREAM)).config
    await js.delete_stream(INBOUND_STREAM)  # publishes get "no responders", as during an election
    write(fake, 701, "durante a eleição")
    (update,) = await application.bot.get_updates(timeout=0)

    handling = asyncio.create_task(relay.handle(update))
    await asyncio.sleep(1.5)  # a few publishes answered by no one
    assert not handling.done()
    await js.add_stream(config=config)

    assert await asyncio.wait_for(handling, 30) is True
    assert [m["text"] for m in await stored(js)] == ["durante a eleição"]


@pytest.mark.asyncio
async def test_what_is_not_a_contacts_message_is_answered_or_left_and_confirmed_without_storing(fake, js, application):
    relay = Relay(application, js)
    write(fake, 801, "/start")
    fake.register_user(id=802, first_name="Contato 802", started=True)
    dice = {"message_id": 1, "date": 1, "chat": {"id": 802, "type": "private"}, "dice": {"emoji": "🎲", "value": 3}}
    fake.inject_update({"message": {**dice, "from": {"id": 802, "is_bot": False, "first_name": "Contato 802"}}})
    fake.inject_message({"id": 803, "first_name": "Contato 803"}, "num grupo", chat_id=-803)
    fake.inject_message({"id": 805, "first_name": "Contato 805"}, kind="sticker")
    text = write(fake, 804, "uma pergunta")
    poller, task = await poll(application, relay)

    await until(lambda: fake.confirmed_offset > text)
    await until(lambda: fake.sent(801) and fake.sent(802))
    await stopped(poller, task)
    assert [m["text"] for m in fake.sent(801)] == [WELCOME]
    assert [m["text"] for m in fake.sent(802)] == [ONLY_TEXT]  # a dice: nothing Balcão keeps
    assert fake.sent(-803) == []  # a group is not a contact's chat
    relayed = {m["contact_identifier"]: m for m in await stored(js)}
    assert set(relayed) == {"804", "805"}
    assert relayed["804"]["text"] == "uma pergunta"
    assert relayed["805"]["kind"] == "sticker" and relayed["805"]["file"]["available"] is True


@pytest.mark.asyncio
async def test_telegram_asking_to_wait_is_waited_before_polling_again(fake, js, application):
    relay = Relay(application, js)
    fake.add_fault("getUpdates", 429, retry_after=3)
    update_id = write(fake, 901, "olá")
    loop = asyncio.get_running_loop()
    began = loop.time()
    poller, task = await poll(application, relay)

    await until(lambda: fake.confirmed_offset > update_id, timeout=30)
    await stopped(poller, task)
    assert loop.time() - began >= 3.0  # not the 1 s of an ordinary failed poll
    assert [m["text"] for m in await stored(js)] == ["olá"]


@pytest.mark.asyncio
async def test_stopping_ends_a_long_wait_asked_by_telegram(fake, js, application):
    relay = Relay(application, js)
    fake.add_fault("getUpdates", 429, retry_after=120)
    poller, task = await poll(application, relay)
    await until(lambda: not fake.state.faults)  # the 429 was answered: the poller waits

    await stopped(poller, task, within=30)  # well before the 120 s asked
