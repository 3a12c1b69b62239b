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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# The exponent stops growing here: a factor of 2 passes any cap long before, and
# a huge power (a message delivered thousands of times) would overflow a float.
_MAX_EXPONENT = 64


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
        exponent = min(max(retry - 1, 0), _MAX_EXPONENT)
        return self.stretched(min(self.first * self.factor**exponent, self.cap))

    def stretched(self, seconds: float) -> float:
        """`seconds` with the policy's jitter: what to wait when a server said how long (Retry-After)."""
        return seconds * random.uniform(1.0, 1.0 + self.jitter) if self.jitter else seconds

    def delays(self) -> Iterator[float]:
        """The pauses between tries, in order: `attempts - 1` of them, or without end."""
        retry = 1
        while self.attempts is None or retry < self.attempts:
            yield self.delay(retry)
            retry += 1

    async def tries(self, stopping: asyncio.Event | None = None) -> AsyncIterator[Attempt]:
        """Tries, paced by the policy: the body of the `async for` is one try.

        The loop goes on to the next try only when the body does (a try that
        worked returns or breaks out of it); it ends after the last try, or when
        `stopping` is set during a pause. A try that must raise its error when
        no other follows checks `attempt.last`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.within is None else loop.time() + self.within
        delays = self.delays()
        number = 0
        while True:
            number += 1
            pause = next(delays, None)
            attempt = Attempt(number, pause or 0.0, pause is None, deadline)
            yield attempt
            if attempt.last or await stopped_within(attempt.pause, stopping):
                return

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
        assert error is not None  # tries() yields at least once, and only a failed try goes on
        raise error


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One try: its number (1 for the first), and the pause before the next if it fails."""

    number: int
    pause: float
    _out_of_attempts: bool
    _deadline: float | None  # the event loop's time past which no try starts

    @property
    def last(self) -> bool:
        """No try follows this one: the attempts are used up, or the time would be by the next."""
        if self._out_of_attempts:
            return True
        return self._deadline is not None and asyncio.get_running_loop().time() + self.pause > self._deadline


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
