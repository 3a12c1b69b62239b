"""Where a measured process spends its time: py-spy samples it while the benchmark times it.

py-spy (PyPI `py-spy`, not a dependency of Balcão: `.venv/bin/pip install py-spy`)
samples the process's Python stacks from outside, so the process runs unchanged.
The samples are kept as collapsed stacks (one line per distinct stack, with its
count), which flamegraph tools read; `summary` gives the functions with the most
samples on the stack (inclusive) and at its top (own time).
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


def summary(collapsed: Path, top: int = 20) -> str:
    """The functions most often on the stack, and most often at its top, with their shares."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{collapsed}: no samples"
    lines = [f"{collapsed.name}: {total} samples at {RATE}/s (about {total / RATE:.1f} s of busy threads)"]
    lines.append("  most on the stack (inclusive):")
    lines += [f"    {count / total:6.1%}  {frame}" for frame, count in inclusive.most_common(top)]
    lines.append("  most at the top (own time):")
    lines += [f"    {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    return "\n".join(lines)
