"""The fake Bot API, driven over real HTTP and through python-telegram-bot's own client."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import telegram
import tornado.httpserver
import tornado.netutil
import tornado.web
from telegram.error import BadRequest, ChatMigrated, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter

from devstack.certificates import make_server_certificate
from devstack.faketelegram import ControlError, FakeTelegram, FloodControl, FloodLimits
from devstack.faketelegram.entities import visible_text
from tests.devstack.conftest import ANA, CHANNEL_ID, TOKEN, api, inject

ROOT = Path(__file__).resolve().parents[2]


# -- basics ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_me_describes_the_bot(fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    assert fake.base_url == f"http://127.0.0.1:{fake.port}" and fake.port > 0
    assert (bot.id, bot.username, bot.bot.is_bot) == (123456, "balcao_test_bot", True)
    raw = (await http.get(f"/bot{TOKEN}/getMe")).json()
    assert raw["ok"] is True and raw["result"]["can_join_groups"] is True


@pytest.mark.asyncio
async def test_wrong_token_is_unauthorized(fake: FakeTelegram, http: httpx.AsyncClient) -> None:
    response = await http.post("/bot999:WRONG/getMe")
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    with pytest.raises(InvalidToken):
        async with telegram.Bot("999:WRONG", base_url=f"{fake.base_url}/bot"):
            pass


@pytest.mark.asyncio
async def test_unknown_method_is_not_found(http: httpx.AsyncClient) -> None:
    response = await api(http, "sendTelepathy")
    assert response.status_code == 404
    assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    # Method names are case-insensitive on Telegram.
    assert (await api(http, "GETME")).json()["ok"] is True


@pytest.mark.parametrize("encoding", ["query", "form", "json", "multipart"])
@pytest.mark.asyncio
async def test_parameters_arrive_in_every_encoding(fake: FakeTelegram, http: httpx.AsyncClient, encoding: str) -> None:
    fake.register_user(id=77, first_name="Bia")
    params = {"chat_id": "77", "text": f"olá via {encoding}"}
    url = f"/bot{TOKEN}/sendMessage"
    requests = {
        "query": lambda: http.get(url, params=params),
        "form": lambda: http.post(url, data=params),
        "json": lambda: http.post(url, json={**params, "chat_id": 77}),
        "multipart": lambda: http.post(url, data=params, files={"unused": ("a.txt", b"x")}),
    }
    response = await requests[encoding]()
    assert response.status_code == 200, response.text
    assert [message["text"] for message in fake.sent(77)] == [f"olá via {encoding}"]


# -- getUpdates -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_offset_confirms_earlier_updates(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    ids = [(await inject(http, text))["update_id"] for text in ("um", "dois", "três")]

    first = await bot.get_updates()
    assert [update.update_id for update in first] == ids
    assert [update.message.text for update in first] == ["um", "dois", "três"]
    # Receiving is not confirming: the same updates come again.
    assert [update.update_id for update in await bot.get_updates(limit=2)] == ids[:2]

    again = await bot.get_updates(offset=ids[1])
    assert [update.update_id for update in again] == ids[1:]
    pending = (await http.get("/_test/updates/pending")).json()["updates"]
    assert [update["update_id"] for update in pending] == ids[1:]
    assert (await http.get("/_test/confirmed_offset")).json() == {"confirmed_offset": ids[1]}

    assert await bot.get_updates(offset=ids[2] + 1) == ()
    assert (await http.get("/_test/updates/pending")).json()["updates"] == []


@pytest.mark.asyncio
async def test_negative_offset_keeps_only_the_last_updates(fake: FakeTelegram, bot: telegram.Bot) -> None:
    ids = [fake.inject_message(ANA, text)["update_id"] for text in ("a", "b", "c")]
    assert [update.update_id for update in await bot.get_updates(offset=-1)] == [ids[2]]
    assert [update["update_id"] for update in fake.pending_updates()] == [ids[2]]


@pytest.mark.asyncio
async def test_long_poll_returns_as_soon_as_a_message_arrives(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.2)
    assert not poll.done()
    injected = await inject(http, "oi")
    updates = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - started < 2
    assert [update.update_id for update in updates] == [injected["update_id"]]
    assert updates[0].message.message_id == injected["message_id"]


@pytest.mark.asyncio
async def test_long_poll_answers_empty_after_its_timeout(bot: telegram.Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert 0.9 <= time.monotonic() - started < 2


@pytest.mark.asyncio
async def test_a_newer_get_updates_terminates_the_older_one(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.2)
    newer = await api(http, "getUpdates", timeout=0)
    assert newer.json() == {"ok": True, "result": []}
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(older, 2)


# -- sendMessage ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_message_to_a_user_returns_a_private_chat_message(
    bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    injected = await inject(http, "/start")
    reply = await bot.send_message(
        chat_id=ANA["id"], text="Olá, Ana!", parse_mode="HTML", reply_to_message_id=injected["message_id"]
    )
    assert reply.message_id == injected["message_id"] + 1
    assert reply.chat.type == "private"
    assert (reply.chat.id, reply.chat.first_name, reply.chat.username) == (5001, "Ana", "anasouza")
    assert reply.from_user is not None and reply.from_user.id == bot.id
    assert reply.text == "Olá, Ana!"
    assert abs(reply.date.timestamp() - time.time()) < 5

    sent = (await http.get("/_test/sent", params={"chat_id": "5001"})).json()["messages"]
    assert [message["text"] for message in sent] == ["Olá, Ana!"]
    assert (await http.get("/_test/sent", params={"chat_id": "42"})).json()["messages"] == []


@pytest.mark.asyncio
async def test_send_message_to_a_channel_by_username_and_by_id(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    registered = await http.post(
        "/_test/channels", json={"username": "@balcao_news", "id": CHANNEL_ID, "title": "Balcão"}
    )
    assert registered.json() == {"id": CHANNEL_ID, "type": "channel", "title": "Balcão", "username": "balcao_news"}

    by_name = await bot.send_message(chat_id="@balcao_news", text="Importação concluída")
    by_id = await bot.send_message(chat_id=CHANNEL_ID, text="Outra")
    assert by_name.chat.type == by_id.chat.type == "channel"
    assert by_name.chat.id == by_id.chat.id == CHANNEL_ID
    assert (by_name.message_id, by_id.message_id) == (1, 2)
    assert by_name.sender_chat is not None and by_name.sender_chat.id == CHANNEL_ID

    for query in ("@balcao_news", str(CHANNEL_ID)):
        sent = (await http.get("/_test/sent", params={"chat_id": query})).json()["messages"]
        assert [message["text"] for message in sent] == ["Importação concluída", "Outra"]


@pytest.mark.asyncio
async def test_unknown_chats_are_not_found(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    for chat_id in (999, "@nobody_here", -1009999999999):
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(chat_id=chat_id, text="oi")
    response = await api(http, "sendMessage", chat_id=999, text="oi")
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    assert (await http.get("/_test/sent")).json()["messages"] == []


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("", "Bad Request: message text is empty"),
        ("   ", "Bad Request: message text is empty"),
        ("x" * 4097, "Bad Request: message is too long"),
    ],
)
@pytest.mark.asyncio
async def test_message_text_is_validated(
    fake: FakeTelegram, http: httpx.AsyncClient, text: str, description: str
) -> None:
    fake.register_user(**ANA)
    response = await api(http, "sendMessage", chat_id=ANA["id"], text=text)
    assert (response.status_code, response.json()["description"]) == (400, description)
    assert (await api(http, "sendMessage", chat_id=ANA["id"], text="x" * 4096)).status_code == 200


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_forbidden_fault_fails_once_for_that_chat(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    fake.register_user(**ANA)
    fake.register_user(id=6002, first_name="Caio")
    armed = await http.post("/_test/faults", json={"method": "sendMessage", "chat_id": ANA["id"], "error_code": 403})
    assert armed.status_code == 200, armed.text

    await bot.send_message(chat_id=6002, text="outro chat não é afetado")
    with pytest.raises(Forbidden, match="(?i)bot was blocked by the user"):
        await bot.send_message(chat_id=ANA["id"], text="primeira")
    await bot.send_message(chat_id=ANA["id"], text="segunda")

    attempts = (await http.get("/_test/attempts", params={"chat_id": ANA["id"]})).json()["attempts"]
    assert [(a["method"], a["text"], a["status"]) for a in attempts] == [
        ("sendMessage", "primeira", 403),
        ("sendMessage", "segunda", 200),
    ]
    assert [message["text"] for message in fake.sent(ANA["id"])] == ["segunda"]


@pytest.mark.asyncio
async def test_flood_fault_carries_retry_after(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    fake.register_channel(username="@avisos", title="Avisos")
    fake.add_fault("sendMessage", 429, chat_id="@avisos", retry_after=1)

    raw = await api(http, "sendMessage", chat_id="@avisos", text="cedo demais")
    assert raw.status_code == 429
    assert raw.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }

    fake.add_fault("sendMessage", 429, chat_id="@avisos", retry_after=1)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(chat_id="@avisos", text="anúncio")
    assert caught.value.retry_after == dtm.timedelta(seconds=1)
    await asyncio.sleep(1)
    await bot.send_message(chat_id="@avisos", text="anúncio")

    attempts = fake.attempts("@avisos")
    assert [a["status"] for a in attempts] == [429, 429, 200]
    assert attempts[2]["at"] - attempts[1]["at"] >= 1


@pytest.mark.asyncio
async def test_lasting_faults_until_cleared(fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    fake.register_user(**ANA)
    fake.add_fault("sendMessage", 400, times=-1)
    fake.add_fault("getMe", 500, description="Internal Server Error: restarting")
    for _ in range(3):
        with pytest.raises(BadRequest, match="(?i)chat not found"):
            await bot.send_message(chat_id=ANA["id"], text="oi")
    with pytest.raises(NetworkError, match="restarting"):
        await bot.get_me()

    assert (await http.delete("/_test/faults")).status_code == 200
    assert (await bot.send_message(chat_id=ANA["id"], text="oi")).text == "oi"
    assert (await bot.get_me()).username == "balcao_test_bot"


# -- webhook --------------------------------------------------------------------------------


class _Receiver(tornado.web.RequestHandler):
    """A bot's webhook endpoint that fails its first request."""

    def initialize(self, received: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.received = received

    def post(self) -> None:
        self.received.append(
            (self.request.headers.get("X-Telegram-Bot-Api-Secret-Token"), json.loads(self.request.body))
        )
        self.set_status(500 if len(self.received) == 1 else 200)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str | None, dict[str, Any]]]]]:
    received: list[tuple[str | None, dict[str, Any]]] = []
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/hook", _Receiver, {"received": received})]))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hook", received
    server.stop()
    await server.close_all_connections()


