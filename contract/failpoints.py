"""Fail points: named places where a test can make a process crash on purpose.

A fail point does nothing unless `BALCAO_FAILPOINTS` arms it, so production code
pays one dictionary lookup. Tests arm one to land a crash exactly in a window
(between two writes, between a send and its marker) instead of hoping a timed
kill falls there, in the spirit of FoundationDB's buggify and TiKV's fail-rs.

    BALCAO_FAILPOINTS="server.intake.after_messages_inserted=kill"
    BALCAO_FAILPOINTS="import.after_batch_record=raise@2,bot.relay.after_ack=kill"

Actions: `kill` (SIGKILL to the process itself: no cleanup, no flush, as a power
cut or the OOM killer would), `raise` (raises `FailPointError`). `@N` fires on
the N-th pass only (default: the first). When `BALCAO_FAILPOINTS_LOG` names a
file, the fail point appends its name there before acting, so a test can check
that the crash happened where its name says.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass

ENV = "BALCAO_FAILPOINTS"
LOG_ENV = "BALCAO_FAILPOINTS_LOG"
ACTIONS = ("kill", "raise")


class FailPointError(RuntimeError):
    """Raised by a fail point armed with `raise`."""


@dataclass
class _Armed:
    action: str
    fire_on: int
    passes: int = 0


def parse(spec: str) -> dict[str, _Armed]:
    """`name=action[@N],...` to armed fail points; ValueError names a bad entry."""
    armed: dict[str, _Armed] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = entry.partition("=")
        action, _, count = action.partition("@")
        if not sep or not name or action not in ACTIONS or (count and not count.isdigit()):
            raise ValueError(f"{ENV}: bad entry {entry!r} (want name=kill|raise[@N])")
        armed[name.strip()] = _Armed(action, int(count or 1))
    return armed


_lock = threading.Lock()
_armed: dict[str, _Armed] = {}
_log_path: str | None = None


def configure(environ: Mapping[str, str] | None = None) -> None:
    """Arm the fail points the environment names (done once at import)."""
    global _armed, _log_path
    environ = os.environ if environ is None else environ
    _armed = parse(environ.get(ENV, ""))
    _log_path = environ.get(LOG_ENV) or None


def failpoint(name: str) -> None:
    """Crash here if a test armed `name`; otherwise do nothing."""
    if not _armed:
        return
    armed = _armed.get(name)
    if armed is None:
        return
    with _lock:
        armed.passes += 1
        if armed.passes != armed.fire_on:
            return
    if _log_path:
        with open(_log_path, "a", encoding="utf-8") as log:
            log.write(f"{name} {armed.action} pid={os.getpid()}\n")
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailPointError(f"fail point {name}")


configure()
