"""Event-stream benchmark: from a message stored to its event reaching 100 WebSocket clients.

One server process, fed inbound messages at a steady rate straight on the
inbound subject (as the bot publishes them), from many contacts. CLIENTS
WebSocket clients follow `message.received`; beside them, in the same run and
the same event loop, a raw nats-py ordered subscriber reads the same stream.
Latency is from the event's `at` (stamped right after the message was stored,
before the publish) to the frame being read by a client. Also the server's RSS
per connected client (RSS after connecting them, minus before, over CLIENTS).

    .venv/bin/python -m bench.eventlatency [--clients 100] [--messages 600] [--rate 30] [--profile FILE]

Target: p99 over WebSocket <= 2 x the raw subscriber's p99 + 10 ms.

The server reads the stream once and fans each event out to its clients
(server/eventfeed.py); the run prints that fan-out's mean time per event from
the server's own histogram. `--profile FILE` runs the server under cProfile and
prints where its time went (the profile is kept in FILE for pstats or snakeviz).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from websockets.asyncio.client import connect

from bench.backends import backends
from bench.intake import percentile
from contract import eventstream
from contract.messaging import INBOUND_SUBJECT, PLATFORM_TELEGRAM, InboundMessage
from devstack.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-api-token-0123456789abcdef"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def latency(event: dict) -> float:
    at = dt.datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
    return time.time() - at


async def websocket_client(
    port: int, expected: int, latencies: list[float], ready: asyncio.Event, connected: list[int]
) -> None:
    url = f"ws://127.0.0.1:{port}/v1/events?type=message.received"
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {TOKEN}"},
        subprotocols=["balcao.v1"],
        max_queue=None,
        open_timeout=60,
    ) as ws:
        connected.append(1)
        seen = 0
        while seen < expected:
            raw = await ws.recv()
            if ready.is_set():
                latencies.append(latency(json.loads(raw)))
            seen += 1


async def raw_subscriber(js, expected: int, latencies: list[float], done: asyncio.Event) -> None:
    seen = 0

    async def on_event(msg) -> None:
        nonlocal seen
        latencies.append(latency(json.loads(msg.data)))
        seen += 1
        if seen >= expected:
            done.set()

    sub = await js.subscribe(
        eventstream.filter_subject(eventstream.MESSAGE_RECEIVED),
        stream=eventstream.EVENTS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        cb=on_event,
    )
    await done.wait()
    await sub.unsubscribe()


async def run(clients: int, messages: int, rate: float, profile: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp, backends(Path(tmp)) as servers:
        port = free_port()
        env = {
            **os.environ,
            "NATS_URL": servers.nats_url,
            "MONGODB_URI": servers.mongodb_uri,
            "API_TOKEN": TOKEN,
            "HTTP_PORT": str(port),
            "LOG_LEVEL": "warning",
            "EVENTS_MAX_CLIENTS_PER_TOKEN": str(clients + 10),
            # Every client connects from this machine's one address.
            "EVENTS_MAX_CLIENTS": str(clients + 10),
            "HTTP_MAX_CONNECTIONS_PER_ADDRESS": str(clients + 10),
        }
        with open(Path(tmp) / "server.log", "wb") as log:
            command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "server"]
            server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, 60, server)
            await measure(servers.nats_url, port, server.pid, clients, messages, rate)
        finally:
            server.terminate()
            server.wait(30)
    if profile:
        print(f"server profile in {profile}; by own time:")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(15)


async def measure(nats_url: str, port: int, pid: int, clients: int, messages: int, rate: float) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await asyncio.sleep(1.0)
    before = rss_bytes(pid)
    ws_latencies: list[float] = []
    raw_latencies: list[float] = []
    ready, done, connected = asyncio.Event(), asyncio.Event(), []
    warmup = 20
    total = warmup + messages
    tasks = [asyncio.create_task(websocket_client(port, total, ws_latencies, ready, connected)) for _ in range(clients)]
    raw = asyncio.create_task(raw_subscriber(js, total, raw_latencies, done))
    while len(connected) < clients:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    per_client = (rss_bytes(pid) - before) / clients
    print(
        f"{clients} clients connected; server RSS {before / 2**20:.1f} MiB before, "
        f"{per_client / 1024:.1f} KiB per connected client"
    )

    interval = 1.0 / rate
    started = time.monotonic()
    server_cpu, own_cpu = cpu_seconds(pid), time.process_time()
    for n in range(total):
        if n == warmup:
            await asyncio.sleep(2.0)  # let the warm-up settle; measure only what follows
            ws_latencies.clear()
            raw_latencies.clear()
            ready.set()
            started = time.monotonic() - n * interval
        inbound = InboundMessage(
            platform=PLATFORM_TELEGRAM,
            contact_identifier=str(900000 + n),
            chat_id=900000 + n,
            message_id=1,
            name=f"Bench {n}",
            text=f"bench {n}",
            sent_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        await js.publish(INBOUND_SUBJECT, inbound.to_bytes(), headers={"Nats-Msg-Id": inbound.dedup_id})
        pause = started + (n + 1) * interval - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
    await asyncio.wait_for(asyncio.gather(*tasks, raw), timeout=120)
    peak = rss_bytes(pid)
    elapsed = time.monotonic() - started
    print(
        f"CPU over {elapsed:.0f} s: server {cpu_seconds(pid) - server_cpu:.1f} s, "
        f"clients (this process) {time.process_time() - own_cpu:.1f} s"
    )
    await nc.close()
    fanout = fanout_figures(port)
    raw_latencies = raw_latencies[-messages:]
    figures = {}
    for name, values in (("websocket", ws_latencies), ("raw nats", raw_latencies)):
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        figures[name] = p99
        print(f"{name:<10} {len(values):>7} deliveries  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    target = 2 * figures["raw nats"] + 10
    print(
        f"websocket p99 {figures['websocket']:.1f} ms vs target 2 x raw p99 + 10 ms = {target:.1f} ms: "
        f"{'met' if figures['websocket'] <= target else 'MISSED'}"
    )
    print(f"server RSS after the run: {peak / 2**20:.1f} MiB")
    print(fanout)


def fanout_figures(port: int) -> str:
    """The server's own account of handing each event to every client (its histogram's mean)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("balcao_event_fanout_seconds_sum", "balcao_event_fanout_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[-1])
    count = values.get("balcao_event_fanout_seconds_count", 0.0)
    if not count:
        return "server fan-out: no events"
    mean = values["balcao_event_fanout_seconds_sum"] / count * 1000
    return f"server fan-out: {count:.0f} events, mean {mean:.2f} ms to hand one event to every client"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rate", type=float, default=30.0, help="inbound messages per second")
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, writing its profile here")
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.messages, args.rate, args.profile.resolve() if args.profile else None))


if __name__ == "__main__":
    main()