async def wait_until(check: Any, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_webhook_receives_updates_in_order_with_the_secret(
    fake: FakeTelegram, bot: telegram.Bot, receiver: tuple[str, list[tuple[str | None, dict[str, Any]]]]
) -> None:
    url, received = receiver
    assert await bot.set_webhook(url, secret_token="s3cr3t-token")
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()

    first = fake.inject_message(ANA, "um")["update_id"]
    second = fake.inject_message(ANA, "dois")["update_id"]
    await wait_until(lambda: len(received) == 3)

    # The first POST got a 500, so the same update came again before the next one.
    assert [body["update_id"] for _, body in received] == [first, first, second]
    assert {secret for secret, _ in received} == {"s3cr3t-token"}
    info = await bot.get_webhook_info()
    assert (info.url, info.pending_update_count) == (url, 0)
    assert info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"

    assert await bot.delete_webhook()
    third = fake.inject_message(ANA, "três")["update_id"]
    assert [update.update_id for update in await bot.get_updates()] == [third]


# -- test controls --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reset_forgets_everything_but_update_ids_keep_growing(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    before = (await inject(http, "antes"))["update_id"]
    fake.add_fault("sendMessage", 403, times=-1)
    assert (await http.post("/_test/reset")).json() == {"ok": True}

    assert fake.pending_updates() == [] and fake.sent() == [] and fake.attempts() == []
    with pytest.raises(BadRequest, match="(?i)chat not found"):
        await bot.send_message(chat_id=ANA["id"], text="oi")
    after = (await inject(http, "depois"))["update_id"]
    assert after > before
    assert (await bot.send_message(chat_id=ANA["id"], text="oi")).text == "oi"


@pytest.mark.asyncio
async def test_raw_updates_are_queued_verbatim(bot: telegram.Bot, http: httpx.AsyncClient) -> None:
    injected = await inject(http, "duplicada")
    original = (await http.get("/_test/updates/pending")).json()["updates"][0]
    again = await http.post("/_test/updates", json={"update": original})
    assert again.json() == {"update_id": injected["update_id"]}
    numbered = await http.post("/_test/updates", json={"update": {"message": original["message"]}})
    assert numbered.json()["update_id"] == injected["update_id"] + 1

    updates = await bot.get_updates()
    assert [update.update_id for update in updates] == [injected["update_id"]] * 2 + [injected["update_id"] + 1]
    assert {update.message.message_id for update in updates} == {injected["message_id"]}


@pytest.mark.asyncio
async def test_injected_media_and_commands_parse_as_telegram_objects(fake: FakeTelegram, bot: telegram.Bot) -> None:
    fake.inject_message(ANA, "/start@balcao_test_bot olá")
    fake.inject_message(ANA, "legenda", kind="photo")
    fake.inject_message(ANA, kind="sticker")
    command, photo, sticker = [update.message for update in await bot.get_updates()]
    assert command.entities[0].type == "bot_command"
    assert command.parse_entity(command.entities[0]) == "/start@balcao_test_bot"
    assert photo.photo and photo.caption == "legenda" and photo.text is None
    assert sticker.sticker is not None and sticker.sticker.emoji == "👍"
    assert [message.message_id for message in (command, photo, sticker)] == [1, 2, 3]


@pytest.mark.asyncio
async def test_allowed_updates_decide_what_is_queued(fake: FakeTelegram, bot: telegram.Bot) -> None:
    reaction = {"message_reaction": {"chat": {"id": 1, "type": "private"}, "message_id": 1}}
    edit = {"edited_message": {"message_id": 1}}
    fake.inject_update(reaction)
    fake.inject_update(edit)
    # By default Telegram leaves reactions out unless the bot asks for them.
    assert [list(update)[1] for update in fake.pending_updates()] == ["edited_message"]

    await bot.get_updates(offset=fake.pending_updates()[0]["update_id"] + 1, allowed_updates=["message_reaction"])
    fake.inject_update(reaction)
    fake.inject_update(edit)
    assert [list(update)[1] for update in fake.pending_updates()] == ["message_reaction"]


@pytest.mark.asyncio
async def test_registered_users_and_groups_can_be_messaged(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    created = await http.post("/_test/users", json={"id": 7007, "first_name": "Rui"})
    assert created.json() == {"id": 7007, "is_bot": False, "first_name": "Rui"}
    assert (await bot.send_message(chat_id="7007", text="oi")).chat.first_name == "Rui"

    fake.inject_message(ANA, "olá, grupo", chat_id=-4001)
    (update,) = await bot.get_updates()
    assert (update.message.chat.type, update.message.from_user.id) == ("group", ANA["id"])
    assert (await bot.send_message(chat_id=-4001, text="oi, grupo")).chat.type == "group"


@pytest.mark.asyncio
async def test_unrelated_paths_are_not_found(http: httpx.AsyncClient) -> None:
    response = await http.get("/favicon.ico")
    assert (response.status_code, response.json()["description"]) == (404, "Not Found")


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/_test/messages", {"text": "sem usuário"}, "message lacks user"),
        ("/_test/messages", {"user": {"id": 1}, "text": "oi"}, "user lacks first_name"),
        ("/_test/messages", {"user": ANA, "kind": "poll"}, "kind must be one of text, photo, document, voice"),
        ("/_test/faults", {"method": "sendMessage", "error_code": 200}, "error_code must be between"),
        ("/_test/channels", {"title": "sem nome"}, "a channel needs a username or an id"),
    ],
)
@pytest.mark.asyncio
async def test_control_endpoints_reject_bad_input(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], error: str
) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error)


