"""How long to wait before trying again something that may pass: one policy for every retry.

A failure that may pass (a dependency starting, a server restarting, a stream
electing its leader, a database away) is tried again after a pause that grows
by `factor` from `first` up to `cap`, stretched at random by up to `jitter`
(a fraction) so that many clients failing together do not come back in step.
Each caller names its own numbers, and says why where they differ.

Standard library only, on purpose: the CLI retries by the same policy, and its
image carries `runtime` without the server's or the bot's dependencies (a test
checks that the CLI's imports need nothing more).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """The pauses between tries: `first`, growing by `factor` up to `cap`, stretched by up to `jitter`.

    `attempts` bounds the tries in all (None: until it works or the caller
    stops), and `within` the time: no retry starts more than `within` seconds
    after the first try did.
    """

    first: float
    factor: float = 2.0
    cap: float = math.inf
    jitter: float = 0.0
    attempts: int | None = None
    within: float | None = None

    def __post_init__(self) -> None:
        if self.first < 0 or self.factor < 1 or self.jitter < 0:
            raise ValueError(f"not a retry policy: {self}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"a retry policy tries at least once: {self}")

    def delay(self, retry: int) -> float:
        """The pause before retry number `retry` (1: the one after the first failure)."""
        try:
            grown = self.first * self.factor ** max(retry - 1, 0)
        except OverflowError:  # a message delivered thousands of times: far past any cap
            grown = math.inf
        return self.stretched(min(grown, self.cap))

    def stretched(self, seconds: float) -> float:
        """`seconds` with the policy's jitter: what to wait when a server said how long (Retry-After)."""
        return seconds * random.uniform(1.0, 1.0 + self.jitter) if self.jitter else seconds

    def tries(self, stopping: asyncio.Event | None = None) -> Tries:
        """Tries, paced by the policy: the body of an `async for` over them is one try.

        The loop goes on to the next try only when the body does (a try that
        worked returns or breaks out of it); it ends after the last try, or when
        `stopping` is set during a pause. A try that must raise its error when
        no other follows checks `attempt.last`.
        """
        return Tries(self, stopping)

    async def retrying(
        self,
        call: Callable[[], Awaitable[T]],
        retry_on: tuple[type[BaseException], ...],
        *,
        stopping: asyncio.Event | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """`call()`'s result, calling again after each of the `retry_on` errors; the last
        error when the tries are used up or `stopping` was set. `on_retry` hears of each
        error that will be retried, and the pause before the retry."""
        error: BaseException | None = None
        async for attempt in self.tries(stopping):
            try:
                return await call()
            except retry_on as exc:
                if attempt.last:
                    raise
                error = exc
                if on_retry is not None:
                    on_retry(exc, attempt.pause)
        assert error is not None  # a first try is always made, and only a failed one goes on
        raise error


class Tries:
    """The tries of one policy, as an async iterator of Attempts.

    A class rather than an async generator, and cheap on the first try: the hot
    paths (every publish, every relayed update) leave the loop on their first
    try, and an async generator left suspended costs the event loop a task to
    close it.
    """

    __slots__ = ("policy", "_stopping", "_previous", "deadline")

    def __init__(self, policy: RetryPolicy, stopping: asyncio.Event | None) -> None:
        self.policy = policy
        self._stopping = stopping
        self._previous: Attempt | None = None
        self.deadline: float | None = None  # the event loop's time past which no try starts

    def __aiter__(self) -> Tries:
        return self

    async def __anext__(self) -> Attempt:
        previous = self._previous
        if previous is None:
            if self.policy.within is not None:
                self.deadline = asyncio.get_running_loop().time() + self.policy.within
            attempt = Attempt(1, self)
        elif previous.last or await stopped_within(previous.pause, self._stopping):
            raise StopAsyncIteration
        else:
            attempt = Attempt(previous.number + 1, self)
        self._previous = attempt
        return attempt


class Attempt:
    """One try: its number (1 for the first), and what follows if it fails."""

    __slots__ = ("number", "_tries", "_pause")

    def __init__(self, number: int, tries: Tries) -> None:
        self.number = number
        self._tries = tries
        self._pause: float | None = None  # drawn once: the jitter is random

    @property
    def pause(self) -> float:
        """Seconds before the next try; 0 if none follows."""
        if self._out_of_attempts:
            return 0.0
        if self._pause is None:
            self._pause = self._tries.policy.delay(self.number)
        return self._pause

    @property
    def last(self) -> bool:
        """No try follows this one: the attempts are used up, or the time would be by the next."""
        if self._out_of_attempts:
            return True
        deadline = self._tries.deadline
        return deadline is not None and asyncio.get_running_loop().time() + self.pause > deadline

    @property
    def _out_of_attempts(self) -> bool:
        attempts = self._tries.policy.attempts
        return attempts is not None and self.number >= attempts


async def stopped_within(seconds: float, stopping: asyncio.Event | None) -> bool:
    """Wait `seconds`, or less if `stopping` is set meanwhile; True if it was."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return False
