"""The shipped stack, run for real: the two images of the Containerfile and podman-compose.yml,
started by `make up` as the README says, hardened, and driven from outside.

The official mongo, nats and python images are replaced by stand-ins made on
this machine (devstack/standins/, the only override besides the fake Bot API's
certificate authority); everything else is what a user deploys. The contact
side goes through the fake Bot API on the host, over TLS; the API side through
the published port; the CLI image runs as the README shows.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from devstack.processes import free_port
from tests.containers.conftest import Launch
from tests.containers.drive import Writer, assert_hardened, replies, resident, settle
from tests.containers.podman import Podman, Timings
from tests.harness import ROOT, FakeTelegramClient, eventually

PROJECT = "balcao"
NETWORK = f"{PROJECT}_default"
COMPOSE_FILES = "podman-compose.yml devstack/standins/podman-compose.standins.yml tests/containers/faketelegram.yml"
SERVICES = ("mongo", "nats", "server", "bot")
CHANNEL = "@canal"


@dataclass
class Stack:
    project: Path
    port: int
    token: str
    containers: dict[str, str]  # service -> container

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.api_url}/v1/", headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def stack(launch: Launch) -> Iterator[Stack]:
    port = free_port()
    variables = [f"COMPOSE_FILES={COMPOSE_FILES}"]
    with launch.started("up", "down", variables, {"HTTP_PORT": port}, PROJECT, "the stack") as containers:
        assert set(containers) == set(SERVICES), containers
        token = (launch.project / "secrets" / "api_token").read_text().strip()
        yield Stack(launch.project, port, token, containers)


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "podman-compose.yml").read_text(encoding="utf-8"))["services"][name]


def compose_limits() -> dict[str, tuple[int, int]]:
    """Service -> (memory limit in bytes, pids limit), as podman-compose.yml states them."""
    services = yaml.safe_load((ROOT / "podman-compose.yml").read_text(encoding="utf-8"))["services"]
    units = {"m": 1024**2, "g": 1024**3}
    return {
        name: (int(service["mem_limit"][:-1]) * units[service["mem_limit"][-1]], int(service["pids_limit"]))
        for name, service in services.items()
    }


def test_every_container_runs_with_the_hardening_compose_asks_for(podman: Podman, stack: Stack) -> None:
    limits = compose_limits()
    for service, container in stack.containers.items():
        assert_hardened(podman, service, container, limits[service])


def test_the_health_checks_report_healthy(podman: Podman, stack: Stack) -> None:
    for service, container in stack.containers.items():
        assert podman.run("healthcheck", "run", container, check=False).returncode == 0, service
        assert podman.inspect(container)["State"]["Health"]["Status"] == "healthy", service


def test_a_contact_is_answered_and_agents_list_search_and_reply(stack: Stack, telegram: FakeTelegramClient) -> None:
    telegram.send_as_user(5101, "Olá, preciso de ajuda", first_name="João", last_name="Silva")
    eventually(lambda: replies(telegram, 5101) == 1, timeout=60, message="the automatic reply")
    with stack.api() as api:
        listed = api.get("sessions").json()["items"]
        assert [item["contact"]["name"] for item in listed] == ["João Silva"]
        assert [item["id"] for item in api.get("sessions", params={"q": "joao"}).json()["items"]] == [listed[0]["id"]]
        assert api.get("sessions", params={"q": "maria"}).json()["items"] == []
        answer = api.post(f"sessions/{listed[0]['id']}/messages", json={"text": "Bom dia! Como posso ajudar?"})
        assert answer.status_code == 201, answer.text
    eventually(lambda: replies(telegram, 5101, "Bom dia! Como posso ajudar?") == 1, timeout=60, message="agent reply")


def read_events(ws, until, timeout: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        try:
            got.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        except TimeoutError:
            break
    return got


def test_the_event_stream_resumes_from_since_with_every_missed_event_once(
    stack: Stack, telegram: FakeTelegramClient, timings: Timings
) -> None:
    url = f"ws://127.0.0.1:{stack.port}/v1/events"
    headers = {"Authorization": f"Bearer {stack.token}"}
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        telegram.send_as_user(5201, "primeira", first_name="Rita")
        seen = read_events(ws, lambda got: any(e["type"] == "message.sent" for e in got), timeout=60)
    assert seen, "no event before the drop"
    last = max(event["id"] for event in seen)
    # While no client listens: two more contacts write and are answered.
    for chat in (5202, 5203):
        telegram.send_as_user(chat, "enquanto ninguém ouvia", first_name="Caio")
    eventually(lambda: replies(telegram, 5202) == 1 and replies(telegram, 5203) == 1, timeout=60, message="replies")
    started = time.monotonic()
    with connect(f"{url}?since={last}", additional_headers=headers, open_timeout=30) as ws:
        missed = read_events(ws, lambda got: sum(e["type"] == "message.sent" for e in got) >= 2, timeout=30)
        took = time.monotonic() - started
        extra = read_events(ws, lambda got: False, timeout=2)  # nothing more, nothing twice
    ids = [event["id"] for event in missed + extra]
    assert ids == list(range(last + 1, last + 1 + len(ids))), ids  # every one, in order, once
    assert Counter(e["type"] for e in missed + extra) == {"session.opened": 2, "message.received": 2, "message.sent": 2}
    timings.figures.append(f"events resumed from since: {len(missed)} missed events in {took:.3f} s")
    assert took < 1.0, took


def test_the_cli_image_imports_json_and_csv_each_announced_once(
    podman: Podman, stack: Stack, telegram: FakeTelegramClient, timings: Timings
) -> None:
    telegram.add_channel(CHANNEL)
    with stack.api() as api:
        before = len(api.get("sessions", params={"limit": 500}).json()["items"])
    for name in ("sessions.json", "sessions.csv"):
        with timings.phase(f"CLI image: import data/{name}"):
            # As the README shows it; the token comes from the environment, not the command line.
            podman.command(
                ["podman", "run", "--rm", "--network", NETWORK, "-e", "BALCAO_API_URL=http://server:8080",
                 "-e", "BALCAO_API_TOKEN", "-v", f"{stack.project / 'data'}:/data:ro,z",
                 "localhost/balcao-cli:latest", "import", f"/data/{name}", "--channel", CHANNEL],
                env={"BALCAO_API_TOKEN": stack.token},
                timeout=600,
            )  # fmt: skip
    eventually(lambda: len(telegram.sent(CHANNEL)) >= 2, timeout=120, message="both announcements")
    announcements = settle(podman, stack.containers["server"], lambda: [m["text"] for m in telegram.sent(CHANNEL)])
    assert len(announcements) == 2 and all(text.startswith("Importação concluída") for text in announcements)
    with stack.api() as api:
        after = api.get("sessions", params={"limit": 500}).json()["items"]
    assert len(after) >= before + len(json.loads((ROOT / "data" / "sessions.json").read_text()))


def test_finishing_a_session_says_goodbye(stack: Stack, telegram: FakeTelegramClient) -> None:
    telegram.send_as_user(5301, "pode encerrar", first_name="Lia")
    eventually(lambda: replies(telegram, 5301) == 1, timeout=60, message="reply")
    with stack.api() as api:
        session = next(item for item in api.get("sessions", params={"q": "lia"}).json()["items"])
        assert api.delete(f"sessions/{session['id']}").status_code == 204
        assert api.get(f"sessions/{session['id']}").status_code == 404
    eventually(lambda: len(telegram.sent(5301)) == 2, timeout=60, message="goodbye")
    assert telegram.sent(5301)[-1]["text"] == "Seu atendimento foi finalizado. Obrigado pelo contato!"


def stop(podman: Podman, container: str) -> tuple[float, int]:
    """`podman stop` with the container's own grace period; (seconds taken, exit code)."""
    started = time.monotonic()
    podman.run("stop", container, timeout=120)
    return time.monotonic() - started, podman.inspect(container)["State"]["ExitCode"]


