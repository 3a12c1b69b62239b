"""Intake benchmark: fake Telegram -> bot -> JetStream -> server -> MongoDB -> reply.

Injects MESSAGES text messages from CONTACTS contacts into the fake Bot API as fast
as it takes them and times each one until its reply reaches the fake. Beside it,
in the same run and against the same nats-server and MongoDB-wire server, the
baseline: a raw nats-py request/reply whose responder does one raw pymongo upsert
per message. Both are open-loop bursts with the same message count.

    .venv/bin/python -m bench.intake [--messages 2000] [--contacts 200] [--runs 3] [--loads 0.25 0.5 0.75]

A burst's throughput moves from run to run on a shared machine, so it runs
`--runs` times on fresh servers and reports medians. Two references: the raw
request/reply with one upsert (no Telegram send, as before), and the same with
the reply also sent to a fake Bot API over HTTP, which is the work Balcão does
end to end. Then a closed loop offers messages at fixed rates (fractions of the
second reference's capacity) and reports latency where nothing queues.

The bot's send rate is raised for the run (TELEGRAM_MAX_MESSAGES_PER_SECOND)
and the fake's flood control is off: real Telegram's 30 messages/s would
measure Telegram, not Balcão (bench.outbound measures delivery at the limits).
The bot still paces each private chat at one message a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pymongo

from bench.backends import backends
from contract.messaging import (
    INBOUND_CONSUMER,
    INBOUND_STREAM,
    INBOUND_SUBJECT,
    OUTBOUND_STREAM,
    OUTBOUND_SUBJECT,
    PLATFORM_TELEGRAM,
    InboundMessage,
    OutboundMessage,
)
from devstack.faketelegram import FakeTelegram
from devstack.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "42:bench-token"
REPLY = "Reply: mensagem recebida"
BASELINE_SUBJECT = "bench.baseline"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], elapsed: float) -> dict[str, float]:
    figures = {
        "rate": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "mean": statistics.fmean(latencies) * 1000,
    }
    print(
        f"{name:<10} {len(latencies):>6} msgs  {figures['rate']:>8.0f} msg/s  "
        f"p50 {figures['p50']:>8.1f} ms  p99 {figures['p99']:>8.1f} ms"
    )
    return figures


def _process_env(nats_url: str, mongodb_uri: str, port: int, **extra: str) -> dict[str, str]:
    """The environment a benchmarked server (and bot) starts with."""
    return {
        **os.environ,
        "NATS_URL": nats_url,
        "MONGODB_URI": mongodb_uri,
        "HTTP_PORT": str(port),
        "API_TOKEN": "bench-api-token-0123456789abcdef-0123456789",
        "LOG_LEVEL": "warning",
        **extra,
    }


async def balcao(
    nats_url: str, mongodb_uri: str, messages: int, contacts: int, work: Path, rate: float | None = None
) -> dict:
    """Balcão end to end; `rate`: offer the messages at that many per second instead of at once."""
    fake = FakeTelegram(TOKEN)
    fake.flood_control.enabled = False  # measure Balcão, not Telegram's limits (bench.outbound does)
    await fake.start(port=0)
    port = free_port()
    env = _process_env(
        nats_url,
        mongodb_uri,
        port,
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_POLL_TIMEOUT="10",
        TELEGRAM_MAX_MESSAGES_PER_SECOND="100000",
    )
    logs = open(work / "balcao.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT, stdout=logs, stderr=logs)
    bot = subprocess.Popen([sys.executable, "-m", "bot"], env=env, cwd=ROOT, stdout=logs, stderr=logs)
    try:
        wait_for_port(port, 30, server)
        await asyncio.sleep(2)  # the bot is polling and its consumers are bound
        injected: dict[int, list[float]] = {}
        started = time.monotonic()
        for n in range(messages):
            user_id = 10_000 + n % contacts
            if rate:
                await asyncio.sleep(max(started + n / rate - time.monotonic(), 0))
            injected.setdefault(user_id, []).append(time.monotonic())
            fake.inject_message({"id": user_id, "first_name": f"Contato {user_id}"}, f"mensagem {n}")
            if not rate and n % 50 == 0:
                await asyncio.sleep(0)  # let the fake serve the bot while injecting
        progress = pymongo.MongoClient(mongodb_uri).get_default_database()["messages"]
        last_print = time.monotonic()

        def finished() -> bool:
            nonlocal last_print
            if os.environ.get("BENCH_TRACE") and time.monotonic() - last_print > 1:
                last_print = time.monotonic()
                print(
                    f"  t={last_print - started:5.1f}s stored={progress.count_documents({})} "
                    f"pending_updates={len(fake.pending_updates())} replies={fake.sent_count}"
                )
            return fake.sent_count >= messages

        await wait_until(finished, 300)
        done = replies(fake)
        latencies = []
        for user_id, times in injected.items():
            answered = [a["at"] for a in done if str(a["chat_id"]) == str(user_id)]
            latencies += [reply - sent for sent, reply in zip(times, sorted(answered))]
        elapsed = max(a["at"] for a in done) - started
        return report("balcao" if not rate else f"balcao@{rate:.0f}", latencies, elapsed)
    finally:
        for process in (bot, server):
            process.terminate()
            process.wait(30)
        logs.close()
        await fake.stop()


def replies(fake: FakeTelegram) -> list[dict]:
    return [a for a in fake.attempts() if a["status"] == 200 and a["text"] == REPLY]


async def wait_until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(0.02)


async def baseline_responder(nats_url: str, mongodb_uri: str, telegram_url: str = "") -> None:
    """The baseline's server side: one raw upsert per request, then the reply.

    With `telegram_url`, the reply is also sent as sendMessage to the fake Bot API
    over HTTP first, as the bot does: the baseline then does the same kind of work
    as Balcão end to end (store, answer on Telegram) with nothing in between.
    """
    import httpx

    http = (
        httpx.AsyncClient(base_url=f"{telegram_url}/bot{TOKEN}", timeout=60, limits=httpx.Limits(max_connections=100))
        if telegram_url
        else None
    )
    collection = pymongo.MongoClient(mongodb_uri).get_default_database()["bench_baseline"]
    collection.create_index([("contact", 1)], unique=True)
    executor = ThreadPoolExecutor(8)
    loop = asyncio.get_running_loop()
    nc = await nats.connect(nats_url)

    def upsert(contact: str, text: str) -> None:
        collection.update_one(
            {"contact": contact}, {"$push": {"messages": text}, "$set": {"last": time.time()}}, upsert=True
        )

    async def handle(msg) -> None:
        contact, _, text = msg.data.decode().partition("|")
        await loop.run_in_executor(executor, upsert, contact, text)
        if http is not None:
            chat = 10_000 + int(contact)
            await http.post("/sendMessage", json={"chat_id": chat, "text": REPLY})
        await msg.respond(REPLY.encode())

    await nc.subscribe(BASELINE_SUBJECT, cb=handle)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def baseline(
    nats_url: str, mongodb_uri: str, messages: int, contacts: int, *, send: bool = False, rate: float | None = None
) -> dict:
    """The raw reference; `send`: each reply also goes to a fake Bot API over HTTP."""
    fake = None
    if send:
        fake = FakeTelegram(TOKEN)
        # As for Balcão: with flood control on, this reference measured Telegram's
        # 30 messages/s (and 429 answers), not the send.
        fake.flood_control.enabled = False
        await fake.start(port=0)
        for contact in range(contacts):
            fake.register_user(10_000 + contact, f"Contato {contact}")
    responder = subprocess.Popen(
        [sys.executable, "-m", "bench.intake", "--responder", nats_url, mongodb_uri, fake.base_url if fake else ""],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout.readline().strip() == "ready"
        nc = await nats.connect(nats_url)
        latencies: list[float] = []
        finished: list[float] = []

        async def one(n: int) -> None:
            if rate:
                await asyncio.sleep(n / rate)
            sent = time.monotonic()
            await nc.request(BASELINE_SUBJECT, f"{n % contacts}|mensagem {n}".encode(), timeout=120)
            finished.append(time.monotonic())
            latencies.append(finished[-1] - sent)

        started = time.monotonic()
        await asyncio.gather(*(one(n) for n in range(messages)))
        await nc.close()
        name = ("baseline+send" if send else "baseline") + (f"@{rate:.0f}" if rate else "")
        return report(name, latencies, max(finished) - started)
    finally:
        responder.terminate()
        responder.wait(10)
        if fake is not None:
            await fake.stop()


def inbound_message(n: int, contacts: int, first_id: int = 0) -> InboundMessage:
    """The n-th message of a burst; `first_id` keeps two bursts' Nats-Msg-Ids apart,
    or JetStream's de-duplication window would drop the second."""
    contact = 10_000 + n % contacts
    return InboundMessage(
        platform=PLATFORM_TELEGRAM,
        contact_identifier=str(contact),
        chat_id=contact,
        message_id=first_id + n,
        name=f"Contato {contact}",
        text=f"mensagem {n}",
        sent_at="2026-11-30T12:00:00+00:00",
    )


