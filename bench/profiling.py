"""Where a measured process spends its time: py-spy samples it while the benchmark times it.

py-spy (PyPI `py-spy`, not a dependency of Balcão: `.venv/bin/pip install py-spy`)
samples the process's Python stacks from outside, so the process runs unchanged.
The samples are kept as collapsed stacks (one line per distinct stack, with its
count), which flamegraph tools read; `summary` splits each thread's samples into
idle, running and waiting for MongoDB, and names the functions the busy time went to.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

RATE = 250  # samples a second


def py_spy() -> str:
    found = shutil.which("py-spy", path=sysconfig.get_path("scripts")) or shutil.which("py-spy")
    if found is None:
        raise SystemExit("profiling needs py-spy: .venv/bin/pip install py-spy")
    return found


@contextlib.contextmanager
def sampled(pid: int, output: Path, *, subprocesses: bool = False) -> Iterator[Path]:
    """Sample `pid` (its threads, idle ones left out) until the block ends; collapsed stacks in `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--output", str(output)]
    if subprocesses:
        command.append("--subprocesses")
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield output
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        try:
            sampler.wait(30)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()


# Where a sampled thread is waiting, not working: the loop's poll, an idle pool
# worker, a sleeping or blocked thread.
IDLE = ("EpollSelector.select", "Condition.wait", "Event.wait", "Thread.join", "sleep")
IDLE_WORKER = "_worker (concurrent/futures/thread.py:81)"  # a pool thread waiting for work
DATABASE_WAIT = ("NetworkingInterface.recv_into", "receive_data")
PROJECT = ("server/", "bot/", "runtime/", "contract/", "cli/", "bench/reference/")


def _role(frames: list[str]) -> str | None:
    joined = ";".join(frames)
    if "monitor.py" in joined or "PeriodicExecutor" in joined or "bench/probe.py:76" in joined:
        return None  # the driver's monitors and the probe's writer: not the process's work
    if "run_forever" in joined:
        return "event loop"
    if "_WorkItem.run" in joined:
        return "worker threads"
    if frames[-1] == IDLE_WORKER:
        return "worker threads"
    return "other threads"


def _function(frame: str) -> str:
    """`Intake.handle (server/intake.py)` from `Intake.handle (server/intake.py:101)`: one entry per function."""
    name, _, place = frame.rpartition(" (")
    return f"{name} ({place.rsplit(':', 1)[0]})" if name else frame


def summary(collapsed: Path, top: int = 15) -> str:
    """Per thread role (event loop, worker threads): how much of the time sampled was busy,
    and of the worker threads' busy time how much waited for MongoDB; then the project's
    functions and the leaf functions that took the busy time."""
    roles: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    busy_total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame]
        role = _role(frames)
        if role is None:
            continue
        leaf = frames[-1]
        if leaf == IDLE_WORKER or leaf.startswith(IDLE):
            roles[role]["idle"] += count
            continue
        waiting = leaf.startswith(DATABASE_WAIT)
        roles[role]["waiting for MongoDB" if waiting else "running"] += count
        busy_total += count
        own[leaf] += count
        for function in {_function(frame) for frame in frames if frame.split("(")[-1].startswith(PROJECT)}:
            inclusive[function] += count
    if not roles:
        return f"{collapsed.name}: no samples"
    lines = [f"{collapsed.name} (samples at {RATE}/s):"]
    for role, counts in sorted(roles.items()):
        total = sum(counts.values())
        shares = ", ".join(f"{name} {count / total:.0%}" for name, count in counts.most_common())
        lines.append(f"  {role}: {total / RATE:.1f} s sampled; {shares}")
    if busy_total:
        lines.append(f"  busy time ({busy_total / RATE:.1f} s) by the project's functions on the stack:")
        lines += [f"    {count / busy_total:6.1%}  {frame}" for frame, count in inclusive.most_common(top)]
        lines.append("  busy time at the top of the stack:")
        lines += [f"    {count / busy_total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    return "\n".join(lines)
