"""Import benchmark: a generated file through the CLI into the server, against a raw importer.

    .venv/bin/python -m bench.imports [--sessions 20000] [--messages 3] [--pairs 3] [--large]

Pairs, each on a fresh nats-server and database: Balcão (the server running,
`python -m cli import FILE` timed from its start to its exit, then the same
file imported again, every record `unchanged`), then the reference
(`bench.reference.importer`: csv, orjson and `insert_many` in one process,
timed the same way from start to exit). The ratio is the median of the
pairs' ratios of sessions per second.

Also: the peak RSS (VmHWM) of the server, the CLI and the reference; the
MongoDB commands each sent per 1,000 sessions; and CPU-seconds per 1,000
sessions of every process. `--large` gives SecantusDB the cache and oplog a
load past 100,000 sessions needs; `--profile DIR` samples the server and the
CLI with py-spy while they import (bench/profiling.py). The server's
figures leave out what it does idle (its outbox relay's and reaper's polls),
watched for 2 s before each import.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import method, profiling, stack
from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from devstack.processes import free_port, wait_for_port


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie reports no memory


def generate(path: Path, sessions: int, messages: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        write_sessions(generate_sessions(sessions, messages_per_session=messages), out, "csv")


def timed(program: stack.Program, watched: list[stack.Program]) -> dict[str, Any]:
    """Wait for `program` to exit, sampling the peak memory of it and of `watched` meanwhile;
    its CPU-seconds come from the kernel's account of the child once reaped."""
    peak = {p.name: 0.0 for p in [program, *watched]}
    reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    while program.popen.poll() is None:  # /proc is gone once it is reaped: sample meanwhile
        for p in [program, *watched]:
            try:
                peak[p.name] = max(peak[p.name], peak_rss_mb(p.pid))
            except OSError:
                pass
        time.sleep(0.1)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    if program.popen.returncode != 0:
        program.check_running()
    cpu = (reaped.ru_utime + reaped.ru_stime) - (reaped_before.ru_utime + reaped_before.ru_stime)
    return {"peak_rss_mb": peak, "cpu": {program.name: cpu}}


