"""Render docs/benchmarks.md from the latest results in bench/results/.

    .venv/bin/python -m bench.report [--results DIR] [--output FILE] [--check]

`make bench` runs every benchmark (each writes bench/results/<name>.json) and
then this. The page states each run's command, commit, date, load and other
work, and every figure comes from the JSON: nothing on it is typed by hand.
`--check` exits 1 when the page differs from what the results render.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.method import MIN_PAIRS, P99_MIN_SAMPLES, RESULTS, ROOT

OUTPUT = ROOT / "docs" / "benchmarks.md"
ORDER = ("intake", "replies", "imports", "sessions", "eventlatency", "outbound", "csv_reading")
COMMANDS = {
    "intake": ".venv/bin/python -m bench.intake",
    "replies": ".venv/bin/python -m bench.replies",
    "imports": ".venv/bin/python -m bench.imports",
    "sessions": ".venv/bin/python -m bench.sessions",
    "eventlatency": ".venv/bin/python -m bench.eventlatency",
    "outbound": ".venv/bin/python -m bench.outbound",
    "csv_reading": ".venv/bin/python -m bench.csv_reading",
}
TITLES = {
    "intake": "Intake: server alone and end to end",
    "replies": "Replies at Telegram's limits",
    "imports": "Imports through the CLI",
    "sessions": "Sessions API: listing and search",
    "eventlatency": "Live events over WebSocket",
    "outbound": "Outbound delivery at Telegram's limits",
    "csv_reading": "Reading the CSV import format",
}


def load(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def tail(figures: dict[str, Any]) -> str:
    """`p99 12.3 ms`, or `max 12.3 ms (n=100)` under 1,000 samples."""
    if "p99_ms" in figures:
        return f"p99 {ms(figures['p99_ms'])}"
    return f"max {ms(figures['max_ms'])} (n={figures['samples']:,})"


def ratio_cell(summary: dict[str, Any]) -> str:
    pairs = ", ".join(f"{r:.2f}" for r in summary["ratios"])
    return f"**{summary['ratio']:.2f}** ({pairs})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def run_line(result: dict[str, Any]) -> list[str]:
    dirty = " with uncommitted changes" if result.get("dirty") else ""
    other = "yes" if result.get("other_work") else "no"
    load_before = ", ".join(str(x) for x in result["load_before"])
    load_after = ", ".join(str(x) for x in result["load_after"])
    return [
        f"`{result['command']}` at commit `{result['commit']}`{dirty}, {when(result['started'])}, "
        f"{result['seconds']:,.0f} s on {result['cores']} cores with {result['mongodb']}"
        f"{', data on ' + result['storage'] if result.get('storage') else ''}. Load average "
        f"(1, 5, 15 min) {load_before} before and {load_after} after; other work on the machine: {other} "
        f"({result['other_cpu_seconds']:,.0f} CPU-s beside this run's own {result['own_cpu_seconds']:,.0f}).",
        "",
    ]


def when(started: str) -> str:
    """`2026-12-07 16:25 UTC` from the record's ISO time."""
    return started[:16].replace("T", " ") + " UTC"


def per_process(figures: dict[str, float], digits: int = 2) -> str:
    return ", ".join(f"{name} {value:.{digits}f}" for name, value in figures.items())