def test_runs_standalone_and_logs_its_address() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.faketelegram", "--port", "0", "--token", TOKEN],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line
        base_url = line.rsplit(" ", 1)[1].strip()
        response = httpx.get(f"{base_url}/bot{TOKEN}/getMe", timeout=5)
        assert response.json()["result"]["username"] == "balcao_test_bot"
    finally:
        process.terminate()
        assert process.wait(5) == 0
        assert process.stderr is not None
        process.stderr.close()


def test_serves_https_with_a_certificate_its_clients_are_told_to_trust(tmp_path: Path) -> None:
    """As a bot in a container reaches it: over the network, so over TLS, as Telegram itself."""
    certificate = make_server_certificate(tmp_path, ["localhost"], ["127.0.0.1"])
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.faketelegram", "--port", "0", "--token", TOKEN,
         "--tls-cert", str(certificate.chain), "--tls-key", str(certificate.key)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening on https://127.0.0.1:" in line, line
        base_url = line.rsplit(" ", 1)[1].strip()
        trust = ssl.create_default_context(cafile=certificate.authority)
        trusted = httpx.get(f"{base_url}/bot{TOKEN}/getMe", timeout=5, verify=trust)
        assert trusted.json()["result"]["username"] == "balcao_test_bot"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base_url}/bot{TOKEN}/getMe", timeout=5)  # the system's authorities do not know it
    finally:
        process.terminate()
        assert process.wait(5) == 0
        assert process.stderr is not None
        process.stderr.close()


