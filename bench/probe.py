"""Run a module as a program while counting the MongoDB commands it sends.

    python -m bench.probe COUNTS_FILE MODULE [ARGS...]

A pymongo CommandListener, registered before the module starts (so every
client it makes reports to it), counts each command by name. The counts are
written to COUNTS_FILE as JSON when the process gets SIGUSR1 (`request`) and
at exit, so counting costs the measured process nothing between readings.
The benchmark reads them before and after what it measures. Balcão's own code
knows nothing of this: the server runs unchanged under it, and so does each
reference, so both are counted alike.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def read(path: Path) -> dict[str, int]:
    """The counts last written to `path` (none yet: empty)."""
    try:
        return json.loads(path.read_text())["counts"]
    except (OSError, ValueError, KeyError):
        return {}


def request(pid: int, path: Path, timeout: float = 10.0) -> dict[str, int]:
    """Ask the probed process `pid` for its counts now, and read them."""
    try:
        before = json.loads(path.read_text())["written"]
    except (OSError, ValueError, KeyError):
        before = None
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            written = json.loads(path.read_text())
            if written["written"] != before:
                return written["counts"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"process {pid} did not write its MongoDB command counts to {path}")


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: count - before.get(name, 0) for name, count in after.items() if count != before.get(name, 0)}


def _write(path: Path, counts: dict[str, int], written: int) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"written": written, "counts": counts}))
    os.replace(temporary, path)  # a reader never sees half a file


def main() -> None:
    path, module, *args = sys.argv[1:]
    counter = CommandCounter()
    monitoring.register(counter)
    target = Path(path)
    writes = iter(range(1, 2**62))

    def on_request(signum: int, frame: object) -> None:
        _write(target, counter.snapshot(), next(writes))

    signal.signal(signal.SIGUSR1, on_request)
    atexit.register(lambda: _write(target, counter.snapshot(), next(writes)))
    _write(target, {}, 0)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
