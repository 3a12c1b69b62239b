"""Outbound benchmark: the real bot delivering the outbound stream at Telegram's limits.

Publishes MESSAGES outbound messages for CHATS private chats straight into the
outbound stream (plus one chat owed a BURST of messages, as when a contact
writes many times in a row), runs the real bot process against the fake Bot API
with flood control on (30 messages/s per bot, 1/s per private chat, 20/min per
channel), and prints the delivered rate against Telegram's 30/s, how many sends
met a 429 (in all and in steady state, after the first second), and how long the
other chats waited while the burst chat drained.

    .venv/bin/python -m bench.outbound [--messages 1800] [--chats 600] [--burst 40]

Targets: delivered rate >= 90 % of 30/s, 0 429s, and no chat's first message
waiting behind the burst. The fake's flood control counts Telegram's 30 per
rolling second (devstack/faketelegram/flood.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from bench import method
from contract.messaging import OUTBOUND_SUBJECT, OutboundMessage
from devstack.processes import NatsServer, free_port, wait_for_port
from runtime import jetstream

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "42:bench-outbound-token"
TELEGRAM_LIMIT = 30.0
FIRST_CHAT = 700_000
BURST_CHAT = 699_999


async def publish(nats_url: str, messages: int, chats: int, burst: int) -> int:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    published = 0
    pending = []
    # The burst goes first: the worst case for everyone queued behind it.
    for n in range(burst):
        message = OutboundMessage(key=f"burst:{n}", chat_id=str(BURST_CHAT), text=f"rajada {n}")
        pending.append(js.publish(OUTBOUND_SUBJECT, message.to_bytes(), headers={"Nats-Msg-Id": message.key}))
    for n in range(messages):
        chat = FIRST_CHAT + n % chats
        message = OutboundMessage(key=f"bench:{n}", chat_id=str(chat), text=f"mensagem {n}")
        pending.append(js.publish(OUTBOUND_SUBJECT, message.to_bytes(), headers={"Nats-Msg-Id": message.key}))
    for start in range(0, len(pending), 500):
        await asyncio.gather(*pending[start : start + 500])
        published += len(pending[start : start + 500])
    await nc.close()
    return published


def run(messages: int, chats: int, burst: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="balcao-outbound-") as tmp:
        work = Path(tmp)
        nats_server = NatsServer(data_dir=work / "nats")
        nats_server.start()
        port = free_port()
        logs = open(work / "processes.log", "ab")
        fake = subprocess.Popen(
            [sys.executable, "-m", "devstack.faketelegram", "--port", str(port), "--token", TOKEN],
            cwd=ROOT,
            stdout=logs,
            stderr=logs,
        )
        bot = None
        try:
            wait_for_port(port, 30, fake)
            control = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            for user in [BURST_CHAT, *range(FIRST_CHAT, FIRST_CHAT + chats)]:
                control.post("/_test/users", json={"id": user, "first_name": f"Contato {user}"}).raise_for_status()
            total = asyncio.run(publish(nats_server.url, messages, chats, burst))
            env = {
                **os.environ,
                "NATS_URL": nats_server.url,
                "TELEGRAM_BOT_TOKEN": TOKEN,
                "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{port}",
                "TELEGRAM_POLL_TIMEOUT": "10",
                "LOG_LEVEL": "warning",
            }
            env.pop("TELEGRAM_MAX_MESSAGES_PER_SECOND", None)  # the bot's default, one below Telegram's 30/s
            bot = subprocess.Popen([sys.executable, "-m", "bot"], env=env, cwd=ROOT, stdout=logs, stderr=logs)
            deadline = time.monotonic() + total / TELEGRAM_LIMIT * 3 + 60
            while control.get("/_test/stats").json()["sent"] < total:
                if time.monotonic() > deadline or bot.poll() is not None:
                    raise SystemExit("outbound benchmark did not finish; see the bot's log")
                time.sleep(0.5)
            attempts = [a for a in control.get("/_test/attempts").json()["attempts"] if a["method"] == "sendMessage"]
            return report(attempts, total, chats, burst)
        finally:
            if bot is not None:
                bot.terminate()
                bot.wait(30)
            fake.terminate()
            fake.wait(10)
            logs.close()
            nats_server.stop()


def report(attempts: list[dict], total: int, chats: int, burst: int) -> dict[str, Any]:
    sent = [a for a in attempts if a["status"] == 200]
    first, last = min(a["at"] for a in sent), max(a["at"] for a in sent)
    elapsed = last - first
    rate = (len(sent) - 1) / elapsed if elapsed > 0 else float("inf")
    limited = [a for a in attempts if a["status"] == 429]
    steady = [a for a in limited if a["at"] - first > 1.0]
    # Fairness: when did each other chat get its first message, against the burst's drain.
    burst_done = max(a["at"] for a in sent if a["chat_id"] == str(BURST_CHAT)) - first if burst else 0.0
    firsts: dict[str, float] = {}
    for attempt in sent:
        firsts.setdefault(attempt["chat_id"], attempt["at"] - first)
    others = sorted(at for chat, at in firsts.items() if chat != str(BURST_CHAT))
    ideal_last_first = chats / TELEGRAM_LIMIT  # every chat once, at the overall limit
    print(f"{len(sent)} messages delivered to {chats} chats (+1 chat owed a burst of {burst}) in {elapsed:.1f} s")
    print(
        f"delivered rate:            {rate:6.1f} msg/s = {rate / TELEGRAM_LIMIT:6.1%} of Telegram's "
        f"{TELEGRAM_LIMIT:.0f}/s (target >= 90 %)"
    )
    print(f"429 answers:               {len(limited):6d} in all (target 0), {len(steady)} after the first second")
    print(f"burst chat drained after:  {burst_done:6.1f} s (1/s per chat)")
    print(
        f"last other chat's first message after {others[-1]:.1f} s "
        f"(every chat once at 30/s takes {ideal_last_first:.1f} s)"
    )
    ok = rate >= 0.9 * TELEGRAM_LIMIT and not limited
    print(f"targets {'met' if ok else 'missed'}")
    if len(sent) != total:
        raise SystemExit(f"{len(sent)} of {total} messages delivered")
    return {
        "messages": total,
        "chats": chats,
        "burst": burst,
        "seconds": elapsed,
        "delivered_rate": rate,
        "share_of_limit": rate / TELEGRAM_LIMIT,
        "too_many_requests": len(limited),
        "too_many_requests_after_first_second": len(steady),
        "burst_drained_seconds": burst_done,
        "last_first_message_seconds": others[-1],
        "ideal_last_first_message_seconds": ideal_last_first,
        "met": ok,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1800, help="messages spread over the chats")
    parser.add_argument("--chats", type=int, default=600, help="private chats they go to")
    parser.add_argument("--burst", type=int, default=40, help="messages owed to one extra chat")
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    with method.recorded("outbound", method.results_folder(args.results), argv) as record:
        record.figures = run(args.messages, args.chats, args.burst)


if __name__ == "__main__":
    main(sys.argv[1:])
