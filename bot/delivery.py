"""Delivering the outbound stream to Telegram within its limits, fairly.

Telegram allows a bot about 30 messages per second in all, one per second in a
private chat (a short burst passes) and 20 per minute in a group or channel;
beyond that it answers 429 with `retry_after`. So the bot paces itself rather
than finding the limits by hitting them: every chat has its own queue and its
own next allowed time, and a scheduler hands the room left in the rolling
second (`RollingSecond`) to the chats that may send now, oldest waiting
message first. A contact
whose burst of 20 messages owes 20 replies gets one a second, and everyone
else's replies, goodbyes and agent answers go out in the slots between them
instead of behind that queue; the burst itself is not starved either, so no
slow tail is left at the end. Messages for one chat go out in stream order,
retries included.

Each outbound message has a key, and a delivered marker (JetStream KV) is
checked before every send and written after it, so a message published twice
(the outbox relay retried past JetStream's de-duplication window, or a NATS
restart forgot it) is sent once. The one window left: a crash after Telegram
accepted a send and before its marker was written sends it once more.

A text longer than one Telegram message goes out as several (`bot.parts`), one
part per turn of its chat, so the parts obey the same pacing as everything
else. The marker then records progress (`parts:N`, N parts sent) after each
part, and a redelivery resumes after the last part recorded: a crash between
parts sends none of them twice. The marker reads `1` once the whole message is
out.

A message Telegram will never accept (bot blocked, chat not found) is parked
with a log line instead of being retried forever. When the refusal is "bot was
blocked by the user", `contact.blocked` is reported first, so the server marks
the session's contact.

A group that became a supergroup answers with the new chat id (`ChatMigrated`):
the move is kept in the BALCAO_MOVED_CHATS key-value bucket (and in memory),
the message goes to the new id, and every later message to the old id goes
there directly, reported as `channel.moved` (an import's announcement carries
its import id, so the server notes the move in the import's report).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from telegram import Bot
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TelegramError

from bot.files import FileGone, FileKeeper
from bot.metrics import OUTBOUND_FAILURES, OUTBOUND_PARKED, OUTBOUND_SENT
from bot.parts import split_message
from bot.relay import retry_seconds
from bot.reports import report_blocked, report_delivery, report_moved
from contract import eventstream
from contract.messaging import (
    DELIVERED_BUCKET,
    MOVED_CHATS_BUCKET,
    OUTBOUND_CONSUMER,
    OUTBOUND_STREAM,
    OUTBOUND_SUBJECT,
    OutboundMessage,
    parked_subject,
)
from runtime import jetstream
from runtime.failpoints import failpoint
from runtime.jetstream import Received
from runtime.retry import RetryPolicy

log = logging.getLogger(__name__)

# After a crash, JetStream hands a bot's unacknowledged messages to another
# after this long. Messages waiting in a chat's queue are kept "in progress"
# three times per ack wait, so a slow chat never lets them go meanwhile.
ACK_WAIT = 30.0
NETWORK_RETRY_DELAY = 2.0
# A delivered marker is written however long NATS is away (see _remember), so
# its retries never end; they stay a few seconds apart, since the chat's later
# messages wait behind it.
MARKER_RETRY = RetryPolicy(first=0.5, cap=5.0)
DELIVERED_TTL = 7 * 24 * 3600
# A delivered marker's value: the whole message is out, or `parts:N` of it.
DELIVERED_VALUE = b"1"
PARTS_PREFIX = b"parts:"
# Telegram's description when a user blocked the bot ("Forbidden: bot was blocked by the user").
BLOCKED_BY_USER = "bot was blocked by the user"
# Telegram's limit for a bot (Bot API FAQ): about 30 messages a second in all.
# The bot keeps one below it, in any rolling second: Telegram's own count of a
# second (its clock, its front's queueing) is not the bot's, so a bot that
# reaches 30 by its own reckoning can draw a 429 by Telegram's.
TELEGRAM_PER_SECOND = 30
SENDS_PER_SECOND = TELEGRAM_PER_SECOND - 1
# Telegram's per-chat limits (Bot API FAQ): one message a second in a private
# chat, 20 a minute in a group or channel.
PRIVATE_CHAT_INTERVAL = 1.0
GROUP_CHAT_INTERVAL = 3.0
# Messages held (fetched, not acknowledged) at once: bounds memory, and is large
# enough that one chat's burst does not fill it and starve the other chats.
MAX_HELD = 2000
FETCH_BATCH = MAX_HELD // 10  # the shared consumer allows 10 batches pending
# Sends out at once. At Telegram's 30 messages/s and a round trip of a few
# hundred ms a handful is in flight; the bound matters when the rate is raised
# (a local Bot API server, a benchmark): the HTTP client keeps exactly this many
# connections (bot.main), so a send never queues on its pool.
SENDS_IN_FLIGHT = 32


class RollingSecond:
    """Room for sends within Telegram's limit of `limit` messages in any rolling second.

    Telegram counts a send when the request reaches it: after the bot started it
    and before the answer came back, at a moment the bot cannot know. So a send
    may start only while fewer than `limit` sends are in flight or were answered
    less than a second ago. Then no `limit + 1` sends can reach Telegram within
    one second, whatever the network does to their timing (of any such sends,
    the one started last would have found the others in flight or answered
    within the second). Sends 1/30 s apart, by contrast, put 31 into one rolling
    second whenever the first of them is a little slower on the way.

    The price is the round trip: each send holds its room for one second plus
    its round trip, so the bot sends at most `limit / (1 + round trip)` a second
    in a sustained queue (28.4 for 29 at 20 ms). Below that, a batch of replies
    goes out at once instead of one every 1/30 s. The second starts as soon as
    the answer is back (`requesting`), not once the send's bookkeeping (the
    delivered marker, the report, the ack) is done: on a busy machine that takes
    tens of milliseconds more, and every room held that much longer would take
    the bot below a steady 28 a second.
    """

    def __init__(
        self,
        limit: float,
        clock: Callable[[], float] = time.monotonic,
        on_settled: Callable[[], None] = lambda: None,
    ) -> None:
        self._limit = limit
        self._clock = clock
        # A scheduler waiting for any send's answer (all rooms in flight) learns of it.
        self._on_settled = on_settled
        self._in_flight = 0
        self._answered: deque[float] = deque()

    def wait(self) -> float | None:
        """0 when a send may start now; else the seconds until one may, or None until a send is answered."""
        now = self._clock()
        while self._answered and self._answered[0] <= now - 1.0:
            self._answered.popleft()
        if self._in_flight + len(self._answered) < self._limit:
            return 0.0
        return self._answered[0] + 1.0 - now if self._answered else None

    def reserve(self) -> Room:
        """A send may start: its room is held until `release`."""
        self._in_flight += 1
        return Room()

    @contextlib.contextmanager
    def requesting(self, room: Room) -> Iterator[None]:
        """The send's request is under way in `room`; once its answer (or failure) is back, the room is
        held one second more, from then."""
        room.requested = True
        try:
            yield
        finally:
            self._settle(room)

    def release(self, room: Room) -> None:
        """The send is over; a room whose request never went (or whose answer is not settled yet) is settled now."""
        self._settle(room)

    def _settle(self, room: Room) -> None:
        if room.settled:
            return
        room.settled = True
        self._in_flight -= 1
        if room.requested:
            self._answered.append(self._clock())
        self._on_settled()


@dataclass
class Room:
    """One send's place in the rolling second; `requested` once its request is under way,
    `settled` once it no longer counts as in flight."""

    requested: bool = False
    settled: bool = False


@dataclass
class _Chat:
    chat_id: str
    interval: float
    queue: deque[tuple[int, Msg, OutboundMessage]] = field(default_factory=deque)  # (arrival, ...)
    next_at: float = 0.0
    busy: bool = False
    scheduled: bool = False


class Delivery:
    def __init__(
        self,
        bot: Bot,
        js: JetStreamContext,
        batch_size: int = FETCH_BATCH,
        max_per_second: float = SENDS_PER_SECOND,
        ack_wait: float = ACK_WAIT,
        *,
        replicas: int = 1,
        files: FileKeeper | None = None,
    ) -> None:
        self._bot = bot
        self._files = files or FileKeeper(js, replicas)
        self._ack_wait = ack_wait
        self._replicas = replicas
        self._js = js
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._room = RollingSecond(max_per_second, on_settled=self._wake.set)
        self._delivered: KeyValue | None = None
        self._moved: KeyValue | None = None
        # Where each group chat's messages go: itself, or the supergroup it became.
        self._targets: dict[str, str] = {}
        self._stopping = asyncio.Event()
        self._chats: dict[str, _Chat] = {}
        # Chats that may send now, by their oldest message's arrival; and chats
        # with something to send later, by their next allowed time.
        self._ready: list[tuple[int, int, _Chat]] = []
        self._waiting: list[tuple[float, int, _Chat]] = []
        self._order = 0
        self._arrivals = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sends = asyncio.Semaphore(SENDS_IN_FLIGHT)

    async def run(self) -> None:
        self._delivered = await delivered_bucket(self._js, self._replicas)
        self._moved = await moved_chats_bucket(self._js, self._replicas)
        scheduler = asyncio.create_task(self._schedule(), name="delivery-scheduler")
        keeper = asyncio.create_task(self._keep_alive(), name="delivery-keep-alive")
        try:
            await jetstream.consume(
                self._js,
                stream=OUTBOUND_STREAM,
                subject=OUTBOUND_SUBJECT,
                durable=OUTBOUND_CONSUMER,
                batch_size=self._batch_size,
                ack_wait=self._ack_wait,
                handle=self.accept,
                stopping=self._stopping,
                what="delivery",
            )
        finally:
            for task in (scheduler, keeper):
                task.cancel()
            await asyncio.gather(scheduler, keeper, return_exceptions=True)
            # Sends in flight finish; the rest go back now, rather than after
            # the ack wait, to whichever bot runs next.
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self._hand_back()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def held(self) -> int:
        """Messages fetched and not yet settled."""
        return sum(len(chat.queue) for chat in self._chats.values())

    async def accept(self, batch: list[Received[OutboundMessage]]) -> None:
        """Queue a fetched batch (the consume loop decoded it) per chat; the scheduler sends it."""
        for msg, outbound in batch:
            chat = self._chats.get(outbound.chat_id)
            if chat is None:
                chat = self._chats[outbound.chat_id] = _Chat(outbound.chat_id, chat_interval(outbound.chat_id))
            self._arrivals += 1
            chat.queue.append((self._arrivals, msg, outbound))
            self._enlist(chat)
        self._wake.set()

    def _enlist(self, chat: _Chat) -> None:
        """Put a chat with something to send in line, once."""
        if chat.busy or chat.scheduled or not chat.queue:
            return
        chat.scheduled = True
        self._order += 1
        if chat.next_at <= time.monotonic():
            heapq.heappush(self._ready, (chat.queue[0][0], self._order, chat))
        else:
            heapq.heappush(self._waiting, (chat.next_at, self._order, chat))

    async def _schedule(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            while self._waiting and self._waiting[0][0] <= now:
                chat = heapq.heappop(self._waiting)[2]
                self._order += 1
                heapq.heappush(self._ready, (chat.queue[0][0], self._order, chat))
            # A chat may send, and there is room in the bot's rolling second (a
            # send that ends wakes this loop, as does a chat's new message).
            room = self._room.wait() if self._ready else None
            if not self._ready or room != 0.0:
                timeout = self._waiting[0][0] - now if self._waiting and not self._ready else room
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            chat = heapq.heappop(self._ready)[2]
            chat.scheduled = False
            if not chat.queue:
                continue
            chat.busy = True
            await self._sends.acquire()  # the chat stays busy meanwhile: nothing else picks it
            task = asyncio.create_task(self._send_head(chat, self._room.reserve()))
            self._in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._sends.release()

    async def _send_head(self, chat: _Chat, room: Room) -> None:
        _, msg, outbound = chat.queue[0]
        started = time.monotonic()
        delay: float | None = None
        try:
            delay = await self._deliver(msg, outbound, room)
        except (NatsError, asyncio.TimeoutError) as exc:  # NATS away: the chat waits and tries again
            log.warning("delivering to chat %s interrupted, will retry: %r", chat.chat_id, exc)
            delay = NETWORK_RETRY_DELAY
        except Exception:  # never lose the scheduler's bookkeeping for one message
            log.exception("delivering to chat %s failed", chat.chat_id)
            delay = NETWORK_RETRY_DELAY
        finally:
            self._room.release(room)
            if delay is None:
                if chat.queue and chat.queue[0][1] is msg:
                    chat.queue.popleft()
                chat.next_at = started + chat.interval
            else:
                # The head stays first: the chat's later messages wait behind it.
                chat.next_at = time.monotonic() + delay
            chat.busy = False
            self._enlist(chat)
            self._wake.set()

    async def _deliver(self, msg: Msg, outbound: OutboundMessage, room: Room) -> float | None:
        """Send one message, or its next part, in its `room`; the delay before another
        try (or the next part), or None when done with it."""
        marker = delivered_key(outbound.key)
        # Every delivery is checked, not only redeliveries: the same key can come
        # back as a new stream message when its publisher retried after the
        # de-duplication window, or after NATS lost that window in a restart.
        try:
            progress = await self._parts_sent(marker)
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("delivered-key store unreachable, chat %s waits: %s", outbound.chat_id, exc)
            return NETWORK_RETRY_DELAY
        if progress is None:
            log.info("outbound %s to chat %s already delivered; not sent again", outbound.kind, outbound.chat_id)
            await msg.ack()
            return None
        parts = [outbound.text] if outbound.file is not None else split_message(outbound.text)
        sent = min(progress, len(parts) - 1)
        target = await self._target(outbound.chat_id)
        if target != outbound.chat_id and sent == 0:
            await report_moved(self._js, outbound, target)  # raises when not taken: tried again later
        try:
            with self._room.requesting(room):
                if outbound.file is not None:
                    # A file goes whole, its caption (at most 1,024 characters) with it.
                    await self._files.send(self._bot, chat_ref(target), outbound)
                else:
                    await self._bot.send_message(chat_id=chat_ref(target), text=parts[sent])
        except ChatMigrated as exc:
            # Not this message's fault, and not for good: the group lives on under a new id.
            OUTBOUND_FAILURES.labels(reason="chat_migrated").inc()
            await self._remember_move(outbound.chat_id, str(exc.new_chat_id))
            return 0.0
        except FileGone as exc:
            OUTBOUND_FAILURES.labels(reason="file_gone").inc()
            await self._park(outbound, str(exc))
            await msg.ack()
            return None
        except RetryAfter as exc:
            OUTBOUND_FAILURES.labels(reason="retry_after").inc()
            log.warning("telegram asks to wait %s s before chat %s", exc.retry_after, outbound.chat_id)
            return retry_seconds(exc)
        except (Forbidden, BadRequest) as exc:
            OUTBOUND_FAILURES.labels(reason="forbidden" if isinstance(exc, Forbidden) else "bad_request").inc()
            if isinstance(exc, Forbidden) and BLOCKED_BY_USER in str(exc).lower():
                await report_blocked(self._js, outbound, str(exc))  # raises when not taken: tried again later
            await self._park(outbound, str(exc))
            await msg.ack()
            return None
        except NetworkError as exc:
            OUTBOUND_FAILURES.labels(reason="network").inc()
            log.warning("sending to chat %s failed, will retry: %s", outbound.chat_id, exc)
            return NETWORK_RETRY_DELAY
        except TelegramError as exc:  # chat migrated, endpoint gone...: not this message's fault
            OUTBOUND_FAILURES.labels(reason="other").inc()
            log.warning("sending to chat %s failed, will retry: %r", outbound.chat_id, exc)
            return NETWORK_RETRY_DELAY
        # The residual window: Telegram has the message (or part), the marker is not written.
        failpoint("bot.delivery.after_send_before_marker")
        sent += 1
        if sent < len(parts):
            await self._remember(marker, parts_sent(sent))
            # Between parts: a crash here resumes with the next part, none sent twice.
            failpoint("bot.delivery.between_parts")
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await msg.in_progress()
            return chat_interval(outbound.chat_id)
        OUTBOUND_SENT.labels(kind=outbound.kind).inc()
        # Both before the ack, neither waiting for the other: the report never
        # raises and its Nats-Msg-Id keeps a repeat single, so a crash between
        # them costs what a crash before the marker always did (one more send).
        await asyncio.gather(
            self._remember(marker, DELIVERED_VALUE), report_delivery(self._js, outbound, eventstream.DELIVERY_SENT)
        )
        with contextlib.suppress(NatsError, asyncio.TimeoutError):
            await msg.ack()  # if lost, the redelivery finds the marker
        return None

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            now = time.monotonic()
            # A chat is forgotten only once its pacing no longer matters.
            for chat_id in [
                chat_id
                for chat_id, chat in self._chats.items()
                if not chat.queue and not chat.busy and chat.next_at <= now
            ]:
                del self._chats[chat_id]
            for chat in list(self._chats.values()):
                for _, msg, _ in list(chat.queue):
                    with contextlib.suppress(NatsError, asyncio.TimeoutError):
                        await msg.in_progress()

    async def _hand_back(self) -> None:
        for chat in self._chats.values():
            while chat.queue:
                _, msg, _ = chat.queue.popleft()
                with contextlib.suppress(NatsError, asyncio.TimeoutError):
                    await msg.nak()
        self._chats.clear()

    @property
    def _markers(self) -> KeyValue:
        assert self._delivered is not None, "run() opens the delivered-key store before any delivery"
        return self._delivered

    @property
    def _moves(self) -> KeyValue:
        assert self._moved is not None, "run() opens the moved-chat store before any delivery"
        return self._moved

    async def _parts_sent(self, marker: str) -> int | None:
        """How many parts of the message were sent (0: none), or None when all of it was."""
        try:
            entry = await self._markers.get(marker)
        except KeyNotFoundError:
            return 0
        value = entry.value or b""
        if value.startswith(PARTS_PREFIX):
            try:
                return int(value[len(PARTS_PREFIX) :])
            except ValueError:
                log.warning("unreadable delivery progress %r; sending from the first part", value[:40])
                return 0
        return None

    async def _remember(self, marker: str, value: bytes) -> None:
        """Write the marker before acknowledging, however long NATS is away: the message
        (or part) went out, and without the marker its redelivery (the ack is lost with
        NATS too) would send it again."""

        def retrying(exc: BaseException, pause: float) -> None:
            log.warning("delivery marker not saved, retrying: %s", exc)

        try:
            await MARKER_RETRY.retrying(
                lambda: self._markers.put(marker, value),
                (NatsError, asyncio.TimeoutError),
                stopping=self._stopping,
                on_retry=retrying,
            )
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("delivery marker not saved at shutdown; a redelivery may repeat it: %s", exc)

    async def _target(self, chat_id: str) -> str:
        """The chat to send `chat_id`'s messages to: the supergroup a group became, or itself."""
        target = self._targets.get(chat_id)
        if target is not None:
            return target
        if not chat_id.startswith("-"):
            return chat_id  # users and @channels never move; only groups become supergroups
        try:
            entry = await self._moves.get(moved_chat_key(chat_id))
            target = (entry.value or b"").decode() or chat_id
        except KeyNotFoundError:
            target = chat_id
        except (NatsError, asyncio.TimeoutError) as exc:
            # Sent to the old id, Telegram answers with the new one again.
            log.warning("moved-chat store unreachable, chat %s used as given: %s", chat_id, exc)
            return chat_id
        self._targets[chat_id] = target
        return target

    async def _remember_move(self, chat_id: str, new_chat_id: str) -> None:
        log.info("chat %s became supergroup %s; its messages go there now", chat_id, new_chat_id)
        await self._moves.put(moved_chat_key(chat_id), new_chat_id.encode())
        self._targets[chat_id] = new_chat_id

    async def _park(self, outbound: OutboundMessage, reason: str) -> None:
        log.warning("outbound %s to chat %s parked, telegram refused it: %s", outbound.kind, outbound.chat_id, reason)
        parked = OutboundMessage(
            key=outbound.key,
            chat_id=outbound.chat_id,
            text=outbound.text,
            kind=outbound.kind,
            meta={**outbound.meta, "reason": reason},
        )
        await self._js.publish(
            parked_subject(outbound.chat_id), parked.to_bytes(), headers={"Nats-Msg-Id": outbound.key}
        )
        OUTBOUND_PARKED.labels(kind=outbound.kind).inc()
        await report_delivery(self._js, outbound, eventstream.DELIVERY_PARKED)


