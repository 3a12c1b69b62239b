"""Process lifecycle: a worker ending on its own is noticed; shutdown work is bounded."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

import pytest

from runtime.lifecycle import Deadline, stop_event, until_stopped
from tests.harness import ROOT


async def crash() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("consumer lost")


@pytest.mark.asyncio
async def test_a_worker_that_dies_stops_the_wait_and_is_reported(caplog) -> None:
    stopping = asyncio.Event()
    healthy = asyncio.create_task(asyncio.sleep(10), name="healthy")
    dying = asyncio.create_task(crash(), name="intake")
    with caplog.at_level(logging.ERROR):
        assert await asyncio.wait_for(until_stopped(stopping, [healthy, dying]), 5) is True
    assert "intake stopped unexpectedly" in caplog.text and "consumer lost" in caplog.text
    healthy.cancel()


@pytest.mark.asyncio
async def test_sigterm_ends_the_wait_without_blame() -> None:
    stopping = stop_event()
    worker = asyncio.create_task(asyncio.sleep(10))
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(until_stopped(stopping, [worker]), 5) is False
    worker.cancel()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().remove_signal_handler(signum)


# A second SIGTERM lands after asyncio closed its signal wakeup pipe and before it
# released its handlers: the window where the interpreter prints a traceback.
SIGNAL_WHILE_THE_LOOP_CLOSES = """
import asyncio.selector_events, os, signal
from runtime import lifecycle

close_self_pipe = asyncio.selector_events.BaseSelectorEventLoop._close_self_pipe

def close_then_signal(loop):
    close_self_pipe(loop)
    os.kill(os.getpid(), signal.SIGTERM)

asyncio.selector_events.BaseSelectorEventLoop._close_self_pipe = close_then_signal

async def main():
    lifecycle.stop_event()

lifecycle.run(main)
print("exited")
"""


def test_a_stop_signal_while_the_loop_closes_is_ignored() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_THE_LOOP_CLOSES], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "exited\n", "")


@pytest.mark.asyncio
async def test_settle_waits_for_quick_work_and_abandons_the_rest(caplog) -> None:
    finished = []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        finished.append("quick")

    async def failing() -> None:
        raise ValueError("batch broke")

    slow = asyncio.create_task(asyncio.sleep(10), name="slow-import")
    deadline = Deadline(0.3)
    with caplog.at_level(logging.WARNING):
        await deadline.settle([quick(), failing(), slow])
    assert finished == ["quick"]
    assert slow.cancelled()
    assert "abandoning slow-import" in caplog.text and "batch broke" in caplog.text
    assert deadline.remaining() == 0.0 and deadline.remaining(at_least=2.0) == 2.0
