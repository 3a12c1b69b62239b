"""What the fake Telegram knows: chats, the update queue, what contacts and the bot sent, what
the bot tried, files, and faults.

The update queue keeps Telegram's delivery promise: an update not confirmed by a later
getUpdates offset comes again with the same update_id (kept about 24 hours), a confirmed one
never. Ids are never reused, across resets too, as on Telegram.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Any

from devstack.faketelegram.errors import ApiError
from devstack.faketelegram.files import FileStore
from devstack.faketelegram.flood import FloodControl

JsonDict = dict[str, Any]

# Telegram leaves these update types out unless a bot names them in allowed_updates.
OPT_IN_UPDATE_TYPES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
# Channel and supergroup ids are -100 followed by the chat's own number.
FIRST_CHANNEL_ID = -1001000000001
# Telegram keeps an unconfirmed update about 24 hours, then drops it.
UPDATE_KEPT_SECONDS = 24 * 3600


@dataclass
class Fault:
    """A failure armed for the next ``times`` calls of one method (-1: every call)."""

    method: str
    error_code: int
    chat_id: str | None = None
    description: str | None = None
    retry_after: int | None = None
    times: int = 1

    def error(self) -> ApiError:
        return ApiError(self.error_code, self.description, self.retry_after)

    def to_json(self) -> JsonDict:
        return {
            "method": self.method,
            "error_code": self.error_code,
            "chat_id": self.chat_id,
            "description": self.error().description,
            "retry_after": self.retry_after,
            "times": self.times,
        }


@dataclass
class Delay:
    """The next ``times`` calls of ``method`` (for ``chat_id``, if given) reach the API
    ``seconds`` late, as a request held up on the network would."""

    method: str
    seconds: float
    chat_id: str | None = None
    times: int = 1


@dataclass
class Attempt:
    """One Bot API call as the bot made it, with the status it got."""

    method: str
    chat_id: str | None
    text: str | None
    status: int
    description: str | None
    at: float
    params: JsonDict
    chat: JsonDict | None

    def to_json(self) -> JsonDict:
        return {
            "method": self.method,
            "chat_id": self.chat_id,
            "text": self.text,
            "status": self.status,
            "description": self.description,
            "at": self.at,
            "params": self.params,
        }


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    max_connections: int
    last_error_date: int | None = None
    last_error_message: str | None = None

    def record_error(self, message: str) -> None:
        self.last_error_date = int(time.time())
        self.last_error_message = message


class Signal:
    """Wakes every waiter on notify; each waiter re-checks its own condition afterwards."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class TelegramState:
    """Everything a reset forgets, plus the id counters and flood buckets it does not."""

    def __init__(self) -> None:
        # Ids are never reused, across resets too, as on Telegram.
        self._last_update_id = 0
        self._message_ids: dict[int, int] = {}
        self._next_channel_id = FIRST_CHANNEL_ID
        # Woken on every change a long poll or the webhook sender may wait for.
        self.signal = Signal()
        self.flood_control = FloodControl()
        self.files = FileStore()
        self._clear()

    def _clear(self) -> None:
        self.chats: dict[int, JsonDict] = {}
        # Users who wrote to the bot (or /start) may be messaged; blocking revokes that.
        self.started: set[int] = set()
        self.blocked: set[int] = set()
        self.not_admin: set[int] = set()
        # A group that became a supergroup: the old id refuses posts and names the new one.
        self.migrated: dict[int, int] = {}
        # What contacts sent, by (chat id, message_id), as last edited: what an edit starts from.
        self.inbound: dict[tuple[int, int], JsonDict] = {}
        self.pending: list[JsonDict] = []
        self._queued_at: dict[int, float] = {}
        self.deliveries: dict[int, int] = {}
        self.confirmed_offset = 0
        self.allowed_updates: frozenset[str] | None = None
        self.sent: list[JsonDict] = []
        # The same messages by chat id, and the attempts counted by status: what tests poll.
        self.sent_by_chat: dict[int, list[JsonDict]] = {}
        self.attempts: list[Attempt] = []
        self.attempts_by_status: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.delays: list[Delay] = []
        self.webhook: Webhook | None = None
        self.files.clear()

    def reset(self) -> None:
        """Forgets everything but the id counters (files too); flood control is on again."""
        self._clear()
        self.flood_control.reset()
        self.signal.notify()

    # -- chats ------------------------------------------------------------------------------

    def find_chat(self, requested: str) -> JsonDict | None:
        if requested.startswith("@"):
            # @username addresses channels and supergroups only, never private chats.
            wanted = requested[1:].lower()
            return next(
                (
                    chat
                    for chat in self.chats.values()
                    if chat["type"] != "private" and chat.get("username", "").lower() == wanted
                ),
                None,
            )
        try:
            return self.chats.get(int(requested))
        except ValueError:
            return None

    def next_message_id(self, chat_id: int) -> int:
        self._message_ids[chat_id] = self._message_ids.get(chat_id, 0) + 1
        return self._message_ids[chat_id]

    def next_channel_id(self) -> int:
        self._next_channel_id -= 1
        return self._next_channel_id + 1

    # -- the update queue -------------------------------------------------------------------

    def enqueue(self, update: JsonDict) -> JsonDict:
        """Queues an Update, numbering it unless it carries an (int) update_id."""
        if "update_id" in update:
            self._last_update_id = max(self._last_update_id, update["update_id"])
        else:
            self._last_update_id += 1
            update = {"update_id": self._last_update_id, **update}
        # Like Telegram, updates the bot did not subscribe to are never queued.
        if self._wants(update):
            self.pending.append(update)
            self._queued_at[update["update_id"]] = time.monotonic()
            self.signal.notify()
        return update

    def _wants(self, update: JsonDict) -> bool:
        kind = next((key for key in update if key != "update_id"), "")
        if self.allowed_updates is None:
            return kind not in OPT_IN_UPDATE_TYPES
        return kind in self.allowed_updates

    def confirm(self, offset: int | None) -> int | None:
        """Applies getUpdates' offset and returns the lowest update_id still wanted.

        A positive offset confirms (forgets) every update below it. A negative offset keeps only
        the last ``-offset`` pending updates and forgets the rest, as the Bot API documents.
        """
        if not offset:
            return None
        if offset < 0:
            self.pending = self.pending[offset:]
            if self.pending:
                self.confirmed_offset = max(self.confirmed_offset, self.pending[0]["update_id"])
            return None
        self.pending = [update for update in self.pending if update["update_id"] >= offset]
        self.confirmed_offset = max(self.confirmed_offset, offset)
        return offset

    def forget_expired(self) -> None:
        oldest = time.monotonic() - UPDATE_KEPT_SECONDS
        if any(self._queued_at.get(update["update_id"], oldest) < oldest for update in self.pending):
            self.pending = [
                update for update in self.pending if self._queued_at.get(update["update_id"], oldest) >= oldest
            ]

    def batch(self, first_id: int | None, limit: int) -> list[JsonDict]:
        """Copies of the first ``limit`` pending updates from ``first_id`` on."""
        return [
            copy.deepcopy(update) for update in self.pending if first_id is None or update["update_id"] >= first_id
        ][:limit]

    def count_deliveries(self, batch: list[JsonDict]) -> None:
        for update in batch:
            self.deliveries[update["update_id"]] = self.deliveries.get(update["update_id"], 0) + 1

    def forget_delivered(self, update: JsonDict) -> None:
        """Drops the head of the queue once a webhook took it."""
        # A reset or deleteWebhook may have changed the queue during the POST.
        if self.pending and self.pending[0] is update:
            self.pending.pop(0)
            self.confirmed_offset = max(self.confirmed_offset, update["update_id"] + 1)

    # -- what was sent -----------------------------------------------------------------------

    def remember_inbound(self, message: JsonDict) -> None:
        self.inbound[(message["chat"]["id"], message["message_id"])] = message

    def record_sent(self, message: JsonDict) -> None:
        self.sent.append(message)
        self.sent_by_chat.setdefault(message["chat"]["id"], []).append(message)

    # -- what the bot did -------------------------------------------------------------------

    def arrival_delay(self, method: str, params: JsonDict) -> float:
        """Seconds this call is held up before it arrives (0: none armed for it)."""
        requested = chat_ref(params.get("chat_id"))
        chat = self.find_chat(requested) if requested is not None else None
        for delay in self.delays:
            if delay.method.lower() != method.lower():
                continue
            if delay.chat_id is not None and not chat_matches(delay.chat_id, requested, chat):
                continue
            delay.times -= 1
            if delay.times == 0:
                self.delays.remove(delay)
            return delay.seconds
        return 0.0

    def raise_armed_fault(self, method: str, params: JsonDict) -> None:
        requested = chat_ref(params.get("chat_id"))
        chat = self.find_chat(requested) if requested is not None else None
        for fault in self.faults:
            if fault.method.lower() != method.lower():
                continue
            if fault.chat_id is not None and not chat_matches(fault.chat_id, requested, chat):
                continue
            self._consume(fault)
            raise fault.error()

    def _consume(self, fault: Fault) -> None:
        if fault.times > 0:
            fault.times -= 1
        if fault.times == 0:
            self.faults.remove(fault)

    def record_attempt(self, method: str, params: JsonDict, status: int, description: str | None) -> None:
        # Long polls would drown the calls tests care about.
        if method == "getUpdates":
            return
        requested = chat_ref(params.get("chat_id"))
        text = params.get("text")
        self.attempts_by_status[str(status)] = self.attempts_by_status.get(str(status), 0) + 1
        self.attempts.append(
            Attempt(
                method=method,
                chat_id=requested,
                text=text if isinstance(text, str) else None,
                status=int(status),
                description=description,
                at=time.monotonic(),
                params=copy.deepcopy(params),
                chat=self.find_chat(requested) if requested is not None else None,
            )
        )


def chat_ref(chat_id: Any) -> str | None:
    """A chat id as Telegram accepts it (int, "12345", "-100...", "@name"), as a string."""
    if chat_id is None or chat_id == "":
        return None
    return str(chat_id)


def chat_matches(query: str, requested: str | None, chat: JsonDict | None) -> bool:
    if requested is not None and requested.lower() == query.lower():
        return True
    if chat is None:
        return False
    if query.startswith("@"):
        return chat.get("username", "").lower() == query[1:].lower()
    return str(chat["id"]) == query
