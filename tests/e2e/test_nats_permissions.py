"""The container stack's NATS users and permissions (deploy/nats/nats.conf), on the real nats-server.

The same file podman-compose.yml mounts is loaded here, with test passwords: the
real server and bot, each as its own user, must do all their work (intake,
replies, parking) without one permissions violation, and each user must be
refused what belongs to the other process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from contract import messaging
from devstack.processes import NatsServer
from runtime import jetstream
from tests.conftest import Stack
from tests.harness import API_TOKEN, ROOT, eventually, stack_env

CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
PASSWORDS = {"server": "server-test-password-0123", "bot": "bot-test-password-4567"}
REPLY = "Reply: mensagem recebida"
VIOLATION = "permissions violation"  # how nats-py and nats-server both spell it, in any case


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(
        data_dir=tmp_path / "nats",
        config_file=CONFIG,
        log_file=tmp_path / "nats.log",
        environment={"BALCAO_NATS_SERVER_PASSWORD": PASSWORDS["server"], "BALCAO_NATS_BOT_PASSWORD": PASSWORDS["bot"]},
    )
    server.start()
    yield server
    server.stop()


def user_env(nats_server: NatsServer, user: str, secrets: Path) -> dict[str, str]:
    """NATS_URL names the user, the password comes from a file: as in podman-compose.yml."""
    password_file = secrets / f"nats_{user}_password"
    password_file.write_text(PASSWORDS[user] + "\n")
    return {"NATS_URL": f"nats://{user}@127.0.0.1:{nats_server.port}", "NATS_PASSWORD_FILE": str(password_file)}


@pytest.fixture
def secured_stack(secured_nats: NatsServer, mongo, telegram, mongodb_uri: str, tmp_path: Path) -> Iterator[Stack]:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    running = Stack(stack_env(secured_nats.url, mongodb_uri, telegram.base_url), tmp_path)
    running.server_env = user_env(secured_nats, "server", secrets)
    running.bot_env = user_env(secured_nats, "bot", secrets)
    yield running
    running.stop()
    for process in running.processes:
        assert "Traceback" not in process.log_text(), process.log_text()


async def connect_as(nats_server: NatsServer, user: str, errors: list[str]) -> nats.NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        nats_server.url, user=user, password=PASSWORDS[user], error_cb=on_error, allow_reconnect=False
    )


def test_server_and_bot_work_as_their_own_users(secured_stack, secured_nats, telegram, mongo):
    secured_stack.server(**secured_stack.server_env)
    bot = secured_stack.bot(**secured_stack.bot_env)
    # The reply to this contact is refused by Telegram, so the bot parks it. Only
    # once: the goodbye that finishing sends later is delivered, not parked again.
    telegram.add_fault(method="sendMessage", chat_id=8002, error_code=403, times=1)

    telegram.send_as_user(8001, "Olá", first_name="Rita")
    telegram.send_as_user(8002, "Oi", first_name="Caio")
    # A file: put by the bot's user, read and deleted by the server's.
    invoice = b"%PDF-1.4 fatura" * 20_000
    telegram.send_as_user(
        8002, "fatura", first_name="Caio", kind="document", file={"ref": telegram.store_file(invoice)["ref"]}
    )
    eventually(
        lambda: [m for m in telegram.sent(8001) if m["text"] == REPLY],
        timeout=30,
        message="reply through the permissioned NATS",
    )
    eventually(lambda: "parked" in bot.log_text(), timeout=30, message="the refused reply parked")

    # A restarted bot binds the existing consumer and bucket (the look-up paths).
    bot.stop()
    secured_stack.bot(**secured_stack.bot_env)
    telegram.send_as_user(8001, "De novo", first_name="Rita")
    eventually(
        lambda: len([m for m in telegram.sent(8001) if m["text"] == REPLY]) == 2,
        timeout=30,
        message="reply after the bot restarted",
    )

    assert {s["contact_identifier"] for s in mongo.sessions.find()} == {"8001", "8002"}
    document = eventually(lambda: mongo.messages.find_one({"kind": "document"}), timeout=30, message="the file")
    assert mongo.messages.count_documents({}) == 4
    downloaded = httpx.get(
        f"{secured_stack.api_url}/v1/sessions/{document['session_id']}/messages/{document['_id']}/file",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=30,
    )
    assert downloaded.status_code == 200 and downloaded.content == invoice

    async def files_kept() -> int:
        nc = await connect_as(secured_nats, "server", [])
        info = await nc.jetstream().stream_info(f"OBJ_{messaging.FILES_BUCKET}")
        await nc.close()
        return info.state.messages

    async def parked() -> int:
        errors: list[str] = []
        nc = await connect_as(secured_nats, "server", errors)
        info = await nc.jetstream().stream_info(messaging.PARKED_STREAM)
        await nc.close()
        return info.state.messages

    assert asyncio.run(parked()) == 1  # the first reply to Caio
    assert asyncio.run(files_kept()) == 4  # the file's three chunks of 128 KiB, and its meta
    # Finishing that contact's session purges its parked reply, with the server's user.
    caio = mongo.sessions.find_one({"contact_identifier": "8002"})
    finished = httpx.delete(
        f"{secured_stack.api_url}/v1/sessions/{caio['_id']}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=30,
    )
    assert finished.status_code == 204, finished.text
    eventually(lambda: asyncio.run(parked()) == 0, timeout=30, message="the parked reply erased with its session")
    # Its file too: nothing left of it but the meta that marks it deleted.
    eventually(lambda: asyncio.run(files_kept()) == 1, timeout=30, message="the file deleted with its session")
    # The reply to the file, then the goodbye: delivered, not parked.
    eventually(lambda: len(telegram.sent(8002)) == 2, timeout=30, message="the goodbye delivered")
    assert asyncio.run(parked()) == 0
    # The stream gauges are read with the server's user too (stream info).
    metrics = httpx.get(f"{secured_stack.api_url}/metrics", timeout=10).text
    for stream in (messaging.INBOUND_STREAM, messaging.OUTBOUND_STREAM, messaging.PARKED_STREAM):
        assert f'balcao_stream_fill_ratio{{stream="{stream}"}}' in metrics, stream
    for process in secured_stack.processes:
        assert VIOLATION not in process.log_text().lower(), process.log_text()


async def _refused(nats_server: NatsServer, user: str, subject: str) -> list[str]:
    errors: list[str] = []
    nc = await connect_as(nats_server, user, errors)
    await nc.publish(subject, b'{"key":"forged","chat_id":"1","text":"forged"}')
    await nc.flush()
    for _ in range(100):
        if errors:
            break
        await asyncio.sleep(0.02)
    await nc.close()
    return errors


@pytest.mark.asyncio
async def test_each_user_is_refused_the_other_side(secured_nats) -> None:
    errors: list[str] = []
    server = await connect_as(secured_nats, "server", errors)
    try:
        await _check_refusals(secured_nats, server)
    finally:
        await server.close()
    assert errors == []


async def _check_refusals(secured_nats: NatsServer, server: nats.NATS) -> None:
    await jetstream.ensure_streams(server.jetstream())  # the server's user may declare them
    forbidden = [
        ("bot", messaging.OUTBOUND_SUBJECT),  # a forged reply
        ("server", messaging.INBOUND_SUBJECT),  # a forged contact message
        ("server", messaging.PARKED_SUBJECT),
        ("bot", f"$JS.API.STREAM.DELETE.{messaging.INBOUND_STREAM}"),
        ("bot", f"$JS.API.CONSUMER.MSG.NEXT.{messaging.INBOUND_STREAM}.{messaging.INBOUND_CONSUMER}"),
        # Nobody may delete the file store whole.
        ("bot", f"$JS.API.STREAM.DELETE.OBJ_{messaging.FILES_BUCKET}"),
        ("server", f"$JS.API.STREAM.DELETE.OBJ_{messaging.FILES_BUCKET}"),
    ]
    for user, subject in forbidden:
        refused = await _refused(secured_nats, user, subject)
        expected = f'{VIOLATION} for publish to "{subject.lower()}"'  # nats-py lowercases the error
        assert any(expected in error.lower() for error in refused), (user, subject, refused)

    js = server.jetstream()
    for stream in (messaging.INBOUND_STREAM, messaging.OUTBOUND_STREAM, messaging.PARKED_STREAM):
        assert (await js.stream_info(stream)).state.messages == 0, stream


@pytest.mark.asyncio
async def test_a_bot_cannot_read_the_inbound_subject_and_strangers_cannot_connect(secured_nats) -> None:
    errors: list[str] = []
    bot = await connect_as(secured_nats, "bot", errors)
    try:
        await bot.subscribe(messaging.INBOUND_SUBJECT, cb=_ignore)
        await bot.flush()
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.02)
    finally:
        await bot.close()
    assert any(VIOLATION in error.lower() and "subscription" in error.lower() for error in errors), errors

    # Spoken by hand: nats-py leaves its socket open when the server refuses it.
    for credentials in ({}, {"user": "bot", "pass": "not-the-password"}):
        assert "authorization violation" in await _handshake(secured_nats.port, credentials)
    assert "pong" in await _handshake(secured_nats.port, {"user": "bot", "pass": PASSWORDS["bot"]})


async def _handshake(port: int, credentials: dict[str, str]) -> str:
    """CONNECT and PING on a bare socket; the server's first answer after INFO."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        connect = json.dumps({"verbose": False, "pedantic": False, **credentials})
        writer.write(f"CONNECT {connect}\r\nPING\r\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().lower()
    finally:
        writer.close()
        await writer.wait_closed()


async def _ignore(msg) -> None:
    pass


@pytest.mark.asyncio
async def test_the_bot_user_reads_and_writes_its_delivered_keys(secured_nats) -> None:
    """The look-up a redelivery makes (the run above sends each message once)."""
    from bot.delivery import delivered_bucket, delivered_key

    errors: list[str] = []
    bot = await connect_as(secured_nats, "bot", errors)
    try:
        bucket = await delivered_bucket(bot.jetstream())  # created
        marker = delivered_key("telegram:8001:1")
        await bucket.put(marker, b"1")
        assert (await delivered_bucket(bot.jetstream())) is not None  # found
        assert (await bucket.get(marker)).value == b"1"
    finally:
        await bot.close()
    assert errors == []
