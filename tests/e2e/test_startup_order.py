"""Containers start in any order: the server and the bot wait for MongoDB and NATS."""

from __future__ import annotations

import httpx

from devstack.processes import NatsServer, SecantusServer, free_port
from tests.harness import eventually


def test_server_waits_for_mongodb_and_nats_started_after_it(stack, tmp_path):
    mongo = SecantusServer(data_dir=tmp_path / "mongo", port=free_port(), log_file=tmp_path / "secantus.log")
    nats = NatsServer(data_dir=tmp_path / "nats", port=free_port())
    server = stack.server(wait=False, MONGODB_URI=mongo.uri, NATS_URL=nats.url)
    try:
        eventually(lambda: "MongoDB not reachable yet" in server.log_text(), timeout=30)
        mongo.start()
        eventually(lambda: "Connect call failed" in server.log_text(), timeout=30)
        nats.start()
        ready = eventually(lambda: _ready(stack.api_url), timeout=30, message="server ready")
        assert ready == {"status": "ready", "checks": {"mongodb": "ok", "nats": "ok"}}
        assert server.running
    finally:
        server.stop()
        nats.stop()
        mongo.stop()


def test_server_stopped_while_waiting_exits_cleanly(stack, tmp_path):
    server = stack.server(wait=False, MONGODB_URI=f"mongodb://127.0.0.1:{free_port()}/balcao")
    eventually(lambda: "MongoDB not reachable yet" in server.log_text(), timeout=30)
    assert server.stop() == 0


def test_bot_waits_for_nats(stack, tmp_path, telegram):
    nats = NatsServer(data_dir=tmp_path / "nats", port=free_port())
    bot = stack.bot(NATS_URL=nats.url)
    try:
        eventually(lambda: "Connect call failed" in bot.log_text(), timeout=30)
        nats.start()
        eventually(lambda: "polling for updates" in bot.log_text(), timeout=30)
    finally:
        assert bot.stop() == 0
        nats.stop()


def _ready(api_url: str) -> dict | None:
    try:
        response = httpx.get(f"{api_url}/ready", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None
