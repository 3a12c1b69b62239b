"""Run a module as a program while counting the MongoDB commands it sends.

    python -m bench.probe COUNTS_FILE MODULE [ARGS...]

A pymongo CommandListener, registered before the module starts (so every
client it makes reports to it), counts each command by name; a thread writes
the counts to COUNTS_FILE as JSON whenever they changed, at most every 50 ms,
and once more at exit. The benchmark reads the file before and after what it
measures. Balcão's own code knows nothing of this: the server runs unchanged
under it, and so does each reference, so both are counted alike.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
from collections import Counter
from pathlib import Path

from pymongo import monitoring

INTERVAL = 0.05


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
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: count - before.get(name, 0) for name, count in after.items() if count != before.get(name, 0)}


def _write(path: Path, counts: dict[str, int]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(counts))
    os.replace(temporary, path)  # a reader never sees half a file


def main() -> None:
    path, module, *args = sys.argv[1:]
    counter = CommandCounter()
    monitoring.register(counter)
    target = Path(path)
    stop = threading.Event()

    def keep_writing() -> None:
        written: dict[str, int] = {}
        while not stop.wait(INTERVAL):
            now = counter.snapshot()
            if now != written:
                _write(target, now)
                written = now

    threading.Thread(target=keep_writing, name="command-counts", daemon=True).start()

    def last_write() -> None:
        stop.set()
        _write(target, counter.snapshot())

    atexit.register(last_write)
    _write(target, {})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