async def publish_inbound(js, messages: int, contacts: int, first_id: int = 0) -> float:
    """Publish the burst as the bot does (Nats-Msg-Id, JetStream ack); when it started."""
    started = time.monotonic()
    for first in range(0, messages, 200):
        await asyncio.gather(
            *(
                js.publish(INBOUND_SUBJECT, m.to_bytes(), headers={"Nats-Msg-Id": m.dedup_id})
                for m in (inbound_message(n, contacts, first_id) for n in range(first, min(first + 200, messages)))
            )
        )
    return started


async def empty_work_queues(js) -> None:
    """Purge both streams and drop their consumers: a work queue takes one consumer."""
    for stream in (INBOUND_STREAM, OUTBOUND_STREAM):
        for consumer in await js.consumers_info(stream):
            await js.delete_consumer(stream, consumer.name)
        await js.purge_stream(stream)


async def server_intake(nats_url: str, mongodb_uri: str, messages: int, contacts: int, work: Path) -> dict:
    """The server alone: a burst already relayed into the inbound stream, timed until the
    server has stored every message and published every reply (no bot, no Telegram)."""
    port = free_port()
    env = _process_env(nats_url, mongodb_uri, port)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    logs = open(work / "server-intake.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT, stdout=logs, stderr=logs)
    try:
        wait_for_port(port, 60, server)
        await wait_for_consumer(js, INBOUND_STREAM, INBOUND_CONSUMER)
        await empty_work_queues(js)
        server.terminate()
        server.wait(30)
        # Started again on empty queues, so the fetches see the burst, not a trickle.
        server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT, stdout=logs, stderr=logs)
        wait_for_port(port, 60, server)
        await wait_for_consumer(js, INBOUND_STREAM, INBOUND_CONSUMER)
        started = await publish_inbound(js, messages, contacts)
        while (await js.stream_info(OUTBOUND_STREAM)).state.messages < messages:
            if time.monotonic() - started > 600:
                raise TimeoutError("server intake did not finish in time")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(30)
        logs.close()
    await empty_work_queues(js)
    await nc.close()
    return rate_only("server", messages, elapsed)