def parts_sent(count: int) -> bytes:
    return PARTS_PREFIX + str(count).encode()


def chat_interval(chat_id: str) -> float:
    """Private chats have positive ids; groups and channels negative ids or @names."""
    try:
        return PRIVATE_CHAT_INTERVAL if int(chat_id) > 0 else GROUP_CHAT_INTERVAL
    except ValueError:
        return GROUP_CHAT_INTERVAL


async def delivered_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The delivered-key store, kept on `replicas` servers like the streams (NATS_REPLICAS)."""
    try:
        bucket = await js.key_value(DELIVERED_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=DELIVERED_BUCKET, ttl=DELIVERED_TTL, replicas=replicas)
    # A key-value bucket is the stream KV_<bucket>; its copies change like any stream's.
    await jetstream.ensure_replicas(js, f"KV_{DELIVERED_BUCKET}", replicas)
    return bucket


async def moved_chats_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Groups that became supergroups, old id to new, kept for good on `replicas` servers."""
    try:
        bucket = await js.key_value(MOVED_CHATS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=MOVED_CHATS_BUCKET, replicas=replicas)
    await jetstream.ensure_replicas(js, f"KV_{MOVED_CHATS_BUCKET}", replicas)
    return bucket


def moved_chat_key(chat_id: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]: a group's id ("-4001") is one as it is.
    digits = chat_id.lstrip("-")
    return chat_id if digits.isascii() and digits.isdigit() else hashlib.sha256(chat_id.encode()).hexdigest()


def delivered_key(key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; outbound keys hold ':' and more.
    return hashlib.sha256(key.encode()).hexdigest()


def chat_ref(chat_id: str) -> int | str:
    """User and channel ids are integers for Telegram; `@channel` names stay text."""
    try:
        return int(chat_id)
    except ValueError:
        return chat_id
