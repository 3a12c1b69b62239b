"""Process lifecycle shared by the server and the bot: stop signals and a bounded shutdown.

Both processes run long-lived worker tasks beside NATS. They stop on SIGTERM
(what container runtimes send) or SIGINT, give the work in hand a grace period,
and exit non-zero when a worker ended on its own, so a supervisor restarts them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from runtime import failpoints, logs
from runtime.environment import ConfigError
from runtime.retry import RetryPolicy

T = TypeVar("T")


class _ProcessSettings(Protocol):
    """What begin() reads from a process's settings (read-only, as frozen dataclasses are)."""

    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def secrets(self) -> list[str]: ...


S = TypeVar("S", bound=_ProcessSettings)

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; call from the running loop, before start-up work."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    return stopping


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """`asyncio.run(main())` for a process that stops on stop_event(): once main has
    returned (or raised), a further stop signal is ignored while the loop closes.

    A supervisor, a terminal or a test often signals twice. asyncio's loop closes its
    signal wakeup pipe before it releases its signal handlers, and a signal landing in
    between makes the interpreter print a traceback (or, once the descriptor is reused,
    write a byte into another file). The process is already ending then; SIGKILL still ends it.
    """

    async def then_ignore_stop_signals() -> None:
        try:
            await main()
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)

    asyncio.run(then_ignore_stop_signals())


async def until_stopped(stopping: asyncio.Event, workers: Iterable[asyncio.Task]) -> bool:
    """Wait for the stop signal; True if a worker ended on its own first (a bug, or a
    connection lost for good), so the process can exit non-zero."""
    workers = list(workers)
    signal_task = asyncio.create_task(stopping.wait())
    await asyncio.wait([signal_task, *workers], return_when=asyncio.FIRST_COMPLETED)
    signal_task.cancel()
    ended = [task for task in workers if task.done()]
    for task in ended:
        error = None if task.cancelled() else task.exception()
        log.error("%s stopped unexpectedly; shutting down", task.get_name(), exc_info=error)
    return bool(ended)


class Deadline:
    """The shutdown grace period, shared by its successive steps."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._end = self._loop.time() + seconds

    def remaining(self, at_least: float = 0.0) -> float:
        return max(self._end - self._loop.time(), at_least)

    async def settle(self, work: Iterable[Awaitable[object]]) -> None:
        """Let the work finish before the deadline, then cancel what is left; log failures."""
        tasks = [asyncio.ensure_future(item) for item in work]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.remaining())
        for task in pending:
            log.warning("shutdown grace period over; abandoning %s", _name(task))
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if task not in pending and not task.cancelled() and task.exception() is not None:
                log.error("%s failed during shutdown", _name(task), exc_info=task.exception())


def _name(task: asyncio.Future) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


# Start-up waits for a dependency still starting: soon at first (containers come
# up within seconds of each other), then every 30 s at most, so a dependency
# that is down for long is not asked in a tight loop while the logs say so.
STARTUP_RETRY = RetryPolicy(first=2.0, cap=30.0)


async def retry_until_ready(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    stopping: asyncio.Event,
    errors: tuple[type[BaseException], ...],
) -> T | None:
    """Start-up against a dependency that may still be starting (containers start in any
    order): try until it answers, logging each failure; None if stopped meanwhile."""
    async for retry in STARTUP_RETRY.tries(stopping):
        trying = asyncio.ensure_future(attempt())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({trying, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not trying.done():
            trying.cancel()
            await asyncio.gather(trying, return_exceptions=True)
            return None
        try:
            return trying.result()
        except errors as exc:
            log.warning("%s not reachable yet (%s); retrying in %.0f s", what, type(exc).__name__, retry.pause)
    return None


def begin(process: str, load: Callable[[], S]) -> tuple[S, asyncio.Event]:
    """A process's first steps: its settings (or exit with every problem named), its
    logging, and the stop event; call from the running loop."""
    try:
        settings = load()
    except ConfigError as exc:
        sys.exit(f"{process}: {exc}")
    refusal = failpoints.refusal()
    if refusal is not None:
        sys.exit(f"{process}: {refusal}")
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets)
    if failpoints.armed():
        log.warning(
            "FAIL POINTS ARMED (%s): this process will crash on purpose; a test's process, never production",
            ", ".join(failpoints.armed()),
        )
    return settings, stop_event()
