"""Attack benchmark: hostile inputs sent to fresh server (and bot) processes, with the answer and the peak memory.

Each attack of the security suite (tests/security/), at the size an attacker
would use rather than the size a test needs, against a process of its own
with the default settings (the event-stream attack lowers the client cap to
10, as in the report that found it). For each it prints the answer, the
process's resident memory before the attack and its peak while under attack
(VmRSS sampled every 10 ms).

    .venv/bin/python -m bench.attacks [--server-root DIR] [--only NAME ...]

`--server-root` runs the server and the bot from another checkout of the
project, such as one exported with `git archive <commit> | tar -x -C DIR`, so
the same attacks measure the code as it was at that commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from bench.backends import backends
from contract import eventstream
from contract.messaging import DEAD_STREAM, INBOUND_CONSUMER, INBOUND_STREAM, INBOUND_SUBJECT
from devstack.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-api-token-0123456789abcdef-0123456789"
BOT_TOKEN = "123456:bench-bot-token"
SECRET = "bench-webhook-secret-0123456789abcdef"
MIB = 1024 * 1024
SESSION = "0123456789abcdef01234567"


@dataclass
class Target:
    process: subprocess.Popen
    port: int
    nats_url: str
    mongodb_uri: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def sampled(pid: int) -> Iterator[list[float]]:
    """[RSS before, peak RSS] of `pid` in MiB while the block runs."""
    figures = [rss_mib(pid)] * 2
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            try:
                figures[1] = max(figures[1], rss_mib(pid))
            except FileNotFoundError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        done.set()
        sampler.join()
        figures[1] = max(figures[1], rss_mib(pid)) if Path(f"/proc/{pid}").exists() else figures[1]


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def status(sock: socket.socket, timeout: float) -> str:
    """The status code of the response on `sock`, or what happened instead."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed, no answer"
            data += chunk
    except TimeoutError:
        return f"no answer in {timeout:.0f} s"
    except ConnectionError as error:
        return type(error).__name__
    return data.split(b" ", 2)[1].decode()


def raw(method: str, path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", *headers]) + "\r\n\r\n").encode("latin-1")


# --- the attacks ----------------------------------------------------------------------


def connections(target: Target) -> str:
    """1,000 keep-alive connections from one address, then a request from another."""
    socks = [connect(target.port) for _ in range(1000)]
    try:
        for sock in socks:
            sock.sendall(raw("GET", "/health"))
        answers: dict[str, int] = {}
        for sock in socks:
            answer = status(sock, 10)
            answers[answer] = answers.get(answer, 0) + 1
        other = connect(target.port, "127.0.0.2")
        try:
            other.sendall(raw("GET", "/health"))
            bystander = status(other, 10)
        finally:
            other.close()
    finally:
        for sock in socks:
            sock.close()
    return f"another address: {bystander}; the 1,000: {', '.join(f'{n} x {s}' for s, n in sorted(answers.items()))}"


def since_superscript(target: Target) -> str:
    """`since=²` on the event stream."""
    response = httpx.get(
        f"{target.url}/v1/events",
        params={"since": "²"},
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"},
        timeout=10,
    )
    return str(response.status_code)


def content_length_superscript(target: Target) -> str:
    """`Content-Length: ²` on an import, without a token."""
    sock = connect(target.port)
    try:
        sock.sendall(raw("POST", "/v1/imports", "Content-Length: ²", "Content-Type: multipart/form-data"))
        return status(sock, 10)
    finally:
        sock.close()


def get_with_body(target: Target) -> str:
    """A GET on the streaming messages route declaring and sending 300 MiB."""
    sock = connect(target.port, timeout=60)
    sock.sendall(
        raw("GET", f"/v1/sessions/{SESSION}/messages", f"Authorization: Bearer {TOKEN}", f"Content-Length: {300 * MIB}")
    )
    answered_before = status(sock, 2)
    if answered_before.isdigit():
        sock.close()
        return f"{answered_before} before the body"
    try:
        piece = b"x" * MIB
        for _ in range(300):
            sock.sendall(piece)
    except OSError as error:
        sock.close()
        return f"{type(error).__name__} while sending"
    answer = status(sock, 60)
    sock.close()
    return f"{answer} after the body"


def ndjson_line(target: Target, messages: int) -> str:
    """An NDJSON upload of one session whose messages are `messages` empty objects."""
    line = (
        b'{"name": "Ana", "platform_type": "telegram", "contact_identifier": 5585999990001, "messages": ['
        + b",".join([b"{}"] * messages)
        + b"]}\n"
    )
    boundary = "benchboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="channel"\r\n\r\n@bench_channel\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.ndjson"\r\n'
            "Content-Type: application/x-ndjson\r\n\r\n"
        ).encode()
        + line
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{target.url}/v1/imports",
        content=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    if response.status_code != 202:
        return f"{response.status_code} ({len(line) / MIB:.1f} MiB line)"
    report = response.json()
    problem = (report.get("failure") or {}).get("message") or (report["errors"] or [{}])[0].get("message", "")
    return (
        f"202, {report['status']}, rejected {report['counts']['rejected']} "
        f"({len(report['errors'])} errors listed): {problem[:70]} ({len(line) / MIB:.1f} MiB line)"
    )


