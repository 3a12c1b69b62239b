"""Webhook mode against the fake Telegram: updates confirmed only once JetStream has them."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats
import pytest

from bot import config
from contract.messaging import INBOUND_STREAM
from devstack.processes import free_port, wait_for_port
from runtime import jetstream
from runtime.environment import ConfigError
from tests.harness import BOT_TOKEN, eventually, inbound_waiting

REPLY = "Reply: mensagem recebida"
SECRET = "webhook-secret_0123456789-0123456789abcdef"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


def webhook_env() -> dict[str, str]:
    port = free_port()
    return {
        "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{port}/telegram/updates",
        "WEBHOOK_PORT": str(port),
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
    }


def start_webhook_bot(stack, **extra: str):
    env = {**webhook_env(), **extra}
    bot = stack.bot(**env)
    wait_for_port(int(env["WEBHOOK_PORT"]), 30, bot.popen)
    return bot, env["TELEGRAM_WEBHOOK_URL"]


def webhook_info(telegram) -> dict:
    response = telegram.http.get(f"/bot{BOT_TOKEN}/getWebhookInfo")
    response.raise_for_status()
    return response.json()["result"]


def replies(telegram, chat_id: int) -> int:
    return sum(1 for m in telegram.sent(chat_id) if m["text"] == REPLY)


def update(update_id: int, user_id: int, text: str) -> dict:
    user = {"id": user_id, "is_bot": False, "first_name": "Intrusa"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "date": int(time.time()),
            "text": text,
            "from": user,
            "chat": {"id": user_id, "type": "private", "first_name": "Intrusa"},
        },
    }


def test_webhook_mode_relays_replies_and_refuses_strangers(stack, telegram, mongo):
    stack.server()
    bot, url = start_webhook_bot(stack)
    eventually(lambda: webhook_info(telegram)["url"] == url, message="webhook registered")

    telegram.send_as_user(9501, "pelo webhook")
    telegram.send_as_user(9502, "também")
    eventually(lambda: replies(telegram, 9501) and replies(telegram, 9502), message="replies")
    eventually(lambda: not telegram.pending_updates(), message="updates confirmed by the 200s")
    assert mongo.messages.count_documents({"text": {"$in": ["pelo webhook", "também"]}}) == 2

    forged = update(990001, 9503, "forjada")
    for headers in ({}, {HEADER: "wrong"}, {HEADER: SECRET + "x"}):
        response = httpx.post(url, json=forged, headers=headers, timeout=10)
        assert response.status_code == 403, headers
    assert httpx.post(url, content=b"{not json", headers={HEADER: SECRET}, timeout=10).status_code == 400
    assert (
        httpx.post(url.replace("/updates", "/other"), json=forged, headers={HEADER: SECRET}, timeout=10).status_code
        == 404
    )
    time.sleep(1)
    assert mongo.messages.count_documents({"text": "forjada"}) == 0
    assert replies(telegram, 9503) == 0
    assert "polling for updates" not in bot.log_text()
    assert bot.stop() == 0
    assert "webhook stopped" in bot.log_text()


def test_relay_failure_answers_500_and_telegram_delivers_again(stack, telegram, clean_nats):
    bot, url = start_webhook_bot(stack)
    eventually(lambda: webhook_info(telegram)["url"] == url, message="webhook registered")

    async def delete_inbound_stream() -> None:
        nc = await nats.connect(clean_nats.url)
        await nc.jetstream().delete_stream(INBOUND_STREAM)
        await nc.close()

    asyncio.run(delete_inbound_stream())  # JetStream now refuses every inbound publish
    telegram.send_as_user(9601, "insistente")
    info = eventually(
        lambda: (lambda i: i if "500" in i.get("last_error_message", "") else None)(webhook_info(telegram)),
        message="the webhook answered 500",
    )
    assert info["pending_update_count"] == 1  # not confirmed: Telegram keeps it
    time.sleep(1)
    assert len(telegram.pending_updates()) == 1

    async def restore_streams() -> None:
        nc = await jetstream.connect(clean_nats.url, "test", "_INBOX")
        await jetstream.ensure_streams(nc.jetstream())
        await nc.close()

    asyncio.run(restore_streams())
    eventually(lambda: not telegram.pending_updates(), message="redelivered and confirmed")
    assert inbound_waiting(clean_nats.url) == 1
    payload = json.loads(_first_inbound(clean_nats.url))
    assert payload["text"] == "insistente" and payload["contact_identifier"] == "9601"
    assert "not relayed" in bot.log_text()


def _first_inbound(nats_url: str) -> bytes:
    async def read() -> bytes:
        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().get_msg(INBOUND_STREAM, 1)).data
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({}, "TELEGRAM_WEBHOOK_URL needs TELEGRAM_WEBHOOK_SECRET (or _FILE)"),
        (
            {"TELEGRAM_WEBHOOK_SECRET": "has spaces"},
            "TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -",
        ),
    ],
)
def test_webhook_mode_needs_a_valid_secret(extra, problem):
    environ = {
        "TELEGRAM_BOT_TOKEN": "1:abc",
        "NATS_URL": "nats://n:4222",
        "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/tg",
        **extra,
    }
    with pytest.raises(ConfigError) as error:
        config.load(environ)
    assert error.value.problems == [problem]
    assert "has spaces" not in str(error.value)


def test_webhook_settings_serve_the_url_path():
    settings = config.load(
        {
            "TELEGRAM_BOT_TOKEN": "1:abc",
            "NATS_URL": "nats://n:4222",
            "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/tg/in",
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "BOT_METRICS_PORT": "9464",
        }
    )
    assert settings.webhook_path == "/tg/in"
    assert settings.metrics_port == 9464
    assert SECRET in settings.secrets and "1:abc" in settings.secrets
