"""Intake benchmark: Balcão against the batched reference a strong engineer would write.

    .venv/bin/python -m bench.intake [--parts intake existing e2e] [--messages 1000]
        [--contacts 100] [--pairs 3] [--durability nats-sync mongo-journal nats-sync+mongo-journal]

Three parts, each run as pairs (Balcão, then its reference, each on a fresh
nats-server and database; the ratio is the median of the pairs' ratios):

- `intake`: the server alone. A burst of MESSAGES messages from CONTACTS new
  contacts is published into the inbound stream as the bot publishes them
  (Nats-Msg-Id, JetStream ack), and timed until every message is acknowledged
  (stored, replied to and its events published). The reference is
  `bench.reference.intake`: a batched raw nats-py + pymongo pipeline.
- `existing`: the same, into sessions the contacts already have (an untimed
  burst first opens them).
- `e2e`: end to end through the fake Bot API: one message from each of
  MESSAGES contacts is injected at once and timed until its reply reached the
  fake. Each contact is owed one reply, so the bot's pacing of one message a
  second per chat never binds; the bot's overall rate is raised and the fake's
  flood control is off (`bench.replies` measures at Telegram's limits). The
  reference is the intake reference plus `bench.reference.telegram` (a raw
  poller relaying to JetStream, and a raw sender with the same 32 sends in
  flight as Balcão's bot).

Beside the rates: MongoDB commands per message (counted in the server's and
the reference's own process by `bench.probe`), NATS messages each process
sent per message (nats-server's /connz), and CPU-seconds per 1,000 messages
of every process (server, bot, references, nats-server, SecantusDB).

`--durability nats-sync mongo-journal` runs `intake` and `e2e` again with
JetStream fsyncing every write and with MongoDB journaling every write, each
beside its own reference under the same settings (see bench/stack.py).

`--profile DIR` samples every measured process with py-spy during the timed
part (bench/profiling.py), keeps the collapsed stacks in DIR and prints where
each process spent its time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from bench import method, profiling, stack
from bench.reference import documents as d
from contract.eventstream import EVENTS_STREAM
from contract.messaging import INBOUND_CONSUMER, INBOUND_STREAM, INBOUND_SUBJECT, OUTBOUND_STREAM
from devstack.faketelegram import FakeTelegram
from devstack.processes import free_port, wait_for_port

TOKEN = "42:bench-token"
FIRST_CONTACT = 10_000
# One contact that warms each pipeline up (imports, connections, caches) before timing.
WARM_CONTACT = 9_999
SETTLE = 0.5  # after the last reply: acknowledgements and markers land before counting
DEADLINE = 900.0


def inbound(n: int, contacts: int, message_id: int) -> tuple[bytes, str]:
    """The bot's inbound payload for the n-th message of a burst, and its Nats-Msg-Id."""
    contact = FIRST_CONTACT + n % contacts
    body = {
        "platform": d.PLATFORM,
        "contact_identifier": str(contact),
        "chat_id": contact,
        "message_id": message_id,
        "name": f"Contato {contact}",
        "text": f"mensagem {n}",
        "sent_at": "2026-11-30T12:00:00+00:00",
    }
    return d.encode(body), f"{d.PLATFORM}:{contact}:{message_id}"


async def publish_burst(js, messages: int, contacts: int, first_id: int) -> None:
    """As the bot relays: each message with its Nats-Msg-Id, acknowledged by JetStream;
    `first_id` keeps every burst's ids apart, or de-duplication would drop messages."""
    for first in range(0, messages, 200):
        payloads = [inbound(n, contacts, first_id + n) for n in range(first, min(first + 200, messages))]
        await asyncio.gather(
            *(js.publish(INBOUND_SUBJECT, data, headers={"Nats-Msg-Id": dedup}) for data, dedup in payloads)
        )