def intake(result: dict[str, Any]) -> list[str]:
    lines = [
        "Balcão against the batched reference (`bench/reference/intake.py`, and `bench/reference/telegram.py` "
        "end to end). Rates are messages acknowledged (server) or replied to (end to end) per second; the ratio "
        "is Balcão / reference, the median of the pairs' ratios (each pair's in brackets). Targets: server "
        "intake and end to end >= 0.9x the reference.",
        "",
    ]
    rows = []
    for case in result["figures"]["cases"]:
        s = case["summary"]
        latency = ""
        if "latency" in s["balcao"]:
            latency = f"p50 {ms(s['balcao']['latency']['p50_ms'])}, {tail(s['balcao']['latency'])}"
        rows.append(
            [
                case["case"],
                case["durability"],
                f"{case['messages']:,} / {case['contacts']:,}",
                number(s["balcao"]["rate"]),
                number(s["reference"]["rate"]),
                ratio_cell(s),
                "met" if s["ratio"] >= 0.9 else "missed",
                latency or "–",
            ]
        )
    lines += table(
        [
            "case",
            "durability",
            "messages / contacts",
            "Balcão msg/s",
            "reference msg/s",
            "ratio (pairs)",
            ">= 0.9",
            "Balcão burst latency",
        ],
        rows,
    )
    lines += [
        "",
        "Per message, and CPU-seconds per 1,000 messages of each process (medians of the runs), less what "
        "each process does when idle (watched for 2 s before each timed window: the outbox relay's and the "
        "reaper's polls, empty fetches):",
        "",
    ]
    rows = []
    for case in result["figures"]["cases"]:
        s = case["summary"]
        for side in ("balcao", "reference"):
            rows.append(
                [
                    f"{case['case']} ({case['durability']})",
                    "Balcão" if side == "balcao" else "reference",
                    per_process(s[side]["mongo_commands_per_message"], 3),
                    per_process(s[side]["nats_messages_sent_per_message"], 2),
                    per_process(s[side]["cpu_seconds_per_1000"], 2),
                ]
            )
    lines += table(
        ["case", "side", "MongoDB commands / message", "NATS messages sent / message", "CPU-s / 1,000 messages"],
        rows,
    )
    descriptions = sorted({(c["durability"], c["durability_description"]) for c in result["figures"]["cases"]})
    lines += ["", *(f"- `{name}`: {text}." for name, text in descriptions)]
    end_to_end = [c for c in result["figures"]["cases"] if c["part"] == "e2e" and c["durability"] == "default"]
    if end_to_end:
        cpu = end_to_end[0]["summary"]["balcao"]["cpu_seconds_per_1000"]
        carried = ", ".join(f"{name} {1000 / value:,.0f}" for name, value in cpu.items() if value > 0)
        lines += [
            "",
            f"Sizing (`docs/scaling.md`): at these CPU-seconds per 1,000 messages end to end, one core carries "
            f"about this many messages a second of each process's work: {carried}.",
        ]
    return lines


def replies(result: dict[str, Any]) -> list[str]:
    lines = [
        "The whole desk against the fake Bot API with flood control as strict as Telegram's (30 sends in any "
        "rolling second per bot, one a second per private chat). Each reply's time splits where the server "
        "stamped the message's `message.received` event: stored after (the bot's relay, JetStream, the intake), "
        "then replied after (the reply's publish, the bot's fetch and pacing, the send). Targets: at 28 msg/s "
        "reply p99 <= 100 ms; at 35 msg/s a queue forms and 0 x 429.",
        "",
    ]
    rows = []
    for run in result["figures"]["runs"]:
        latency = run["latency"]
        rows.append(
            [
                f"{run['offered_rate']:g} msg/s ({run['messages']:,} messages, {run['contacts']:,} contacts)",
                ms(latency["p50_ms"]),
                tail(latency),
                f"{run['too_many_requests']:,}",
                str(run["most_accepted_in_a_second"]),
                number(run["delivered_rate"], 1),
                f"{run['owed_when_offering_stopped']:,}",
                f"{ms(run['stored']['p50_ms'])}, {tail(run['stored'])}",
                f"{ms(run['replied_after_stored']['p50_ms'])}, {tail(run['replied_after_stored'])}",
                per_process(run["cpu_seconds_per_1000"], 2),
            ]
        )
    return lines + table(
        [
            "offered",
            "reply p50",
            "tail",
            "429s",
            "most sends in a rolling second",
            "delivered msg/s",
            "replies owed when offering stopped",
            "stored after",
            "then replied after",
            "CPU-s / 1,000 messages",
        ],
        rows,
    )


