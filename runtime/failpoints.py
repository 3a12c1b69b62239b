"""Fail points: named places where a test can make a process crash on purpose.

A fail point does nothing unless `BALCAO_FAILPOINTS` arms it, so production code
pays one dictionary lookup. Tests arm one to land a crash exactly in a window
(between two writes, between a send and its marker) instead of hoping a timed
kill falls there, in the spirit of FoundationDB's buggify and TiKV's fail-rs.

    BALCAO_FAILPOINTS="server.intake.after_messages_inserted=kill"
    BALCAO_FAILPOINTS="import.after_batch_record=raise@2,bot.relay.after_ack=kill"

Actions: `kill` (SIGKILL to the process itself: no cleanup, no flush, as a power
cut or the OOM killer would), `raise` (raises `FailPointError`), `pause` (blocks
the calling thread until the log file holds the line `resume NAME`, so a test
can act inside a window, e.g. finish a session between its look-up and the
insert; at most PAUSE_LIMIT seconds, and it needs the log file). `@N` fires on
the N-th pass only (default: the first), `@*` on every pass (e.g. to hold every
request that reaches a place until resumed). When `BALCAO_FAILPOINTS_LOG` names a
file, the fail point appends its name there before acting, so a test can check
that the crash happened where its name says.

Fail points ship in the image, so one stray variable must not arm them: they
are armed only when the process is also marked a test (`BALCAO_TESTING=1`, which
the test suite sets). A process given `BALCAO_FAILPOINTS` without it refuses to
start (`refusal()`, checked by `runtime.lifecycle.begin`), and one that arms them
says so in its log at start-up and at every fail point that fires.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "BALCAO_FAILPOINTS"
LOG_ENV = "BALCAO_FAILPOINTS_LOG"
# Marks a process as a test's: only then are fail points armed.
TESTING_ENV = "BALCAO_TESTING"
ACTIONS = ("kill", "raise", "pause")
# A paused fail point nobody resumes goes on after this long rather than hang a test run.
PAUSE_LIMIT = 60.0


class FailPointError(RuntimeError):
    """Raised by a fail point armed with `raise`."""


EVERY_PASS = 0  # `@*`


@dataclass
class _Armed:
    action: str
    fire_on: int  # the pass it fires on, or EVERY_PASS
    passes: int = 0


def parse(spec: str) -> dict[str, _Armed]:
    """`name=action[@N],...` to armed fail points; ValueError names a bad entry."""
    armed: dict[str, _Armed] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = entry.partition("=")
        action, _, count = action.partition("@")
        counted = not count or count == "*" or (count.isdigit() and int(count) > 0)
        if not sep or not name or action not in ACTIONS or not counted:
            raise ValueError(f"{ENV}: bad entry {entry!r} (want name=kill|raise|pause[@N|@*])")
        armed[name.strip()] = _Armed(action, EVERY_PASS if count == "*" else int(count or 1))
    return armed


_lock = threading.Lock()
_armed: dict[str, _Armed] = {}
_log_path: str | None = None
_refusal: str | None = None


def configure(environ: Mapping[str, str] | None = None) -> None:
    """Arm the fail points `environ` names (done once at import, from the process's environment).

    They are armed only in a test process: `BALCAO_TESTING=1` in `environ` or in
    the process's own environment. Otherwise none is, and `refusal()` says why.
    """
    global _armed, _log_path, _refusal
    environ = os.environ if environ is None else environ
    armed = parse(environ.get(ENV, ""))
    testing = environ.get(TESTING_ENV, os.environ.get(TESTING_ENV)) == "1"
    _refusal = None
    if armed and not testing:
        _refusal = (
            f"{ENV} is set ({', '.join(sorted(armed))}), but fail points crash this process on "
            f"purpose and are armed only in tests ({TESTING_ENV}=1); unset {ENV}"
        )
        armed = {}
    _armed = armed
    _log_path = environ.get(LOG_ENV) or None


def refusal() -> str | None:
    """Why the process must not start: fail points named outside a test; None otherwise."""
    return _refusal


def armed() -> list[str]:
    """The fail points armed in this process (none outside tests)."""
    return sorted(_armed)


def failpoint(name: str) -> None:
    """Crash here if a test armed `name`; otherwise do nothing."""
    if not _armed:
        return
    armed = _armed.get(name)
    if armed is None:
        return
    with _lock:
        armed.passes += 1
        if armed.fire_on not in (EVERY_PASS, armed.passes):
            return
    log.warning("fail point %s fires: %s", name, armed.action)
    if _log_path:
        with open(_log_path, "a", encoding="utf-8") as fired:
            fired.write(f"{name} {armed.action} pid={os.getpid()}\n")
    if armed.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if armed.action == "pause":
        _pause(name)
        return
    raise FailPointError(f"fail point {name}")


def _pause(name: str) -> None:
    if not _log_path:
        raise FailPointError(f"fail point {name}: pause needs {LOG_ENV} to be resumed through")
    deadline = time.monotonic() + PAUSE_LIMIT
    while time.monotonic() < deadline:
        with open(_log_path, encoding="utf-8") as fired:
            if f"resume {name}\n" in fired.read():
                return
        time.sleep(0.02)


def resume(log_path: str, name: str) -> None:
    """Let a fail point paused in any process sharing `log_path` go on."""
    with open(log_path, "a", encoding="utf-8") as fired:
        fired.write(f"resume {name}\n")


configure()