async def drained(js, program: stack.Program, deadline: float) -> None:
    """Until the inbound stream is empty: every message acknowledged."""
    while (await js.stream_info(INBOUND_STREAM)).state.messages:
        program.check_running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{program.name} did not acknowledge the burst in time; see {program.log_path}")
        await asyncio.sleep(0.02)


async def wait_for_consumer(js, stream: str, consumer: str, program: stack.Program) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await js.consumer_info(stream, consumer)
            return
        except nats.js.errors.NotFoundError:
            program.check_running()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def wait_ready(program: stack.Program) -> None:
    line = program.popen.stdout.readline().strip()
    if line != "ready":
        program.check_running()
        raise RuntimeError(f"{program.name} said {line!r} instead of ready")


def start_server_side(run: stack.Stack, side: str, work: Path) -> tuple[stack.Program, str]:
    """Balcão's server or the intake reference; its NATS connection's name."""
    if side == "balcao":
        port = free_port()
        server = stack.launch("server", "server", work=work, env=stack.balcao_env(run, port), count_mongo=True)
        wait_for_port(port, 60, server.popen)
        return server, "balcao-server"
    reference = stack.launch(
        "reference-intake",
        "bench.reference.intake",
        run.nats_url,
        run.mongodb_uri,
        work=work,
        env={},
        count_mongo=True,
        stdout=subprocess.PIPE,
    )
    wait_ready(reference)
    return reference, "bench-reference-intake"


def check_stored(run: stack.Stack, messages: int, sessions: int) -> None:
    """Both sides must have done the whole work: every message stored once, and counted."""
    database = run.database()
    stored = database.messages.count_documents({})
    opened = database.sessions.count_documents({})
    counted = sum(doc.get("message_count", 0) for doc in database.sessions.find({}, {"message_count": 1}))
    if (stored, opened, counted) != (messages, sessions, messages):
        raise AssertionError(
            f"expected {messages} messages in {sessions} sessions; found {stored} messages, "
            f"{opened} sessions counting {counted}"
        )
    database.client.close()


def profiled(programs: list[stack.Program], folder: Path | None, label: str) -> contextlib.ExitStack:
    """py-spy samples each program while the block runs (nothing when `folder` is None)."""
    sampling = contextlib.ExitStack()
    for program in programs if folder is not None else []:
        sampling.enter_context(profiling.sampled(program.pid, folder / f"{label}-{program.name}.txt"))
    return sampling


async def server_intake(
    run: stack.Stack, side: str, messages: int, contacts: int, existing: bool, profile: Path | None, label: str
) -> dict:
    nc = await nats.connect(run.nats_url, name="bench")
    js = nc.jetstream()
    program, connection = start_server_side(run, side, run.work)
    try:
        if side == "balcao":
            await wait_for_consumer(js, INBOUND_STREAM, INBOUND_CONSUMER, program)
        deadline = time.monotonic() + DEADLINE
        first_id = 1
        if existing:  # opens every contact's session, untimed
            await publish_burst(js, messages, contacts, first_id)
            await drained(js, program, deadline)
            first_id += messages
        idle, before = await stack.idle_then_snapshot(run, [program], {program.name: connection})
        with profiled([program], profile, label):
            started = time.monotonic()
            await publish_burst(js, messages, contacts, first_id)
            await drained(js, program, deadline)
            elapsed = time.monotonic() - started
        await asyncio.sleep(SETTLE)
        after = stack.snapshot(run, [program], {program.name: connection})
        total = messages * (2 if existing else 1)
        check_stored(run, total, contacts)
        replies = (await js.stream_info(OUTBOUND_STREAM)).state.messages
        events = (await js.stream_info(EVENTS_STREAM)).state.messages
        if replies != total or events != total + contacts:
            raise AssertionError(f"{side}: {replies} replies and {events} events for {total} messages")
    finally:
        program.stop()
        await nc.close()
    figures = {"rate": messages / elapsed, "seconds": elapsed, **stack.usage(before, after, messages, idle)}
    print(f"  {side:<10} {figures['rate']:8.0f} msg/s acknowledged  {brief(figures)}", flush=True)
    return figures