def one_import(
    run: stack.Stack, side: str, path: Path, sessions: int, messages: int, profile: Path | None = None
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if side == "reference":
        before = run.server_cpu()
        started = time.monotonic()
        reference = stack.launch(
            "reference-importer", "bench.reference.importer", str(path), run.mongodb_uri, work=run.work, env={},
            count_mongo=True,
        )  # fmt: skip
        watched = timed(reference, [])
        elapsed = time.monotonic() - started
        commands = sum(reference.mongo_commands().values())
        cpu = {"reference-importer": watched["cpu"]["reference-importer"]}
        after = run.server_cpu()
        figures["import"] = measured(sessions, elapsed, watched, cpu, before, after, {"reference-importer": commands})
    else:
        port = free_port()
        env = stack.balcao_env(run, port, BALCAO_API_URL=f"http://127.0.0.1:{port}", BALCAO_API_TOKEN=stack.API_TOKEN)
        server = stack.launch("server", "server", work=run.work, env=env, count_mongo=True)
        try:
            wait_for_port(port, 60, server.popen)
            for name in ("import", "reimport"):
                # The server's idle polls go on during the import: their rate is taken out.
                idle_cpu, idle_commands = server.cpu_seconds(), sum(server.mongo_commands().values())
                time.sleep(stack.IDLE_WINDOW)
                before = run.server_cpu()
                server_cpu, server_commands = server.cpu_seconds(), sum(server.mongo_commands().values())
                idle_cpu = (server_cpu - idle_cpu) / stack.IDLE_WINDOW
                idle_commands = (server_commands - idle_commands) / stack.IDLE_WINDOW
                started = time.monotonic()
                cli = stack.launch(
                    f"cli-{name}", "cli", "import", str(path), "--channel", "@bench_channel",
                    "--state-dir", str(run.work / f"state-{name}"), work=run.work, env=env,
                )  # fmt: skip
                with contextlib.ExitStack() as sampling:
                    for program in [server, cli] if profile else []:
                        output = profile / f"{run.work.name}-{name}-{program.name}.txt"
                        sampling.enter_context(profiling.sampled(program.pid, output))
                    watched = timed(cli, [server])
                elapsed = time.monotonic() - started
                cpu = {
                    "cli": watched["cpu"][cli.name],
                    "server": max(server.cpu_seconds() - server_cpu - idle_cpu * elapsed, 0.0),
                }
                sent = sum(server.mongo_commands().values()) - server_commands
                commands = {"server": max(sent - idle_commands * elapsed, 0.0)}
                figures[name] = measured(sessions, elapsed, watched, cpu, before, run.server_cpu(), commands)
                figures[name]["peak_rss_mb"] = {
                    "cli": watched["peak_rss_mb"][cli.name],
                    "server": watched["peak_rss_mb"]["server"],
                }
        finally:
            server.stop()
    check_stored(run, sessions, messages)
    line = ", ".join(f"{name} {f['rate']:,.0f} sessions/s ({f['seconds']:.1f} s)" for name, f in figures.items())
    memory = figures["import"]["peak_rss_mb"]
    print(f"  {side:<10} {line}; peak RSS {', '.join(f'{k} {v:.0f} MB' for k, v in memory.items())}", flush=True)
    return figures


def measured(
    sessions: int,
    elapsed: float,
    watched: dict,
    cpu: dict[str, float],
    before: dict[str, float],
    after: dict[str, float],
    commands: dict[str, float],
) -> dict[str, Any]:
    per_thousand = 1000 / sessions
    return {
        "rate": sessions / elapsed,
        "seconds": elapsed,
        "peak_rss_mb": watched["peak_rss_mb"],
        "cpu_seconds_per_1000": {
            **{name: round(value * per_thousand, 3) for name, value in cpu.items()},
            **{name: round((after[name] - before[name]) * per_thousand, 3) for name in after},
        },
        "mongo_commands_per_1000": {name: round(count * per_thousand, 2) for name, count in commands.items()},
    }


def check_stored(run: stack.Stack, sessions: int, messages: int) -> None:
    database = run.database()
    stored = database.sessions.count_documents({}), database.messages.count_documents({})
    database.client.close()
    if stored != (sessions, sessions * messages):
        raise AssertionError(f"expected {sessions} sessions and {sessions * messages} messages, found {stored}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20_000, help="sessions in the generated CSV file")
    parser.add_argument("--messages", type=int, default=3, help="messages per session")
    parser.add_argument("--pairs", type=int, default=method.MIN_PAIRS)
    parser.add_argument("--large", action="store_true", help="SecantusDB sized for hundreds of thousands")
    parser.add_argument("--profile", type=Path, help="sample the server and the CLI with py-spy into this folder")
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    with (
        method.recorded("imports", method.results_folder(args.results), argv) as record,
        tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp,
    ):
        work = Path(tmp)
        path = work / "sessions.csv"
        generate(path, args.sessions, args.messages)
        size = path.stat().st_size / 2**20
        print(f"{args.sessions:,} sessions, {args.messages} messages each ({size:.1f} MiB CSV), {args.pairs} pair(s)")
        runs = []
        for pair, side in method.alternate(args.pairs):
            with stack.fresh_stack(work / f"{pair}-{side}", large=args.large) as run:
                figures = one_import(run, side, path, args.sessions, args.messages, args.profile)
                runs.append({"pair": pair, "side": side, **figures})
        summary = summarise(runs)
        print(
            f"ratio Balcão/reference (median of {args.pairs}): {summary['ratio']:.2f} "
            f"(pairs: {', '.join(f'{r:.2f}' for r in summary['ratios'])}); re-import of unchanged records "
            f"{summary['balcao']['reimport_rate']:,.0f} sessions/s against {summary['balcao']['rate']:,.0f} creating"
        )
        record.figures = {
            "sessions": args.sessions,
            "messages_per_session": args.messages,
            "file_mib": size,
            "pairs": args.pairs,
            "summary": summary,
            "runs": runs,
        }
    if args.profile:
        for collapsed in sorted(args.profile.glob("*.txt")):
            print(profiling.summary(collapsed), "\n")


def summarise(runs: list[dict]) -> dict[str, Any]:
    def median_of(side: str, phase: str, *path: str) -> Any:
        values = []
        for run in runs:
            if run["side"] == side:
                value = run[phase]
                for key in path:
                    value = value[key]
                values.append(value)
        if isinstance(values[0], dict):
            return {key: statistics.median(v[key] for v in values) for key in values[0]}
        return statistics.median(values)

    balcao = {
        "rate": median_of("balcao", "import", "rate"),
        "reimport_rate": median_of("balcao", "reimport", "rate"),
        "peak_rss_mb": median_of("balcao", "import", "peak_rss_mb"),
        "cpu_seconds_per_1000": median_of("balcao", "import", "cpu_seconds_per_1000"),
        "reimport_cpu_seconds_per_1000": median_of("balcao", "reimport", "cpu_seconds_per_1000"),
        "mongo_commands_per_1000": median_of("balcao", "import", "mongo_commands_per_1000"),
        "reimport_mongo_commands_per_1000": median_of("balcao", "reimport", "mongo_commands_per_1000"),
    }
    reference = {
        "rate": median_of("reference", "import", "rate"),
        "peak_rss_mb": median_of("reference", "import", "peak_rss_mb"),
        "cpu_seconds_per_1000": median_of("reference", "import", "cpu_seconds_per_1000"),
        "mongo_commands_per_1000": median_of("reference", "import", "mongo_commands_per_1000"),
    }
    pairs: dict[int, dict[str, float]] = {}
    for run in runs:
        pairs.setdefault(run["pair"], {})[run["side"]] = run["import"]["rate"]
    return {
        "balcao": balcao,
        "reference": reference,
        **method.median_ratio([(p["balcao"], p["reference"]) for p in pairs.values()]),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