async def raw_intake(nats_url: str, mongodb_uri: str, messages: int, contacts: int) -> dict:
    """The server's reference: a raw pull consumer on the same stream doing, per message,
    one raw pymongo upsert and one JetStream publish of the reply, then the ack."""
    collection = pymongo.MongoClient(mongodb_uri).get_default_database()["bench_raw_intake"]
    collection.create_index([("contact", 1)], unique=True)
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(1)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    def upsert(message: InboundMessage) -> None:
        collection.update_one(
            {"contact": message.contact_identifier},
            {"$push": {"messages": message.text}, "$set": {"last": time.time()}},
            upsert=True,
        )

    subscription = await js.pull_subscribe(INBOUND_SUBJECT, durable="bench-raw-intake", stream=INBOUND_STREAM)
    started = await publish_inbound(js, messages, contacts, first_id=10_000_000)
    done = 0
    while done < messages:
        try:
            batch = await subscription.fetch(100, timeout=5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        for msg in batch:
            message = InboundMessage.from_bytes(msg.data)
            await loop.run_in_executor(executor, upsert, message)
            reply = OutboundMessage(key=f"reply:{message.dedup_id}", chat_id=str(message.chat_id), text=REPLY)
            await js.publish(OUTBOUND_SUBJECT, reply.to_bytes(), headers={"Nats-Msg-Id": reply.key})
            await msg.ack()
            done += 1
    elapsed = time.monotonic() - started
    await subscription.unsubscribe()
    await empty_work_queues(js)
    await nc.close()
    executor.shutdown()
    return rate_only("raw intake", messages, elapsed)


async def wait_for_consumer(js, stream: str, consumer: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await js.consumer_info(stream, consumer)
            return
        except nats.js.errors.NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def rate_only(name: str, messages: int, elapsed: float) -> dict[str, float]:
    print(f"{name:<10} {messages:>6} msgs  {messages / elapsed:>8.0f} msg/s  (stored and reply published)")
    return {"rate": messages / elapsed}


async def one_run(messages: int, contacts: int, parts: list[str]) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp, backends(Path(tmp)) as servers:
        results = {}
        if "intake" in parts:
            results["server"] = await server_intake(
                servers.nats_url, servers.mongodb_uri, messages, contacts, Path(tmp)
            )
            results["raw intake"] = await raw_intake(servers.nats_url, servers.mongodb_uri, messages, contacts)
        if "e2e" in parts:
            results["balcao"] = await balcao(servers.nats_url, servers.mongodb_uri, messages, contacts, Path(tmp))
            results["baseline"] = await baseline(servers.nats_url, servers.mongodb_uri, messages, contacts)
            results["baseline+send"] = await baseline(
                servers.nats_url, servers.mongodb_uri, messages, contacts, send=True
            )
        return results


async def closed_loop(capacity: float, messages: int, contacts: int, loads: list[float]) -> None:
    """Latency at fixed offered rates, fractions of the reference's measured capacity:
    below capacity nothing queues, so p99 is service time, not waiting time."""
    print(f"\nclosed loop: offered rates as fractions of the baseline+send capacity ({capacity:.0f} msg/s)")
    for load in loads:
        rate = capacity * load
        count = max(int(rate * 10), 20)  # about ten seconds of traffic
        with tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp, backends(Path(tmp)) as servers:
            ours = await balcao(servers.nats_url, servers.mongodb_uri, count, contacts, Path(tmp), rate=rate)
            base = await baseline(servers.nats_url, servers.mongodb_uri, count, contacts, send=True, rate=rate)
        print(
            f"  {load:.0%} load ({rate:.0f} msg/s): balcao p50 {ours['p50']:.0f} ms p99 {ours['p99']:.0f} ms, "
            f"baseline+send p50 {base['p50']:.0f} ms p99 {base['p99']:.0f} ms"
        )


async def run(messages: int, contacts: int, runs: int, loads: list[float], parts: list[str]) -> None:
    print(
        f"{messages} messages from {contacts} contacts, {runs} run(s); MongoDB: "
        f"{'external' if os.environ.get('MONGODB_URI') else 'SecantusDB'}"
    )
    results = []
    for number in range(1, runs + 1):
        print(f"run {number}")
        results.append(await one_run(messages, contacts, parts))
    median = {
        name: {figure: statistics.median(r[name][figure] for r in results) for figure in results[0][name]}
        for name in results[0]
    }
    print(f"\nmedian of {runs} run(s):")
    for name, figures in median.items():
        latency = f"  p50 {figures['p50']:>8.1f} ms  p99 {figures['p99']:>8.1f} ms" if "p50" in figures else ""
        print(f"  {name:<14} {figures['rate']:>7.0f} msg/s{latency}")
    if "intake" in parts:
        intake = [r["server"]["rate"] / r["raw intake"]["rate"] for r in results]
        print(
            f"server intake ratio server/raw intake (stored and reply published, no bot): median "
            f"{statistics.median(intake):.2f} (runs: {', '.join(f'{x:.2f}' for x in intake)})"
        )
    if "e2e" not in parts:
        return
    ratios = [r["balcao"]["rate"] / r["baseline"]["rate"] for r in results]
    like = [r["balcao"]["rate"] / r["baseline+send"]["rate"] for r in results]
    print(
        f"throughput ratio balcao/baseline (no Telegram send): median {statistics.median(ratios):.2f} "
        f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    print(
        f"throughput ratio balcao/baseline+send (same HTTP send): median {statistics.median(like):.2f} "
        f"(runs: {', '.join(f'{x:.2f}' for x in like)})"
    )
    print(f"p99 ratio balcao/baseline+send: {median['balcao']['p99'] / median['baseline+send']['p99']:.2f}")
    if loads:
        await closed_loop(median["baseline+send"]["rate"], messages, contacts, loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--contacts", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="bursts to take the median of")
    parser.add_argument(
        "--loads",
        type=float,
        nargs="*",
        default=[0.25, 0.5, 0.75],
        help="closed-loop offered rates, as fractions of the baseline's capacity (none: skip)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["intake", "e2e"],
        default=["intake", "e2e"],
        help="intake: the server alone against a raw pull consumer; e2e: bot to reply, against request/reply",
    )
    parser.add_argument(
        "--responder", nargs=3, metavar=("NATS_URL", "MONGODB_URI", "TELEGRAM_URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.responder:
        asyncio.run(baseline_responder(*args.responder))
    else:
        asyncio.run(run(args.messages, args.contacts, args.runs, args.loads, args.parts))


if __name__ == "__main__":
    main()
