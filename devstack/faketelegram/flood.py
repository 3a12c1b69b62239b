"""Telegram's flood control: a rolling second per bot, token buckets per chat, answered with 429."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from devstack.faketelegram.errors import ApiError

JsonDict = dict[str, Any]


@dataclass
class _Bucket:
    """A token bucket: `burst` sends at once, then one every 1/`rate` seconds."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def wait(self, now: float) -> float:
        """Seconds until one send is allowed (0: allowed now); refills first."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


@dataclass
class _RollingWindow:
    """At most `limit` sends in any `span` seconds: none saved up, no burst beyond it."""

    limit: int
    span: float
    accepted: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        """Seconds until one more send fits the window (0: it fits now)."""
        while self.accepted and self.accepted[0] <= now - self.span:
            self.accepted.popleft()
        return 0.0 if len(self.accepted) < self.limit else self.accepted[0] + self.span - now

    def take(self, now: float) -> None:
        self.accepted.append(now)


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's documented flood limits for bots (Bot API FAQ, "My bot is hitting limits").

    Telegram publishes them as advice, not exact numbers: about 30 messages per second in
    all, no more than one per second in one private chat (a short burst passes), and 20
    per minute in one group or channel. Exceeding them gets 429 with `retry_after`.

    The per-bot limit is the strict reading: at most 30 sends in any rolling second,
    counted when the request arrives. A token bucket of 30 would let up to 60 through
    in one second (a full bucket, then its refill), and a bot paced exactly at 30 a
    second passes a bucket while 31 of its sends can land in one rolling second.
    """

    per_bot: int = 30
    per_private_chat: float = 1.0
    per_private_chat_burst: float = 3.0
    per_group: float = 20 / 60
    per_group_burst: float = 20.0


class FloodControl:
    """The per-bot rolling second and the per-chat buckets; a send must fit both."""

    def __init__(
        self,
        limits: FloodLimits = FloodLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.enabled = True
        self._clock = clock
        self._bot = _RollingWindow(limits.per_bot, 1.0)
        self._chats: dict[int, _Bucket] = {}

    def reset(self) -> None:
        self.enabled = True
        self._bot = _RollingWindow(self.limits.per_bot, 1.0)
        self._chats.clear()

    def admit(self, chat: JsonDict) -> None:
        """Counts one send to `chat`, or raises 429 with the whole seconds to wait."""
        if not self.enabled:
            return
        now = self._clock()
        limits = self.limits
        bucket = self._chats.get(chat["id"])
        if bucket is None:
            rate, burst = (
                (limits.per_private_chat, limits.per_private_chat_burst)
                if chat["type"] == "private"
                else (limits.per_group, limits.per_group_burst)
            )
            bucket = self._chats[chat["id"]] = _Bucket(rate, burst, burst, now)
        wait = max(bucket.wait(now), self._bot.wait(now))
        if wait > 0:
            # Telegram answers whole seconds, never 0.
            retry_after = max(1, math.ceil(wait))
            raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, f"Too Many Requests: retry after {retry_after}", retry_after)
        bucket.tokens -= 1
        self._bot.take(now)
