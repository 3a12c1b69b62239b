"""Event-stream benchmark: from a message stored to its event reaching 100 WebSocket clients.

One server process, fed inbound messages at a steady rate straight on the
inbound subject (as the bot publishes them), from many contacts. CLIENTS
WebSocket clients follow `message.received`; beside them, the reference: a
raw nats-py ordered subscriber on the same stream, in a process of its own
(`bench.reference.events`), so it shares no event loop with the clients.
Latency is from the event's `at` (stamped right after the message was stored,
before the publish) to the frame being read. Also the server's RSS per
connected client, its CPU, and its own account of the fan-out per event.

    .venv/bin/python -m bench.eventlatency [--clients 100] [--messages 1000] [--rate 30] [--runs 3] [--profile FILE]

Each run is on a fresh nats-server and database; the figures are medians of
the runs. Target: p99 over WebSocket <= 2 x the raw subscriber's p99 + 10 ms.

`--profile FILE` runs the server under cProfile and prints where its time went
(the profile is kept in FILE for pstats or snakeviz).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
from websockets.asyncio.client import connect

from bench import method, stack
from bench.intake import inbound, wait_ready
from contract import eventstream as events
from contract.messaging import INBOUND_SUBJECT
from devstack.processes import free_port, wait_for_port

WARMUP = 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def latency(event: dict) -> float:
    at = dt.datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
    return time.time() - at


async def websocket_client(
    port: int, expected: int, latencies: list[float], ready: asyncio.Event, connected: list[int]
) -> None:
    url = f"ws://127.0.0.1:{port}/v1/events?type=message.received"
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {stack.API_TOKEN}"},
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


async def one_run(work: Path, clients: int, messages: int, rate: float, profile: Path | None) -> dict[str, Any]:
    with stack.fresh_stack(work) as run:
        port = free_port()
        # Every client connects with one token from this machine's one address.
        room = str(clients + 10)
        env = stack.balcao_env(
            run, port, EVENTS_MAX_CLIENTS_PER_TOKEN=room, EVENTS_MAX_CLIENTS=room, HTTP_MAX_CONNECTIONS_PER_ADDRESS=room
        )
        module = ["cProfile", "-o", str(profile), "-m", "server"] if profile else ["server"]
        server = stack.launch("server", *module, work=work, env=env)
        reference = None
        try:
            wait_for_port(port, 60, server.popen)
            reference = stack.launch(
                "reference-events",
                "bench.reference.events",
                run.nats_url,
                events.MESSAGE_RECEIVED,
                str(WARMUP + messages),
                work=work,
                env={},
                stdout=subprocess.PIPE,
            )
            wait_ready(reference)
            return await measure(run, server, reference, port, clients, messages, rate)
        finally:
            if reference is not None:
                reference.stop()
            server.stop()


async def measure(
    run: stack.Stack,
    server: stack.Program,
    reference: stack.Program,
    port: int,
    clients: int,
    messages: int,
    rate: float,
) -> dict[str, Any]:
    nc = await nats.connect(run.nats_url, name="bench")
    js = nc.jetstream()
    await asyncio.sleep(1.0)
    before = rss_bytes(server.pid)
    ws_latencies: list[float] = []
    ready, connected = asyncio.Event(), []
    total = WARMUP + messages
    tasks = [asyncio.create_task(websocket_client(port, total, ws_latencies, ready, connected)) for _ in range(clients)]
    while len(connected) < clients:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    per_client = (rss_bytes(server.pid) - before) / clients
    interval = 1.0 / rate
    started = time.monotonic()
    server_cpu = server.cpu_seconds()
    for n in range(total):
        if n == WARMUP:
            await asyncio.sleep(2.0)  # let the warm-up settle; measure only what follows
            ws_latencies.clear()
            ready.set()
            started = time.monotonic() - n * interval
            server_cpu = server.cpu_seconds()
        data, dedup = inbound(n, total, 1)  # each message from a new contact
        await js.publish(INBOUND_SUBJECT, data, headers={"Nats-Msg-Id": dedup})
        pause = started + (n + 1) * interval - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    cpu = server.cpu_seconds() - server_cpu
    raw_line = await asyncio.get_running_loop().run_in_executor(None, reference.popen.stdout.readline)
    raw_latencies = json.loads(raw_line)[WARMUP:]
    await nc.close()
    figures = {
        "websocket": method.latency_figures(ws_latencies),
        "raw": method.latency_figures(raw_latencies),
        "rss_per_client_kib": per_client / 1024,
        "server_rss_mib": rss_bytes(server.pid) / 2**20,
        "server_cpu_seconds_per_1000_messages": cpu * 1000 / messages,
        "server_fanout_ms": fanout_ms(port),
    }
    raw_tail = "p99_ms" if "p99_ms" in figures["raw"] else "max_ms"
    ws_tail = "p99_ms" if "p99_ms" in figures["websocket"] else "max_ms"
    figures["target_ms"] = 2 * figures["raw"][raw_tail] + 10
    figures["met"] = figures["websocket"][ws_tail] <= figures["target_ms"]
    print(
        f"  websocket p50 {figures['websocket']['p50_ms']:.1f} ms {method.tail_text(figures['websocket'])}; "
        f"raw p50 {figures['raw']['p50_ms']:.1f} ms {method.tail_text(figures['raw'])}; "
        f"target {figures['target_ms']:.1f} ms {'met' if figures['met'] else 'MISSED'}; "
        f"{figures['rss_per_client_kib']:.1f} KiB per client; server "
        f"{figures['server_cpu_seconds_per_1000_messages']:.1f} CPU-s per 1,000 messages; "
        f"fan-out {figures['server_fanout_ms']:.2f} ms per event",
        flush=True,
    )
    return figures


def fanout_ms(port: int) -> float:
    """The server's own account of handing one event to every client (its histogram's mean)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        for name in ("balcao_event_fanout_seconds_sum", "balcao_event_fanout_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[-1])
    count = values.get("balcao_event_fanout_seconds_count", 0.0)
    return values["balcao_event_fanout_seconds_sum"] / count * 1000 if count else 0.0


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(values: list) -> Any:
        if isinstance(values[0], dict):
            return {key: median([v[key] for v in values]) for key in values[0] if all(key in v for v in values)}
        if isinstance(values[0], bool):
            return sum(values) > len(values) / 2
        return statistics.median(values)

    return median(runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000, help="timed messages per run")
    parser.add_argument("--rate", type=float, default=30.0, help="inbound messages per second")
    parser.add_argument("--runs", type=int, default=method.MIN_PAIRS)
    parser.add_argument("--profile", type=Path, help="run the server under cProfile, writing its profile here")
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    profile = args.profile.resolve() if args.profile else None
    with (
        method.recorded("eventlatency", method.results_folder(args.results), argv) as record,
        tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp,
    ):
        print(f"{args.clients} clients, {args.messages} messages at {args.rate:g}/s, {args.runs} run(s)", flush=True)
        runs = [
            asyncio.run(one_run(Path(tmp) / str(n), args.clients, args.messages, args.rate, profile))
            for n in range(args.runs)
        ]
        record.figures = {
            "clients": args.clients,
            "messages": args.messages,
            "rate": args.rate,
            "median": median_figures(runs),
            "runs": runs,
        }
    if profile:
        print(f"server profile in {profile}; by own time:")
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main(sys.argv[1:])