# -- behaving like Telegram: redelivery, flood control, refusals ----------------------------


@pytest.mark.asyncio
async def test_unconfirmed_update_comes_again_with_the_same_update_id(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    injected = await inject(http, "ainda aqui?")
    first = await bot.get_updates()
    # A poller that died before confirming: the next poll (a restarted bot) sees it again.
    second = await bot.get_updates()
    assert [update.update_id for update in first] == [injected["update_id"]]
    assert [update.update_id for update in second] == [injected["update_id"]]
    assert second[0].message.message_id == injected["message_id"]
    deliveries = await http.get(f"/_test/updates/{injected['update_id']}/deliveries")
    assert deliveries.json() == {"update_id": injected["update_id"], "deliveries": 2}


@pytest.mark.asyncio
async def test_confirmed_update_never_comes_again(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    injected = await inject(http, "uma vez")
    await bot.get_updates()
    assert await bot.get_updates(offset=injected["update_id"] + 1) == ()
    # Not with an older offset, nor without one.
    assert await bot.get_updates(offset=injected["update_id"]) == ()
    assert await bot.get_updates() == ()
    assert fake.deliveries(injected["update_id"]) == 1


def test_unconfirmed_updates_expire_after_a_day(fake: FakeTelegram, monkeypatch) -> None:
    old = fake.inject_message(ANA, "velha")["update_id"]
    monkeypatch.setattr(time, "monotonic", lambda: time.monotonic_ns() / 1e9 + 25 * 3600)
    new = fake.inject_message(ANA, "nova")["update_id"]
    fake.state.forget_expired()
    assert [update["update_id"] for update in fake.pending_updates()] == [new]
    assert old < new


def flood(limits: FloodLimits | None = None):

    now = [1000.0]
    control = FloodControl(limits or FloodLimits(), clock=lambda: now[0])
    return control, now


def admitted(control, chat: dict, count: int) -> int:
    from devstack.faketelegram import ApiError

    done = 0
    for _ in range(count):
        try:
            control.admit(chat)
        except ApiError:
            break
        done += 1
    return done


def test_private_chat_gets_a_short_burst_then_one_message_a_second() -> None:
    control, now = flood()
    chat = {"id": 5001, "type": "private"}
    assert admitted(control, chat, 10) == 3  # the burst
    now[0] += 1.0
    assert admitted(control, chat, 10) == 1
    now[0] += 5.0
    assert admitted(control, chat, 10) == 3  # refilled, never beyond the burst
    for _ in range(20):  # sustained: one a second
        now[0] += 1.0
        assert admitted(control, chat, 2) == 1


def test_group_or_channel_gets_twenty_a_minute() -> None:
    control, now = flood()
    channel = {"id": CHANNEL_ID, "type": "channel"}
    assert admitted(control, channel, 30) == 20
    now[0] += 3.0
    assert admitted(control, channel, 5) == 1
    now[0] += 60.0
    assert admitted(control, channel, 30) == 20


def test_bot_sends_about_thirty_a_second_across_chats() -> None:
    control, now = flood()
    chats = [{"id": 7000 + n, "type": "private"} for n in range(100)]
    sent = sum(admitted(control, chat, 1) for chat in chats)
    assert sent == 30
    total = 0
    for _ in range(10):
        now[0] += 0.1
        total += sum(admitted(control, chat, 1) for chat in chats)
    assert total == 30  # one more second: 30 more, whatever the number of chats


def test_bot_gets_thirty_sends_in_any_rolling_second_and_no_more() -> None:
    control, now = flood()
    chats = iter({"id": 9000 + n, "type": "private"} for n in range(1000))
    start = now[0]
    for n in range(30):  # paced at exactly 30 a second
        now[0] = start + n / 30
        assert admitted(control, next(chats), 1) == 1
    now[0] = start + 0.99  # a send that lands early: 31 in one rolling second
    assert admitted(control, next(chats), 1) == 0
    now[0] = start + 1.0  # the first send is a second old
    assert admitted(control, next(chats), 1) == 1
    # Idle time saves nothing up: 30 at once, then nothing until the first is a second old.
    now[0] += 10.0
    burst_start = now[0]
    assert sum(admitted(control, next(chats), 1) for _ in range(40)) == 30
    now[0] = burst_start + 0.5
    assert sum(admitted(control, next(chats), 1) for _ in range(40)) == 0
    now[0] = burst_start + 1.0
    assert sum(admitted(control, next(chats), 1) for _ in range(40)) == 30


def test_a_429_from_the_rolling_second_says_when_the_oldest_send_leaves_it() -> None:
    from devstack.faketelegram import ApiError

    control, now = flood()
    for n in range(30):
        control.admit({"id": 9500 + n, "type": "private"})
    now[0] += 0.2
    with pytest.raises(ApiError) as refused:
        control.admit({"id": 9600, "type": "private"})
    assert refused.value.retry_after == 1  # 0.8 s, in Telegram's whole seconds


@pytest.mark.asyncio
async def test_flood_control_answers_429_with_retry_after(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    fake.register_user(**ANA)
    for n in range(3):
        await bot.send_message(ANA["id"], f"rajada {n}")
    response = await api(http, "sendMessage", chat_id=ANA["id"], text="demais")
    assert response.status_code == 429
    body = response.json()
    assert body["ok"] is False and body["error_code"] == 429
    retry_after = body["parameters"]["retry_after"]
    assert isinstance(retry_after, int) and retry_after >= 1
    assert body["description"] == f"Too Many Requests: retry after {retry_after}"
    with pytest.raises(RetryAfter):
        await bot.send_message(ANA["id"], "ainda demais")
    assert len(fake.sent(ANA["id"])) == 3
    stats = (await http.get("/_test/stats")).json()
    assert stats["by_status"]["429"] == 2 and stats["flood_control"] is True  # getMe is a 200 too


@pytest.mark.asyncio
async def test_flood_control_can_be_turned_off_and_reset_turns_it_on(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/_test/flood_control")).json() == {"enabled": True}
    assert (await http.post("/_test/flood_control", json={"enabled": False})).status_code == 200
    fake.register_user(**ANA)
    for n in range(10):
        await bot.send_message(ANA["id"], f"sem limite {n}")
    await http.post("/_test/reset")
    assert (await http.get("/_test/flood_control")).json() == {"enabled": True}
    bad = await http.post("/_test/flood_control", json={"enabled": "no"})
    assert bad.status_code == 400


@pytest.mark.asyncio
async def test_user_who_never_wrote_cannot_be_messaged(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    response = await http.post("/_test/users", json={**ANA, "started": False})
    assert response.status_code == 200
    with pytest.raises(Forbidden, match="(?i)bot can.t initiate conversation with a user"):
        await bot.send_message(ANA["id"], "olá?")
    body = (await api(http, "sendMessage", chat_id=ANA["id"], text="olá?")).json()
    assert body == {
        "ok": False,
        "error_code": 403,
        "description": "Forbidden: bot can't initiate conversation with a user",
    }
    # Once the user writes, the bot may answer.
    await inject(http, "oi")
    await bot.send_message(ANA["id"], "olá!")
    assert [message["text"] for message in fake.sent(ANA["id"])] == ["olá!"]


@pytest.mark.asyncio
async def test_user_who_blocked_the_bot_gets_nothing(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    await inject(http, "oi")
    await http.post("/_test/users", json={**ANA, "blocked": True})
    with pytest.raises(Forbidden, match="(?i)bot was blocked by the user"):
        await bot.send_message(ANA["id"], "volte!")
    body = (await api(http, "sendMessage", chat_id=ANA["id"], text="volte!")).json()
    assert body["error_code"] == 403 and body["description"] == "Forbidden: bot was blocked by the user"
    assert fake.sent(ANA["id"]) == []


@pytest.mark.asyncio
async def test_channel_without_admin_rights_refuses_posts(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    response = await http.post("/_test/channels", json={"username": "semadmin", "admin": False})
    assert response.status_code == 200
    with pytest.raises(BadRequest, match="(?i)need administrator rights in the channel chat"):
        await bot.send_message("@semadmin", "anúncio")
    body = (await api(http, "sendMessage", chat_id="@semadmin", text="anúncio")).json()
    assert body == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: need administrator rights in the channel chat",
    }
    await http.post("/_test/channels", json={"username": "semadmin", "admin": True})
    await bot.send_message("@semadmin", "anúncio")
    assert len(fake.sent("@semadmin")) == 1


# -- message text as Telegram counts it -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parse_mode", "status"),
    [
        # UTF-16 code units: an emoji outside the BMP counts two.
        ("😀" * 2048, None, 200),
        ("😀" * 2048 + "x", None, 400),
        ("ç" * 4096, None, 200),
        # After entities parsing: markup is not counted, escapes count once.
        ("<b>" + "x" * 4096 + "</b>", "HTML", 200),
        ("&lt;" * 4096, "HTML", 200),
        ("&lt;" * 4097, "HTML", 400),
        ("\\." * 4096, "MarkdownV2", 200),
        ("*" + "x" * 4097 + "*", "MarkdownV2", 400),
    ],
)
@pytest.mark.asyncio
async def test_message_text_limit_counts_utf16_units_after_markup(
    fake: FakeTelegram, http: httpx.AsyncClient, text: str, parse_mode: str | None, status: int
) -> None:
    fake.register_user(**ANA)
    params = {"chat_id": ANA["id"], "text": text, **({"parse_mode": parse_mode} if parse_mode else {})}
    response = await api(http, "sendMessage", **params)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["description"] == "Bad Request: message is too long"


@pytest.mark.parametrize(
    ("text", "parse_mode", "shown"),
    [
        ("<b>negrito</b> &amp; <a href='x'>link</a>", "HTML", "negrito & link"),
        ("*negrito* _itálico_ [link](http://x.y/(a\\)) \\*", "MarkdownV2", "negrito itálico link *"),
        ("```python\nprint(1)\n``` ||spoiler|| ~riscado~", "MarkdownV2", "print(1)\n spoiler riscado"),
        (">citação\n>linha", "MarkdownV2", "citação\nlinha"),
        ("*a* _b_ `c` \\_", "Markdown", "a b c _"),
        ("<b>nada</b> *muda*", None, "<b>nada</b> *muda*"),
    ],
)
def test_visible_text_is_what_a_reader_sees(text: str, parse_mode: str | None, shown: str) -> None:
    assert visible_text(text, parse_mode) == shown


@pytest.mark.asyncio
async def test_text_of_markup_alone_is_empty(fake: FakeTelegram, http: httpx.AsyncClient) -> None:
    fake.register_user(**ANA)
    response = await api(http, "sendMessage", chat_id=ANA["id"], text="<b> </b>", parse_mode="HTML")
    assert response.json()["description"] == "Bad Request: message text is empty"


# -- edits ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_edit_comes_as_edited_message_with_the_same_message_id(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    sent = await inject(http, "pedido 123")
    edit = await http.post(
        "/_test/edits", json={"chat_id": ANA["id"], "message_id": sent["message_id"], "text": "pedido 124"}
    )
    assert edit.status_code == 200, edit.text
    assert edit.json()["update_id"] == sent["update_id"] + 1
    again = fake.edit_message(ANA["id"], sent["message_id"], "/start pedido 125")

    original, first, second = await bot.get_updates()
    assert original.message.text == "pedido 123" and original.edited_message is None
    assert first.message is None and first.edited_message.text == "pedido 124"
    assert second.edited_message.text == "/start pedido 125"
    assert second.edited_message.entities[0].type == "bot_command"
    for update in (first, second):
        edited = update.edited_message
        assert edited.message_id == sent["message_id"] and edited.chat.id == ANA["id"]
        assert edited.edit_date is not None and edited.edit_date >= original.message.date
        assert edited.from_user.id == ANA["id"]
    assert second.update_id == again["update_id"]


@pytest.mark.asyncio
async def test_an_edit_changes_a_caption_and_only_what_can_be_edited(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    photo = fake.inject_message(ANA, "recibo", kind="photo")
    sticker = fake.inject_message(ANA, kind="sticker")
    fake.edit_message(ANA["id"], photo["message_id"], "recibo de março")
    fake.edit_message(ANA["id"], photo["message_id"], None)
    _, _, captioned, uncaptioned = await bot.get_updates()
    assert captioned.edited_message.caption == "recibo de março"
    assert captioned.edited_message.photo[-1].file_id == photo["file"]["file_id"]
    assert uncaptioned.edited_message.caption is None and uncaptioned.edited_message.photo

    for body, error in (
        ({"chat_id": ANA["id"], "message_id": sticker["message_id"], "text": "x"}, "a sticker message has no text"),
        ({"chat_id": ANA["id"], "message_id": 999, "text": "x"}, "no message 999 from a contact"),
        ({"chat_id": ANA["id"], "message_id": photo["message_id"], "text": 5}, "text (the caption) must be"),
    ):
        response = await http.post("/_test/edits", json=body)
        assert response.status_code == 400 and response.json()["error"].startswith(error), response.text


@pytest.mark.asyncio
async def test_an_edit_storm_comes_in_order_each_from_the_last_version(fake: FakeTelegram, bot: telegram.Bot) -> None:
    sent = fake.inject_message(ANA, "versão 0")
    edits = [fake.edit_message(ANA["id"], sent["message_id"], f"versão {n}") for n in range(1, 100)]
    updates = await bot.get_updates(offset=sent["update_id"] + 1, limit=100)
    assert [update.update_id for update in updates] == [edit["update_id"] for edit in edits]
    assert [update.edited_message.text for update in updates] == [f"versão {n}" for n in range(1, 100)]
    assert {update.edited_message.message_id for update in updates} == {sent["message_id"]}


@pytest.mark.asyncio
async def test_edits_obey_allowed_updates(fake: FakeTelegram, bot: telegram.Bot) -> None:
    first = fake.inject_message(ANA, "oi")
    await bot.get_updates(offset=first["update_id"] + 1, allowed_updates=["message"])
    fake.edit_message(ANA["id"], first["message_id"], "olá")
    later = fake.inject_message(ANA, "tudo bem?")
    assert [update.update_id for update in await bot.get_updates()] == [later["update_id"]]

    await bot.get_updates(offset=later["update_id"] + 1, allowed_updates=["message", "edited_message"])
    edit = fake.edit_message(ANA["id"], first["message_id"], "olá!")
    (update,) = await bot.get_updates()
    assert (update.update_id, update.edited_message.text) == (edit["update_id"], "olá!")


@pytest.mark.asyncio
async def test_edits_reach_the_webhook(
    fake: FakeTelegram, bot: telegram.Bot, receiver: tuple[str, list[tuple[str | None, dict[str, Any]]]]
) -> None:
    url, received = receiver
    sent = fake.inject_message(ANA, "primeira versão")
    assert await bot.set_webhook(url)
    edit = fake.edit_message(ANA["id"], sent["message_id"], "segunda versão")
    # The receiver fails its first POST, so the message comes twice, then the edit.
    await wait_until(lambda: len(received) == 3)
    assert [body["update_id"] for _, body in received] == [sent["update_id"], sent["update_id"], edit["update_id"]]
    assert received[2][1]["edited_message"]["text"] == "segunda versão"


# -- refusals for every send method ---------------------------------------------------------

PNG_1X1 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


def send_by(bot: telegram.Bot, method: str, chat_id: int | str) -> Any:
    """A send of each kind the fake takes, as python-telegram-bot makes it."""
    if method == "sendPhoto":
        return bot.send_photo(chat_id, photo=PNG_1X1, caption="foto")
    if method == "sendDocument":
        return bot.send_document(chat_id, document=b"conteudo", filename="nota.txt")
    return bot.send_message(chat_id, "texto")


SEND_METHODS = ["sendMessage", "sendPhoto", "sendDocument"]


@pytest.mark.parametrize("method", SEND_METHODS)
@pytest.mark.asyncio
async def test_every_send_method_meets_a_user_who_blocked_the_bot(
    fake: FakeTelegram, bot: telegram.Bot, method: str
) -> None:
    fake.register_user(**ANA, blocked=True)
    with pytest.raises(Forbidden, match="(?i)bot was blocked by the user"):
        await send_by(bot, method, ANA["id"])
    fake.register_user(id=6002, first_name="Caio", started=False)
    with pytest.raises(Forbidden, match="(?i)bot can.t initiate conversation with a user"):
        await send_by(bot, method, 6002)
    assert fake.sent() == []
    assert [(a["method"], a["status"]) for a in fake.attempts() if a["method"] != "getMe"] == [(method, 403)] * 2


@pytest.mark.parametrize("method", SEND_METHODS)
@pytest.mark.asyncio
async def test_every_send_method_meets_a_group_that_became_a_supergroup(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient, method: str
) -> None:
    assert (await http.post("/_test/groups", json={"id": -4001, "title": "Suporte"})).status_code == 200
    await send_by(bot, method, -4001)
    migrated = await http.post("/_test/groups/-4001/migrate", json={})
    assert migrated.status_code == 200, migrated.text
    supergroup = migrated.json()
    assert supergroup["type"] == "supergroup" and str(supergroup["id"]).startswith("-100")

    with pytest.raises(ChatMigrated) as caught:
        await send_by(bot, method, -4001)
    assert caught.value.new_chat_id == supergroup["id"]
    raw = await api(http, "sendMessage", chat_id=-4001, text="ainda aí?")
    assert raw.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": supergroup["id"]},
    }
    # The new id takes the posts.
    moved = await send_by(bot, method, supergroup["id"])
    assert (moved.chat.id, moved.chat.type, moved.chat.title) == (supergroup["id"], "supergroup", "Suporte")
    assert len(fake.sent(supergroup["id"])) == 1 and len(fake.sent(-4001)) == 1


@pytest.mark.asyncio
async def test_a_migration_tells_both_chats(fake: FakeTelegram, bot: telegram.Bot) -> None:
    fake.register_group(-4002, "Vendas")
    supergroup = fake.migrate_group(-4002, to_chat_id=-1009000000001)
    old, new = [update.message for update in await bot.get_updates()]
    assert (old.chat.id, old.migrate_to_chat_id) == (-4002, -1009000000001)
    assert (new.chat.id, new.chat.type, new.migrate_from_chat_id) == (supergroup["id"], "supergroup", -4002)
    with pytest.raises(ControlError, match="is not a group the fake knows"):
        fake.migrate_group(-4002)
    with pytest.raises(ControlError, match="became supergroup"):
        fake.inject_message(ANA, "oi", chat_id=-4002)


# -- polling what was sent ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sent_and_stats_answer_from_what_is_kept_as_sends_happen(
    fake: FakeTelegram, bot: telegram.Bot, http: httpx.AsyncClient
) -> None:
    fake.register_user(**ANA)
    fake.register_channel(username="@avisos", id=CHANNEL_ID)
    await bot.send_message(ANA["id"], "para Ana")
    await bot.send_message("@avisos", "para o canal")
    await bot.send_message(CHANNEL_ID, "de novo")
    with pytest.raises(BadRequest):
        await bot.send_message(999, "ninguém")

    by_name = (await http.get("/_test/sent", params={"chat_id": "@avisos"})).json()["messages"]
    by_id = (await http.get("/_test/sent", params={"chat_id": str(CHANNEL_ID)})).json()["messages"]
    assert [m["text"] for m in by_name] == [m["text"] for m in by_id] == ["para o canal", "de novo"]
    assert [m["text"] for m in fake.sent(ANA["id"])] == ["para Ana"]
    assert (await http.get("/_test/stats")).json() == {
        "sent": 3,
        "attempts": 5,
        "by_status": {"200": 4, "400": 1},
        "flood_control": True,
    }
    # The copies handed to tests are theirs to change.
    fake.sent(ANA["id"])[0]["text"] = "mudado"
    assert fake.sent(ANA["id"])[0]["text"] == "para Ana"
    await http.post("/_test/reset")
    assert (await http.get("/_test/stats")).json()["by_status"] == {}
    assert fake.sent(ANA["id"]) == []
