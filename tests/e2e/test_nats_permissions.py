"""The container stack's NATS users and permissions (deploy/nats/), on the real nats-server.

The same file podman-compose.yml mounts is loaded here, with test passwords: the
real server and bot, each as its own user, must do all their work without one
permissions violation in nats-server's log, and each user must be refused what
belongs to the other process.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from contract import eventstream, messaging
from devstack.processes import NatsServer, venv_binary
from runtime import jetstream
from tests.conftest import Stack
from tests.e2e.test_events import open_events, read_until
from tests.harness import ROOT, ApiClient, eventually, stack_env

CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
START = ROOT / "deploy" / "nats" / "start.sh"
DATA = ROOT / "data"
CHANNEL = "@suporte"
# Passwords as `make secrets` may write them that nats-server's configuration
# parser reads as no string when unquoted: a leading "-", a date-like "1-2".
PASSWORDS = {"server": "-server-test-password-0123", "bot": "1-2-bot-test-password-4567"}
REPLY = "Reply: mensagem recebida"
INBOX_PREFIXES = {"server": messaging.SERVER_INBOX_PREFIX, "bot": messaging.BOT_INBOX_PREFIX}
VIOLATION = "permissions violation"  # how nats-py and nats-server both spell it, in any case


def start_environment(secrets: Path, passwords: dict[str, str]) -> dict[str, str]:
    """What deploy/nats/start.sh needs outside a container: the secret files
    (`passwords` maps a secret's name to its content) and nats-server on the PATH."""
    secrets.mkdir(exist_ok=True)
    for name, password in passwords.items():
        (secrets / name).write_text(password + "\n")
    binaries = str(Path(venv_binary("nats-server")).parent)
    return {"NATS_SECRETS_DIR": str(secrets), "PATH": f"{binaries}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server as podman-compose.yml starts it: through start.sh, passwords from files."""
    secrets = {f"nats_{user}_password": password for user, password in PASSWORDS.items()}
    server = NatsServer(
        data_dir=tmp_path / "nats",
        config_file=CONFIG,
        log_file=tmp_path / "nats.log",
        launcher=("sh", str(START)),
        environment=start_environment(tmp_path / "nats-secrets", secrets),
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
        nats_server.url,
        user=user,
        password=PASSWORDS[user],
        inbox_prefix=INBOX_PREFIXES[user],
        error_cb=on_error,
        allow_reconnect=False,
    )


def nats_violations(nats_server: NatsServer) -> list[str]:
    """The permissions violations nats-server logged: one line per refused publish or subscription."""
    assert nats_server.log_file is not None
    return [line for line in nats_server.log_file.read_text().splitlines() if " Violation - " in line]


def test_every_path_of_the_server_and_the_bot_runs_without_one_violation(
    secured_stack, secured_nats, telegram, mongo, request
):
    """Intake, parking, agent replies, finishing, imports, dead letters, the live event stream
    (WebSocket, SSE, and the resume from `since`), the stream gauges and restarts with new
    limits: every subject each process uses is granted, and nats-server refuses nothing.

    A missing grant cannot hide behind a fallback: the test reads nats-server's own log.
    """
    server = secured_stack.server(**secured_stack.server_env)
    bot = secured_stack.bot(**secured_stack.bot_env)
    api = ApiClient(secured_stack.api_url)
    request.addfinalizer(api.close)
    telegram.add_channel(CHANNEL)
    # The reply to this contact is refused by Telegram, so the bot parks it. Only
    # once: the goodbye that finishing sends later is delivered, not parked again.
    telegram.add_fault(method="sendMessage", chat_id=8002, error_code=403, times=1)

    with open_events(server.port) as live:
        telegram.send_as_user(8001, "Olá", first_name="Rita")
        telegram.send_as_user(8002, "Oi", first_name="Caio")
        eventually(lambda: replies(telegram, 8001) == 1, timeout=30, message="reply through the permissioned NATS")
        eventually(lambda: "parked" in bot.log_text(), timeout=30, message="the refused reply parked")
        first = read_until(live, lambda got: sum(e["type"] == eventstream.MESSAGE_SENT for e in got) >= 2)
    seen = max(event["id"] for event in first)

    session = mongo.sessions.find_one({"contact_identifier": "8001"})
    answer = api.post(f"sessions/{session['_id']}/messages", json={"text": "Bom dia!"})
    assert answer.status_code == 201, answer.text
    eventually(lambda: any(m["text"] == "Bom dia!" for m in telegram.sent(8001)), timeout=30, message="agent reply")
    # Files: a contact's put by the bot and read by the server; an agent's the other way.
    invoice = b"%PDF-1.4 fatura" * 20_000
    telegram.send_as_user(
        8001, "fatura", first_name="Rita", kind="document", file={"ref": telegram.store_file(invoice)["ref"]}
    )
    document = eventually(lambda: mongo.messages.find_one({"kind": "document"}), timeout=30, message="the file")
    downloaded = api.get(f"sessions/{session['_id']}/messages/{document['_id']}/file")
    assert downloaded.status_code == 200 and downloaded.content == invoice
    sent_file = api.http.post(
        f"sessions/{session['_id']}/messages", files={"file": ("recibo.pdf", invoice, "application/pdf")}
    )
    assert sent_file.status_code == 201, sent_file.text
    eventually(lambda: any(m.get("upload") for m in telegram.sent(8001)), timeout=30, message="the agent's file sent")
    upload = {"file": ("sessions.json", (DATA / "sessions.json").read_bytes(), "application/json")}
    imported = api.http.post("imports", data={"channel": CHANNEL}, files=upload)
    assert imported.status_code == 202, imported.text
    eventually(lambda: telegram.sent(CHANNEL), timeout=30, message="import announced")

    # Resuming from an id reads the stream through a consumer of its own (and asks it
    # for its state): every later event, by WebSocket and by SSE.
    with open_events(server.port, f"since={seen}") as resumed:
        later = read_until(resumed, lambda got: {eventstream.MESSAGE_SENT, eventstream.IMPORT_FINISHED} <= types(got))
    assert min(e["id"] for e in later) == seen + 1
    headers = {**api.http.headers, "Accept": "text/event-stream", "Last-Event-ID": str(seen)}
    with httpx.stream("GET", f"{secured_stack.api_url}/v1/events", headers=headers, timeout=15) as response:
        assert response.status_code == 200
        frame = next(line for line in response.iter_lines() if line.startswith("id:"))
    assert frame == f"id: {seen + 1}"

    # Payloads nobody can decode go to the dead-letter stream, from either side.
    asyncio.run(publish_as("bot", secured_nats, messaging.INBOUND_SUBJECT, b"\xff not json"))
    asyncio.run(publish_as("server", secured_nats, messaging.OUTBOUND_SUBJECT, b"\xff not json"))
    eventually(lambda: stream_messages(secured_nats, messaging.DEAD_STREAM) == 2, timeout=30, message="dead letters")

    # Finishing a session purges, by subject and with the server's user, what the streams
    # hold of it: its events, and its chat's parked messages and dead letters.
    assert api.delete(f"sessions/{session['_id']}").status_code == 204
    # Reply, agent reply, reply to the file, the agent's file, goodbye.
    eventually(lambda: len(telegram.sent(8001)) == 5, timeout=30, message="goodbye")
    # Its files are deleted with it: nothing left of either but the meta that marks it deleted.
    eventually(
        lambda: stream_messages(secured_nats, f"OBJ_{messaging.FILES_BUCKET}") == 2,
        timeout=30,
        message="the files deleted with their session",
    )
    assert stream_messages(secured_nats, messaging.PARKED_STREAM) == 1
    caio = mongo.sessions.find_one({"contact_identifier": "8002"})
    assert api.delete(f"sessions/{caio['_id']}").status_code == 204
    eventually(
        lambda: stream_messages(secured_nats, messaging.PARKED_STREAM) == 0,
        timeout=30,
        message="the parked reply erased with its session",
    )
    eventually(lambda: telegram.sent(8002), timeout=30, message="the goodbye delivered")
    assert stream_messages(secured_nats, messaging.PARKED_STREAM) == 0

    # The stream gauges are read with the server's user (stream info).
    metrics = httpx.get(f"{secured_stack.api_url}/metrics", timeout=10).text
    for stream in (messaging.INBOUND_STREAM, messaging.OUTBOUND_STREAM, messaging.PARKED_STREAM):
        assert f'balcao_stream_fill_ratio{{stream="{stream}"}}' in metrics, stream

    # Restarted with other limits: the bot binds its consumer and bucket and leaves the
    # streams as they are; the server brings them to the new limits.
    limits = {"STREAM_MAX_BYTES": str(64 * 1024 * 1024)}
    secured_stack.stop()
    secured_stack.bot(**secured_stack.bot_env, **limits)
    secured_stack.server(**secured_stack.server_env, **limits)
    telegram.send_as_user(8003, "De novo", first_name="Lia")
    eventually(lambda: replies(telegram, 8003) == 1, timeout=30, message="reply after the restart")
    assert stream_max_bytes(secured_nats, messaging.INBOUND_STREAM) == 64 * 1024 * 1024

    assert nats_violations(secured_nats) == []
    for process in secured_stack.processes:
        assert VIOLATION not in process.log_text().lower(), process.log_text()


def types(got: list[dict]) -> set[str]:
    return {event["type"] for event in got}


def replies(telegram, chat_id: int) -> int:
    return sum(message["text"] == REPLY for message in telegram.sent(chat_id))


async def publish_as(user: str, nats_server: NatsServer, subject: str, payload: bytes) -> None:
    errors: list[str] = []
    nc = await connect_as(nats_server, user, errors)
    try:
        await nc.jetstream().publish(subject, payload)
    finally:
        await nc.close()
    assert errors == []


def stream_messages(nats_server: NatsServer, stream: str) -> int:
    async def count() -> int:
        nc = await connect_as(nats_server, "server", [])
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def stream_max_bytes(nats_server: NatsServer, stream: str) -> int:
    async def read() -> int:
        nc = await connect_as(nats_server, "server", [])
        try:
            return (await nc.jetstream().stream_info(stream)).config.max_bytes
        finally:
            await nc.close()

    return asyncio.run(read())


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
        ("server", messaging.parked_subject(8001)),
        ("bot", f"$JS.API.STREAM.DELETE.{messaging.INBOUND_STREAM}"),
        ("bot", f"$JS.API.CONSUMER.MSG.NEXT.{messaging.INBOUND_STREAM}.{messaging.INBOUND_CONSUMER}"),
        # The streams are the server's to change: the bot may not update (or seal) them,
        # nor purge any; the server purges only the copies of a finished session (events,
        # parked, dead letters), never the work queues; neither may delete any.
        ("bot", f"$JS.API.STREAM.UPDATE.{messaging.INBOUND_STREAM}"),
        ("bot", f"$JS.API.STREAM.UPDATE.{messaging.DEAD_STREAM}"),
        ("bot", f"$JS.API.STREAM.PURGE.{messaging.DEAD_STREAM}"),
        # Nobody may delete the file store whole.
        ("bot", f"$JS.API.STREAM.DELETE.OBJ_{messaging.FILES_BUCKET}"),
        ("server", f"$JS.API.STREAM.DELETE.OBJ_{messaging.FILES_BUCKET}"),
        ("bot", f"$JS.API.STREAM.PURGE.{messaging.PARKED_STREAM}"),
        ("server", f"$JS.API.STREAM.PURGE.{messaging.INBOUND_STREAM}"),
        ("server", f"$JS.API.STREAM.PURGE.{messaging.OUTBOUND_STREAM}"),
        ("server", f"$JS.API.STREAM.DELETE.{messaging.INBOUND_STREAM}"),
        # The bot reports deliveries and nothing else to the event stream, and
        # dead-letters only what it consumes.
        ("bot", eventstream.subject(eventstream.SESSION_OPENED, "telegram", "603fd3c61ce2ab564307a73a")),
        ("bot", eventstream.subject(eventstream.MESSAGE_RECEIVED, "telegram", "603fd3c61ce2ab564307a73a")),
        ("bot", messaging.dead_subject(messaging.INBOUND_SUBJECT)),
        ("bot", messaging.dead_subject(messaging.INBOUND_SUBJECT, 8001)),
        ("server", messaging.dead_subject(messaging.OUTBOUND_SUBJECT)),
        ("server", messaging.dead_subject(messaging.OUTBOUND_SUBJECT, 8001)),
    ]
    for user, subject in forbidden:
        refused = await _refused(secured_nats, user, subject)
        expected = f'{VIOLATION} for publish to "{subject.lower()}"'  # nats-py lowercases the error
        assert any(expected in error.lower() for error in refused), (user, subject, refused)

    js = server.jetstream()
    for stream in (messaging.INBOUND_STREAM, messaging.OUTBOUND_STREAM, messaging.PARKED_STREAM):
        assert (await js.stream_info(stream)).state.messages == 0, stream


async def _subscription_refused(nats_server: NatsServer, user: str, subject: str) -> list[str]:
    errors: list[str] = []
    nc = await connect_as(nats_server, user, errors)
    try:
        await nc.subscribe(subject, cb=_ignore)
        await nc.flush()
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    return errors


@pytest.mark.asyncio
async def test_no_user_reads_the_other_sides_subjects_or_replies_and_strangers_cannot_connect(secured_nats) -> None:
    forbidden = [
        ("bot", messaging.INBOUND_SUBJECT),
        # Each process's replies come to its own inbox prefix: JetStream API answers
        # and fetched batches are not the other user's to read.
        ("bot", f"{messaging.SERVER_INBOX_PREFIX}.>"),
        ("server", f"{messaging.BOT_INBOX_PREFIX}.>"),
        ("bot", "_INBOX.>"),
        ("server", "_INBOX.>"),
    ]
    for user, subject in forbidden:
        errors = await _subscription_refused(secured_nats, user, subject)
        assert any(VIOLATION in error.lower() and "subscription" in error.lower() for error in errors), (user, errors)

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
