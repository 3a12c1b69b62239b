"""The one retry policy: its pauses, its tries, and retrying a call."""

from __future__ import annotations

import asyncio
import math

import pytest

from runtime.retry import RetryPolicy, stopped_within


class Refused(Exception):
    pass


def test_pauses_grow_by_the_factor_up_to_the_cap():
    policy = RetryPolicy(first=0.5, factor=2.0, cap=5.0)
    assert [policy.delay(retry) for retry in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(0) == 0.5  # before any failure: the first pause, never less


def test_a_huge_retry_number_stays_at_the_cap():
    assert RetryPolicy(first=1.0, cap=15.0).delay(10_000_000) == 15.0
    assert RetryPolicy(first=1.0, factor=1000.0, cap=60.0).delay(1_000) == 60.0
    assert RetryPolicy(first=1.0).delay(10_000_000) == math.inf  # no cap, and no OverflowError


def test_an_even_pace_has_a_factor_of_one():
    assert {RetryPolicy(first=0.5, factor=1.0).delay(retry) for retry in range(1, 50)} == {0.5}


def test_jitter_stretches_each_pause_by_up_to_its_fraction():
    policy = RetryPolicy(first=2.0, cap=2.0, jitter=0.25)
    pauses = [policy.delay(3) for _ in range(200)]
    assert all(2.0 <= pause <= 2.5 for pause in pauses)
    assert len(set(pauses)) > 100  # spread out, not one value
    assert 7.0 <= policy.stretched(7.0) <= 7.0 * 1.25  # a server's Retry-After gets it too
    assert RetryPolicy(first=1.0).stretched(7.0) == 7.0


@pytest.mark.parametrize(
    "bad",
    [{"first": -1.0}, {"first": 1.0, "factor": 0.5}, {"first": 1.0, "jitter": -0.1}, {"first": 1.0, "attempts": 0}],
)
def test_a_policy_that_cannot_work_is_refused(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


@pytest.mark.asyncio
async def test_tries_pause_between_them_and_say_which_is_last():
    loop = asyncio.get_running_loop()
    seen = []
    started = loop.time()
    async for attempt in RetryPolicy(first=0.05, factor=2.0, attempts=3).tries():
        seen.append((attempt.number, attempt.pause, attempt.last, round(loop.time() - started, 2)))
    tries = [(number, pause, last) for number, pause, last, _ in seen]
    assert tries == [(1, 0.05, False), (2, 0.1, False), (3, 0.0, True)]
    assert seen[1][3] >= 0.05 and seen[2][3] >= 0.15  # the pauses were waited


@pytest.mark.asyncio
async def test_tries_end_when_stopping_is_set_during_a_pause():
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    numbers = []
    started = loop.time()
    loop.call_later(0.1, stopping.set)
    async for attempt in RetryPolicy(first=60.0).tries(stopping):
        numbers.append(attempt.number)
    assert numbers == [1]
    assert loop.time() - started < 30  # not the minute's pause


@pytest.mark.asyncio
async def test_tries_within_a_time_budget_stop_once_the_next_would_start_past_it():
    loop = asyncio.get_running_loop()
    started = loop.time()
    numbers, lasts = [], []
    async for attempt in RetryPolicy(first=0.1, factor=1.0, within=0.45).tries():
        numbers.append(attempt.number)
        lasts.append(attempt.last)
    elapsed = loop.time() - started
    assert numbers[0] == 1 and 2 <= len(numbers) <= 5 and lasts[-1] and not any(lasts[:-1])
    assert 0.1 * (len(numbers) - 1) <= elapsed <= 0.45 + 5  # a busy machine may be late, never early


@pytest.mark.asyncio
async def test_retrying_returns_the_first_success_and_reports_each_retry():
    answers = [Refused("1"), Refused("2"), "ok"]
    retries = []

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = RetryPolicy(first=0.01, factor=3.0)
    result = await policy.retrying(call, (Refused,), on_retry=lambda exc, pause: retries.append((str(exc), pause)))
    assert result == "ok"
    assert retries == [("1", 0.01), ("2", pytest.approx(0.03))]


@pytest.mark.asyncio
async def test_retrying_raises_the_last_error_when_the_attempts_are_used_up():
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise Refused(str(calls))

    with pytest.raises(Refused, match="3"):
        await RetryPolicy(first=0.01, attempts=3).retrying(call, (Refused,))
    assert calls == 3


@pytest.mark.asyncio
async def test_retrying_raises_the_last_error_when_stopped_and_other_errors_at_once():
    stopping = asyncio.Event()
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        stopping.set()
        raise Refused("while stopping")

    with pytest.raises(Refused, match="while stopping"):
        await RetryPolicy(first=60.0).retrying(refused, (Refused,), stopping=stopping)
    assert calls == 1

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await RetryPolicy(first=0.01).retrying(broken, (Refused,))
    assert calls == 2


@pytest.mark.asyncio
async def test_stopped_within_says_whether_it_was_stopped():
    stopping = asyncio.Event()
    assert await stopped_within(0.01, stopping) is False
    assert await stopped_within(0.01, None) is False
    stopping.set()
    assert await stopped_within(60.0, stopping) is True