def brief(figures: dict) -> str:
    cpu = ", ".join(f"{name} {value:.2f}" for name, value in figures["cpu_seconds_per_1000"].items())
    commands = ", ".join(f"{name} {value:.3f}" for name, value in figures["mongo_commands_per_message"].items())
    return f"CPU-s/1000: {cpu}; MongoDB commands/msg: {commands}"


async def end_to_end(run: stack.Stack, side: str, messages: int, profile: Path | None, label: str) -> dict:
    fake = FakeTelegram(TOKEN)
    fake.flood_control.enabled = False  # Telegram's limits are bench.replies' subject
    await fake.start(port=0)
    programs: list[stack.Program] = []
    try:
        server, server_connection = start_server_side(run, side, run.work)
        programs.append(server)
        if side == "balcao":
            env = stack.balcao_env(
                run,
                free_port(),
                TELEGRAM_BOT_TOKEN=TOKEN,
                TELEGRAM_API_BASE_URL=fake.base_url,
                TELEGRAM_POLL_TIMEOUT="10",
                TELEGRAM_MAX_MESSAGES_PER_SECOND="100000",
            )
            bot = stack.launch("bot", "bot", work=run.work, env=env)
            connections = {"server": server_connection, "bot": "balcao-bot"}
        else:
            bot = stack.launch(
                "reference-telegram",
                "bench.reference.telegram",
                run.nats_url,
                f"{fake.base_url}/bot{TOKEN}",
                work=run.work,
                env={},
                stdout=subprocess.PIPE,
            )
            await asyncio.get_running_loop().run_in_executor(None, wait_ready, bot)
            connections = {"reference-intake": server_connection, "reference-telegram": "bench-reference-telegram"}
        programs.append(bot)
        deadline = time.monotonic() + DEADLINE
        fake.inject_message({"id": WARM_CONTACT, "first_name": "Aquecimento"}, "primeira")
        await until(lambda: fake.sent_count >= 1, programs, deadline)
        idle, before = await stack.idle_then_snapshot(run, programs, connections)
        injected: dict[int, float] = {}
        with profiled(programs, profile, label):
            for n in range(messages):
                contact = FIRST_CONTACT + n
                injected[contact] = time.monotonic()
                fake.inject_message({"id": contact, "first_name": f"Contato {contact}"}, f"mensagem {n}")
                if n % 50 == 0:
                    await asyncio.sleep(0)  # the fake answers the pollers on this loop too
            await until(lambda: fake.sent_count >= messages + 1, programs, deadline)
        await asyncio.sleep(SETTLE)
        after = stack.snapshot(run, programs, connections)
        answered: dict[int, list[float]] = {}
        for attempt in fake.attempts():
            if attempt["status"] == 200 and attempt["text"] == d.REPLY:
                answered.setdefault(int(attempt["chat_id"]), []).append(attempt["at"])
        repeated = {chat: times for chat, times in answered.items() if len(times) != 1}
        if repeated or len(answered) != messages + 1:
            raise AssertionError(f"{side}: {len(answered)} chats answered, {len(repeated)} more than once")
        check_stored(run, messages + 1, messages + 1)
    finally:
        for program in reversed(programs):
            program.stop()
        await fake.stop()
    latencies = [answered[contact][0] - at for contact, at in injected.items()]
    elapsed = max(answered[contact][0] for contact in injected) - min(injected.values())
    figures = {
        "rate": messages / elapsed,
        "seconds": elapsed,
        "latency": method.latency_figures(latencies),
        **stack.usage(before, after, messages, idle),
    }
    print(
        f"  {side:<10} {figures['rate']:8.0f} msg/s replied  p50 {figures['latency']['p50_ms']:.0f} ms "
        f"{method.tail_text(figures['latency'])}  {brief(figures)}",
        flush=True,
    )
    return figures


