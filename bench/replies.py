"""Replies at Telegram's limits: latency below the bot's 30 messages/s, and overload above it.

    .venv/bin/python -m bench.replies [--rates 28 35] [--seconds 40] [--contacts 300] [--profile DIR]

The whole desk (server, bot, nats-server, the database) against the fake Bot
API with flood control on, as strict as Telegram's: 30 messages in any
rolling second per bot, one a second per private chat (a short burst passes).
Contacts write at a steady offered rate, each contact every CONTACTS/rate
seconds, so no chat is owed more than a message a second; each message is
timed from its injection into the fake to its reply reaching the fake.

For each offered rate it prints the reply latency (p50, and p99 from 1,000
replies or more, else the maximum), the 429 answers the bot met, the most
sends the fake accepted in any rolling second, and the backlog left when the
offering stopped (replies still owed: a queue forms when the offered rate is
above what the bot may send). Each reply's time is split at the moment the
server stamped the message's `message.received` event, once stored: getting it
stored (the bot's relay, JetStream, the intake), then getting the reply out
(the reply's publish, the bot's fetch and pacing, the send).

Targets: at 28 msg/s p99 <= 100 ms; at 35 msg/s a queue forms and 0 x 429.
`--profile DIR` samples the server and the bot with py-spy while messages are
offered (bench/profiling.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench import method, profiling, stack
from bench.intake import TOKEN, WARM_CONTACT, profiled, until
from bench.reference.documents import REPLY
from bot.delivery import TELEGRAM_PER_SECOND
from contract.eventstream import EVENTS_STREAM, EVENTS_SUBJECT_ROOT, MESSAGE_RECEIVED
from devstack.faketelegram import FakeTelegram
from devstack.processes import free_port, wait_for_port

FIRST_CONTACT = 20_000
DEADLINE = 600.0


def most_in_a_second(times: list[float]) -> int:
    """The most events in any window of one second (the fake's clock)."""
    window: deque[float] = deque()
    most = 0
    for at in sorted(times):
        window.append(at)
        while window[0] <= at - 1.0:
            window.popleft()
        most = max(most, len(window))
    return most


async def offered(rate: float, seconds: float, contacts: int, work: Path, profile: Path | None) -> dict:
    count = max(int(rate * seconds), 1)
    with stack.fresh_stack(work) as run:
        fake = FakeTelegram(TOKEN)  # flood control on, as Telegram
        await fake.start(port=0)
        port = free_port()
        env = stack.balcao_env(
            run, port, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=fake.base_url, TELEGRAM_POLL_TIMEOUT="10"
        )
        server = stack.launch("server", "server", work=work, env=env, count_mongo=True)
        bot = stack.launch("bot", "bot", work=work, env=env)
        programs = [server, bot]
        try:
            wait_for_port(port, 60, server.popen)
            deadline = time.monotonic() + DEADLINE
            fake.inject_message({"id": WARM_CONTACT, "first_name": "Aquecimento"}, "primeira")
            await until(lambda: fake.sent_count >= 1, programs, deadline)
            # The warm-up's chat and rolling second clear while the idle processes are watched.
            idle, before = await stack.idle_then_snapshot(
                run, programs, {"server": "balcao-server", "bot": "balcao-bot"}
            )
            injected: list[tuple[int, float, str]] = []  # contact, when, the stored message's key
            with profiled(programs, profile, f"rate-{rate:g}"):
                started = time.monotonic()
                for n in range(count):
                    pause = started + n / rate - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    contact = FIRST_CONTACT + n % contacts
                    at = time.monotonic()
                    sent = fake.inject_message({"id": contact, "first_name": f"Contato {contact}"}, f"mensagem {n}")
                    injected.append((contact, at, f"telegram:{contact}:tg{sent['message_id']}"))
                stopped = time.monotonic()
                owed = count + 1 - fake.sent_count
                await until(lambda: fake.sent_count >= count + 1, programs, deadline)
            await asyncio.sleep(0.5)
            after = stack.snapshot(run, programs, {"server": "balcao-server", "bot": "balcao-bot"})
            stored_at = await stored_times(run.nats_url)
        finally:
            for program in reversed(programs):
                program.stop()
            await fake.stop()
    attempts = [a for a in fake.attempts() if a["method"] == "sendMessage" and a["at"] >= started]
    replies: dict[int, deque[float]] = {}
    for attempt in attempts:
        if attempt["status"] == 200 and attempt["text"] == REPLY:
            replies.setdefault(int(attempt["chat_id"]), deque()).append(attempt["at"])
    answered = [replies[contact].popleft() for contact, _, _ in injected]  # a chat's replies keep its order
    latencies = [reply - at for reply, (_, at, _) in zip(answered, injected)]
    # The server stamps `message.received` once it stored the message: the reply's
    # time splits there into getting it stored (bot relay, JetStream, intake) and
    # getting the reply out (reply publish, the bot's fetch, pacing, the send).
    wall = time.time() - time.monotonic()
    stages = [
        (stored_at[key] - wall - at, reply - (stored_at[key] - wall))
        for reply, (_, at, key) in zip(answered, injected)
        if key in stored_at
    ]
    accepted = [a["at"] for a in attempts if a["status"] == 200]
    figures = {
        "offered_rate": rate,
        "messages": count,
        "contacts": contacts,
        "latency": method.latency_figures(latencies),
        "stored": method.latency_figures([stored for stored, _ in stages]),
        "replied_after_stored": method.latency_figures([replied for _, replied in stages]),
        "too_many_requests": sum(1 for a in attempts if a["status"] == 429),
        "most_accepted_in_a_second": most_in_a_second(accepted),
        "delivered_rate": (len(accepted) - 1) / (max(accepted) - min(accepted)),
        "owed_when_offering_stopped": owed,
        "offering_seconds": stopped - started,
        **stack.usage(before, after, count, idle),
    }
    print(
        f"offered {rate:g} msg/s for {figures['offering_seconds']:.0f} s ({count} messages): "
        f"p50 {figures['latency']['p50_ms']:.0f} ms, {method.tail_text(figures['latency'])}; "
        f"{figures['too_many_requests']} x 429; at most {figures['most_accepted_in_a_second']} sends "
        f"in a rolling second; delivered {figures['delivered_rate']:.1f} msg/s; "
        f"{owed} replies owed when the offering stopped; of which stored p50 {figures['stored']['p50_ms']:.0f} ms "
        f"{method.tail_text(figures['stored'])}, then replied p50 {figures['replied_after_stored']['p50_ms']:.0f} ms "
        f"{method.tail_text(figures['replied_after_stored'])}",
        flush=True,
    )
    return figures


async def stored_times(nats_url: str) -> dict[str, float]:
    """Each stored message's key -> when the server stamped its `message.received` event (epoch s)."""
    nc = await nats.connect(nats_url, name="bench")
    js = nc.jetstream()
    expected = (await js.stream_info(EVENTS_STREAM)).state.messages
    found: dict[str, float] = {}
    seen = 0
    done = asyncio.Event()

    async def on_event(msg) -> None:
        nonlocal seen
        seen += 1
        body = json.loads(msg.data)
        if body["type"] == MESSAGE_RECEIVED:
            found[body["message"]["key"]] = dt.datetime.fromisoformat(body["at"].replace("Z", "+00:00")).timestamp()
        if seen >= expected:
            done.set()

    subscription = await js.subscribe(
        f"{EVENTS_SUBJECT_ROOT}.>",
        stream=EVENTS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        cb=on_event,
    )
    await asyncio.wait_for(done.wait(), 120)
    await subscription.unsubscribe()
    await nc.close()
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[28.0, 35.0], help="offered messages per second")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long each rate is offered")
    parser.add_argument("--contacts", type=int, default=300, help="contacts taking turns to write")
    parser.add_argument("--profile", type=Path, help="sample the server and the bot with py-spy into this folder")
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    for rate in args.rates:
        if args.contacts / rate < 1.0:
            parser.error(f"{args.contacts} contacts at {rate:g} msg/s would owe a chat more than one reply a second")
    with (
        method.recorded("replies", method.results_folder(args.results), argv) as record,
        tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp,
    ):
        runs = [
            asyncio.run(offered(rate, args.seconds, args.contacts, Path(tmp) / f"rate-{rate:g}", args.profile))
            for rate in args.rates
        ]
        record.figures = {"runs": runs, "telegram_per_second": TELEGRAM_PER_SECOND}
    if args.profile:
        for collapsed in sorted(args.profile.glob("*.txt")):
            print(profiling.summary(collapsed), "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