def upgrades(target: Target) -> str:
    """40 WebSocket upgrades at once, each resuming, over a cap of 10 clients."""
    socks = []
    for n in range(40):
        sock = connect(target.port, f"127.0.1.{10 + n}")
        sock.sendall(
            raw(
                "GET",
                "/v1/events?since=0",
                f"Authorization: Bearer {TOKEN}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            )
        )
        socks.append(sock)
    answers = [status(sock, 20) for sock in socks]
    for sock in socks:
        sock.close()
    return f"{answers.count('101')} accepted, {answers.count('503')} refused (cap 10)"


def forged_event(target: Target) -> str:
    """A `message.sent` payload carrying a raw SSE frame break and a second event, then an SSE client."""
    subject = eventstream.subject(eventstream.MESSAGE_SENT, "telegram", SESSION)
    body = eventstream.to_bytes(
        eventstream.message_sent(
            platform="telegram",
            session_id=SESSION,
            contact_identifier="42",
            key="agent:1",
            text="ok",
            kind="agent",
            delivery="sent",
        )
    )
    forged = body + b'\n\nevent: session.finished\ndata: {"type": "session.finished"}'
    marker = eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED))

    async def publish() -> None:
        nc = await nats.connect(target.nats_url)
        js = nc.jetstream()
        await js.publish(subject, forged, stream=eventstream.EVENTS_STREAM)
        await js.publish(eventstream.subject(eventstream.IMPORT_FINISHED), marker, stream=eventstream.EVENTS_STREAM)
        await nc.close()

    asyncio.run(publish())
    kinds = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    with httpx.stream("GET", f"{target.url}/v1/events?since=0", headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                kinds.append(line.removeprefix("event: "))
                if kinds[-1] == eventstream.IMPORT_FINISHED:
                    break
    return "SSE events: " + ", ".join(kinds)


def long_name(target: Target) -> str:
    """An inbound message with a 300,000-character name beside a good one; what became of it after 20 s."""
    import pymongo

    base = {"platform": "telegram", "chat_id": 7101, "message_id": 1, "text": "oi", "sent_at": "2026-01-01T00:00:00Z"}
    hostile = {**base, "contact_identifier": "7101", "name": "N" * 300_000}
    good = {**base, "contact_identifier": "7102", "chat_id": 7102, "name": "Rita"}

    async def run() -> str:
        nc = await nats.connect(target.nats_url)
        js = nc.jetstream()
        for n, body in enumerate((hostile, good)):
            await js.publish(INBOUND_SUBJECT, json.dumps(body).encode(), headers={"Nats-Msg-Id": f"bench-{n}"})
        await asyncio.sleep(20)
        dead = (await js.stream_info(DEAD_STREAM)).state.messages
        consumer = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
        waiting = (await js.stream_info(INBOUND_STREAM)).state.messages
        await nc.close()
        return (
            f"after 20 s: {dead} dead-lettered, {waiting} still in the inbound stream, "
            f"{consumer.num_redelivered} redelivered"
        )

    outcome = asyncio.run(run())
    with pymongo.MongoClient(target.mongodb_uri) as client:
        stored = client.get_default_database()["sessions"].count_documents({"contact_identifier": "7101"})
    return f"{outcome}, {stored} session stored with the name"


def webhook_flood(target: Target) -> str:
    """200 connections each posting 1 MiB to the webhook with a wrong secret."""
    answers: dict[str, int] = {}
    lock = threading.Lock()
    path = "/telegram/updates"

    def post() -> None:
        try:
            sock = connect(target.port, timeout=60)
        except OSError as error:
            answer = type(error).__name__
        else:
            sock.sendall(raw("POST", path, f"Content-Length: {MIB}", "X-Telegram-Bot-Api-Secret-Token: wrong-secret"))
            try:
                sock.sendall(b"x" * MIB)
                answer = status(sock, 60)
            except OSError:
                answer = status(sock, 5)
            sock.close()
        with lock:
            answers[answer] = answers.get(answer, 0) + 1

    threads = [threading.Thread(target=post) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return ", ".join(f"{n} x {answer}" for answer, n in sorted(answers.items()))


@dataclass(frozen=True)
class Attack:
    run: Callable[[Target], str]
    env: dict[str, str]
    webhook: bool = False


ATTACKS = {
    "connections": Attack(connections, {}),
    "since-superscript": Attack(since_superscript, {}),
    "content-length-superscript": Attack(content_length_superscript, {}),
    "get-with-body": Attack(get_with_body, {}),
    "ndjson-12mib": Attack(lambda target: ndjson_line(target, 4_000_000), {}),
    "ndjson-4mib": Attack(lambda target: ndjson_line(target, 1_300_000), {}),
    "upgrades": Attack(upgrades, {"EVENTS_MAX_CLIENTS": "10"}),
    "forged-event": Attack(forged_event, {}),
    "long-name": Attack(long_name, {}),
    "webhook-flood": Attack(webhook_flood, {}, webhook=True),
}


# --- running them ---------------------------------------------------------------------


def reset_streams(nats_url: str) -> None:
    async def run() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for stream in await js.streams_info():
            await js.delete_stream(stream.config.name)
        await nc.close()

    asyncio.run(run())


def start(module: str, root: Path, env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=root, env={**os.environ, **env}, stdout=out, stderr=out
        )
    wait_for_port(port, 60, process)
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_attack(name: str, attack: Attack, root: Path, nats_url: str, mongodb_uri: str, work: Path) -> str:
    reset_streams(nats_url)
    port = free_port()
    common = {"NATS_URL": nats_url, "LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    server_env = {**common, "MONGODB_URI": mongodb_uri, "API_TOKEN": TOKEN, "HTTP_PORT": str(port), **attack.env}
    server = start("server", root, server_env, work / f"{name}-server.log", port)
    extra: list[subprocess.Popen] = []
    target = Target(server, port, nats_url, mongodb_uri)
    try:
        if attack.webhook:
            telegram_port, webhook_port = free_port(), free_port()
            extra.append(_fake_telegram(telegram_port, work / f"{name}-telegram.log"))
            bot_env = {
                **common,
                "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
                "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{telegram_port}",
                "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/telegram/updates",
                "TELEGRAM_WEBHOOK_SECRET": SECRET,
                "WEBHOOK_PORT": str(webhook_port),
            }
            bot = start("bot", root, bot_env, work / f"{name}-bot.log", webhook_port)
            extra.append(bot)
            target = Target(bot, webhook_port, nats_url, mongodb_uri)
        time.sleep(1.0)  # let start-up settle before the baseline
        with sampled(target.process.pid) as figures:
            answer = attack.run(target)
        alive = "" if target.process.poll() is None else f"; the process exited ({target.process.returncode})"
        return f"| {name} | {answer}{alive} | {figures[0]:.0f} MiB | {figures[1]:.0f} MiB |"
    finally:
        for process in reversed(extra):
            stop(process)
        stop(server)


def _fake_telegram(port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.faketelegram", "--port", str(port), "--token", BOT_TOKEN],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    wait_for_port(port, 30, process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout to run the server and bot from")
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), help="run only these attacks")
    args = parser.parse_args()
    root = args.server_root.resolve()
    with tempfile.TemporaryDirectory(prefix="balcao-attacks-") as tmp:
        work = Path(tmp)
        with backends(work) as servers:
            print(f"server and bot from {root}; MongoDB: {servers.mongodb_name}")
            print("| attack | answer | RSS before | peak RSS |")
            print("|---|---|---|---|")
            for name in args.only or list(ATTACKS):
                print(run_attack(name, ATTACKS[name], root, servers.nats_url, servers.mongodb_uri, work), flush=True)


if __name__ == "__main__":
    main()
