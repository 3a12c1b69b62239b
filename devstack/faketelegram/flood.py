"""Telegram's flood control: token buckets per bot and per chat, answered with 429."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FloodLimits:
    """Telegram's documented flood limits for bots (Bot API FAQ, "My bot is hitting limits").

    Telegram publishes them as advice, not exact numbers: about 30 messages per second in
    all, no more than one per second in one private chat (a short burst passes), and 20
    per minute in one group or channel. Exceeding them gets 429 with `retry_after`.
    """

    per_bot: float = 30.0
    per_bot_burst: float = 30.0
    per_private_chat: float = 1.0
    per_private_chat_burst: float = 3.0
    per_group: float = 20 / 60
    per_group_burst: float = 20.0


class FloodControl:
    """The per-bot and per-chat buckets; a send must fit both."""

    def __init__(
        self,
        limits: FloodLimits = FloodLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.enabled = True
        self._clock = clock
        self._bot: _Bucket | None = None
        self._chats: dict[int, _Bucket] = {}

    def reset(self) -> None:
        self.enabled = True
        self._bot = None
        self._chats.clear()

    def admit(self, chat: JsonDict) -> None:
        """Counts one send to `chat`, or raises 429 with the whole seconds to wait."""
        if not self.enabled:
            return
        now = self._clock()
        limits = self.limits
        if self._bot is None:
            self._bot = _Bucket(limits.per_bot, limits.per_bot_burst, limits.per_bot_burst, now)
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
        self._bot.tokens -= 1
