"""An in-process fake Bot API on a free port, with a raw HTTP client and python-telegram-bot's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
import telegram

from devstack.faketelegram import FakeTelegram

TOKEN = "123456:fake-token"
ANA = {"id": 5001, "first_name": "Ana", "last_name": "Souza", "username": "anasouza"}
CHANNEL_ID = -1001234567890


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram(token=TOKEN, webhook_retry_delay=0.05)
    await server.start(host="127.0.0.1", port=0)
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def http(fake: FakeTelegram) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[telegram.Bot]:
    client = telegram.Bot(TOKEN, base_url=f"{fake.base_url}/bot", base_file_url=f"{fake.base_url}/file/bot")
    async with client:
        yield client


async def api(http: httpx.AsyncClient, method: str, **params: Any) -> httpx.Response:
    return await http.post(f"/bot{TOKEN}/{method}", json=params)


async def inject(http: httpx.AsyncClient, text: str, user: dict[str, Any] = ANA, **fields: Any) -> dict[str, Any]:
    response = await http.post("/_test/messages", json={"user": user, "text": text, **fields})
    assert response.status_code == 200, response.text
    return response.json()