def imports(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    s = f["summary"]
    b, r = s["balcao"], s["reference"]
    lines = [
        f"{f['sessions']:,} generated sessions with {f['messages_per_session']} messages each "
        f"({f['file_mib']:.1f} MiB CSV). Balcão: `python -m cli import` into a running server, timed from the CLI's "
        "start to its exit, then the same file again (every record `unchanged`). Reference: "
        "`bench/reference/importer.py` (csv, orjson, `insert_many`), timed the same way. The server's commands "
        "and CPU leave out what it does idle (watched for 2 s before each import). Targets: >= 0.9x the "
        "reference; peak RSS under 100 MB (server) and 200 MB (CLI); re-import at least as fast as creating.",
        "",
    ]
    rows = [
        [
            "Balcão",
            number(b["rate"]),
            ratio_cell(s),
            f"{number(b['reimport_rate'])} ({b['reimport_rate'] / b['rate']:.2f}x creating)",
            per_process(b["peak_rss_mb"], 0),
            per_process(b["mongo_commands_per_1000"], 1),
            per_process(b["cpu_seconds_per_1000"], 2),
        ],
        [
            "reference",
            number(r["rate"]),
            "",
            "",
            per_process(r["peak_rss_mb"], 0),
            per_process(r["mongo_commands_per_1000"], 1),
            per_process(r["cpu_seconds_per_1000"], 2),
        ],
    ]
    return lines + table(
        [
            "side",
            "sessions/s",
            "ratio (pairs)",
            "re-import sessions/s",
            "peak RSS MB",
            "MongoDB commands / 1,000 sessions",
            "CPU-s / 1,000 sessions",
        ],
        rows,
    )


def sessions(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    lines = [
        f"{f['sessions']:,} sessions, {f['repeat']:,} requests per figure, pages of {f['limit']}. Each request is "
        "timed beside its reference, interleaved: one `find` on the same index bounded to exactly the page (the "
        "least any server reads for it). Target: tail <= 1.2x the reference, in at most 2 queries.",
        "",
    ]
    rows = []
    for request in f["requests"]:
        b, r = request["balcao"], request["reference"]
        rows.append(
            [
                request["request"] + (f" ({request['matches']:,} matches)" if request.get("matches") else ""),
                ms(b["p50_ms"]),
                tail(b),
                ms(r["p50_ms"]),
                tail(r),
                f"{request['tail_ratio']:.2f}",
                f"{request['p50_ratio']:.2f}",
                f"{request['finds_per_request']:g}",
            ]
        )
    lines += table(
        ["request", "Balcão p50", "tail", "reference p50", "tail", "tail ratio", "p50 ratio", "finds per request"],
        rows,
    )
    if "http_round_trip" in f:
        floor, twice = f["http_round_trip"], f["find_over_twice_the_page"]
        lines += [
            "",
            "Where a first page's difference goes, timed the same way: an HTTP round trip that reads nothing "
            f"(`GET /health`, same client and server) takes {ms(floor['p50_ms'])} at p50 ({tail(floor)}). The "
            f"reference's find over twice the page's range takes {ms(twice['p50_ms'])} ({tail(twice)}): that range is "
            "what a first page's slice covers (twice the span the last first page's sessions took, `HINT_MARGIN` in "
            "server/sessions.py). SecantusDB reads a whole range before it sorts and limits; MongoDB walks the index "
            "and stops at the limit, so there the margin costs nothing.",
        ]
    return lines


def events(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    lines = [
        f"{f['clients']} WebSocket clients following `message.received` while {f['messages']:,} messages arrive "
        f"at {f['rate']:g}/s; the reference is a raw nats-py subscriber in a process of its own. Medians of "
        f"{len(f['runs'])} run(s). Target: WebSocket p99 <= 2x the reference's tail + 10 ms.",
        "",
    ]
    rows = []
    for name, run in [("median", f["median"]), *((f"run {n}", run) for n, run in enumerate(f["runs"], 1))]:
        rows.append(
            [
                name,
                ms(run["websocket"]["p50_ms"]),
                tail(run["websocket"]),
                ms(run["raw"]["p50_ms"]),
                tail(run["raw"]),
                f"{ms(run['target_ms'])}: {'met' if run['met'] else 'missed'}",
                f"{run['rss_per_client_kib']:.1f}",
                f"{run['server_fanout_ms']:.2f} ms",
                f"{run['server_cpu_seconds_per_1000_messages']:.1f}",
            ]
        )
    return lines + table(
        [
            "",
            "WebSocket p50",
            "tail",
            "raw p50",
            "tail",
            "target",
            "KiB per client",
            "fan-out per event",
            "server CPU-s / 1,000 messages",
        ],
        rows,
    )


def outbound(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    return [
        f"The real bot delivering {f['messages']:,} messages published straight into the outbound stream to "
        f"{f['chats']:,} chats (plus one owed a burst of {f['burst']}), against the fake Bot API with Telegram's "
        "flood control. Targets: >= 90 % of 30/s, 0 x 429, no chat's first message waiting behind the burst.",
        "",
        *table(
            ["delivered", "of 30/s", "429s", "burst drained after", "last other chat's first message", "ideal"],
            [
                [
                    f"{f['delivered_rate']:.1f} msg/s",
                    f"{f['share_of_limit']:.1%}",
                    str(f["too_many_requests"]),
                    f"{f['burst_drained_seconds']:.1f} s",
                    f"{f['last_first_message_seconds']:.1f} s",
                    f"{f['ideal_last_first_message_seconds']:.1f} s",
                ]
            ],
        ),
    ]


def csv_reading(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    rows = []
    for layout in f["layouts"]:
        for name, reader in layout["readers"].items():
            rows.append(
                [
                    f"{layout['layout']} ({layout['megabytes']:.1f} MB)",
                    name,
                    f"{reader['seconds']:.2f} s",
                    f"{reader['mb_per_second']:.1f}",
                    f"{reader['times_pandas']:.1f}x",
                ]
            )
    return [
        f"{f['sessions']:,} generated sessions read in memory, best of the repeats: the CLI's chunked reader, the "
        "server's upload parser, and pandas' C reader as the reference.",
        "",
        *table(["file", "reader", "time", "MB/s", "against pandas"], rows),
    ]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "intake": intake,
    "replies": replies,
    "imports": imports,
    "sessions": sessions,
    "eventlatency": events,
    "outbound": outbound,
    "csv_reading": csv_reading,
}


def render(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench.report` from bench/results/*.json (written by `make bench`); "
        "edit bench/report.py, not this page. -->",
        "",
        "Every figure on this page comes from the results of the run named above its table: the command, the "
        "commit, the date, the machine's load before and after, and how much CPU other work used meanwhile. "
        "Figures from a machine with other work are slower and noisier; compare ratios, not absolute rates, "
        "and repeat on the target hardware before sizing from them (`docs/scaling.md`).",
        "",
        "How they are measured (`bench/method.py`):",
        "",
        f"- Balcão and its reference run alternately (Balcão, reference, Balcão, ...) on fresh servers, at least "
        f"{MIN_PAIRS} pairs for a figure to quote; a ratio is the median of the pairs' ratios.",
        "- A reference is what a strong engineer would write by hand for the same durable work, with pymongo and "
        "nats-py alone (`bench/reference/`): the same documents, indexes, stream messages and events, none of "
        "Balcão's code.",
        f"- A p99 is given only from at least {P99_MIN_SAMPLES:,} samples; from fewer, the maximum, called that.",
        "- Beside the times, figures that do not depend on the machine: MongoDB commands per message (counted in "
        "each process by pymongo's command monitoring, `bench/probe.py`), NATS messages each process sent per "
        "message (nats-server's `/connz`), and CPU-seconds per 1,000 messages of each process (`/proc`).",
        "- `make bench` runs every benchmark at modest sizes, then renders this page.",
        "",
    ]
    if results:
        minutes = sum(result["seconds"] for result in results.values()) / 60
        lines += [f"The runs below took {minutes:,.0f} minutes in all.", ""]
    for name in ORDER:
        lines += [f"## {TITLES[name]}", ""]
        result = results.get(name)
        if result is None:
            lines += [f"Not run yet: `{COMMANDS[name]}`.", ""]
            continue
        lines += run_line(result)
        lines += SECTIONS[name](result)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' JSON results")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the page to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is not what the results render")
    args = parser.parse_args(argv)
    page = render(load(args.results))
    if args.check:
        if not args.output.exists() or args.output.read_text() != page:
            print(f"{args.output} is not what `python -m bench.report` renders from {args.results}", file=sys.stderr)
            sys.exit(1)
        return
    args.output.write_text(page)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