async def until(check, programs: list[stack.Program], deadline: float) -> None:
    while not check():
        for program in programs:
            program.check_running()
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish in time; see the logs in its work folder")
        await asyncio.sleep(0.02)


# The durability variants run these parts: new contacts and end to end are what a deployment's choice moves.
DURABILITY_PARTS = ("intake", "e2e")
CASES = {
    "intake": "server intake, new contacts",
    "existing": "server intake, existing sessions",
    "e2e": "end to end, one message per contact",
}


def run_case(part: str, durability: stack.Durability, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    contacts = args.messages if part == "e2e" else args.contacts
    print(
        f"\n{CASES[part]}: {args.messages} messages from {contacts} contacts, {args.pairs} pair(s), "
        f"{durability.description}",
        flush=True,
    )
    runs = []
    for pair, side in method.alternate(args.pairs):
        label = f"{part}-{durability.name}-{pair}-{side}"
        with stack.fresh_stack(work / label, durability) as run:
            if part == "e2e":
                figures = asyncio.run(end_to_end(run, side, args.messages, args.profile, label))
            else:
                figures = asyncio.run(
                    server_intake(run, side, args.messages, contacts, part == "existing", args.profile, label)
                )
        runs.append({"pair": pair, "side": side, **figures})
    summary = summarise(runs)
    print(
        f"  ratio Balcão/reference (median of {args.pairs}): {summary['ratio']:.2f} "
        f"(pairs: {', '.join(f'{r:.2f}' for r in summary['ratios'])})",
        flush=True,
    )
    return {
        "part": part,
        "case": CASES[part],
        "durability": durability.name,
        "durability_description": durability.description,
        "messages": args.messages,
        "contacts": contacts,
        "pairs": args.pairs,
        "summary": summary,
        "runs": runs,
    }


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Medians of each side's figures over the pairs, and the median of the pairs' ratios."""
    sides: dict[str, Any] = {}
    for side in ("balcao", "reference"):
        mine = [run for run in runs if run["side"] == side]
        sides[side] = {
            "rate": statistics.median(run["rate"] for run in mine),
            "rates": [run["rate"] for run in mine],
            **{
                figure: {
                    name: statistics.median(run[figure][name] for run in mine)
                    for name in mine[0][figure]
                    if all(name in run[figure] for run in mine)
                }
                for figure in (
                    "cpu_seconds_per_1000",
                    "mongo_commands_per_message",
                    "nats_messages_sent_per_message",
                )
            },
        }
        if "latency" in mine[0]:
            sides[side]["latency"] = {
                name: statistics.median(run["latency"][name] for run in mine)
                for name in mine[0]["latency"]
                if all(name in run["latency"] for run in mine)
            }
    pairs = {}
    for run in runs:
        pairs.setdefault(run["pair"], {})[run["side"]] = run["rate"]
    return {
        **sides,
        **method.median_ratio([(pair["balcao"], pair["reference"]) for pair in pairs.values()]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--messages", type=int, default=1000, help="messages per timed burst")
    parser.add_argument("--contacts", type=int, default=100, help="contacts of the server-intake bursts")
    parser.add_argument("--pairs", type=int, default=method.MIN_PAIRS, help="Balcão/reference pairs per case")
    parser.add_argument(
        "--durability",
        nargs="*",
        choices=[name for name in stack.DURABILITY if name != "default"],
        default=[],
        help="also run the `intake` and `e2e` parts with these server settings (see bench/stack.py)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample every measured process with py-spy into this folder (collapsed stacks), and summarise",
    )
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    with (
        method.recorded("intake", method.results_folder(args.results), argv) as record,
        tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp,
    ):
        plan = [(part, "default") for part in args.parts]
        plan += [(part, name) for name in args.durability for part in args.parts if part in DURABILITY_PARTS]
        record.figures = {"cases": [run_case(part, stack.DURABILITY[name], args, Path(tmp)) for part, name in plan]}
    if args.profile:
        for collapsed in sorted(args.profile.glob("*.txt")):
            print(profiling.summary(collapsed), "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