def test_server_and_bot_stopped_while_a_contact_writes_answer_everything_once_when_back(
    podman: Podman, stack: Stack, telegram: FakeTelegramClient, timings: Timings
) -> None:
    grace = podman.inspect(stack.containers["server"])["Config"]["StopTimeout"]
    assert f"{grace}s" == compose_service("server")["stop_grace_period"]  # what a plain `podman stop` waits
    chats = list(range(5401, 5407))
    with Writer(telegram, chats, interval=0.3) as writer:
        time.sleep(3)
        server_took, server_code = stop(podman, stack.containers["server"])
        bot_took, bot_code = stop(podman, stack.containers["bot"])
        time.sleep(3)  # both down: the updates wait at Telegram
    timings.figures.append(f"podman stop: server {server_took:.1f} s, bot {bot_took:.1f} s (grace {grace} s)")
    assert server_code == 0 and bot_code == 0, (server_code, bot_code)  # stopped by SIGTERM, not killed
    assert server_took < grace and bot_took < grace
    for service in ("bot", "server"):
        podman.run("start", stack.containers[service])
    for service in ("server", "bot"):
        podman.healthy(stack.containers[service])

    eventually(writer.all_answered, timeout=180, interval=1, message="every message answered after the restart")
    assert settle(podman, stack.containers["server"], writer.answered) == dict(writer.sent)
    with stack.api() as api:
        counts = {
            item["contact"]["identifier"]: item["message_count"]
            for item in api.get("sessions", params={"limit": 500}).json()["items"]
        }
    assert {int(chat): count for chat, count in counts.items() if int(chat) in chats} == dict(writer.sent)


def test_memory_idle_and_at_twenty_messages_a_second(
    podman: Podman, stack: Stack, telegram: FakeTelegramClient, timings: Timings
) -> None:
    """Figures, not limits: each container's resident memory idle and under 20 messages/s;
    what is asserted is that all of them are answered once."""
    time.sleep(5)
    idle = {service: resident(podman, container) for service, container in stack.containers.items()}
    chats = list(range(5501, 5541))  # each chat writes once every 2 s: within Telegram's 1/s per chat
    peak = dict.fromkeys(stack.containers, 0)
    started = time.monotonic()
    with Writer(telegram, chats, interval=0.05) as writer:
        while time.monotonic() - started < 20:
            time.sleep(1)
            for service, container in stack.containers.items():
                peak[service] = max(peak[service], resident(podman, container))
    rate = sum(writer.sent.values()) / (time.monotonic() - started)
    eventually(writer.all_answered, timeout=180, interval=1, message="every message answered")
    assert settle(podman, stack.containers["server"], writer.answered) == dict(writer.sent)
    for service in stack.containers:
        timings.figures.append(
            f"RSS {service:<7} idle {idle[service] / 1e6:6.1f} MB, at {rate:.0f} msg/s {peak[service] / 1e6:6.1f} MB"
        )
