"""A local Telegram Bot API server, shaped like the documented API, for tests and the dev stack.
The bot only sees ``/bot<token>/<method>``; test-only control endpoints live under ``/_test/``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import json
import logging
import math
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

log = logging.getLogger("devstack.faketelegram")

JsonDict = dict[str, Any]
ApiMethod = Callable[[JsonDict], Awaitable[Any]]

MAX_TEXT_LENGTH = 4096
MAX_UPDATES_LIMIT = 100
PARSE_MODES = frozenset({"html", "markdown", "markdownv2"})
# Telegram leaves these update types out unless a bot names them in allowed_updates.
OPT_IN_UPDATE_TYPES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
BOT_COMMAND = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?")
# Channel and supergroup ids are -100 followed by the chat's own number.
FIRST_CHANNEL_ID = -1001000000001

CONFLICT_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    500: "Internal Server Error",
}
DEFAULT_RETRY_AFTER = 1
BLOCKED = "Forbidden: bot was blocked by the user"
NOT_STARTED = "Forbidden: bot can't initiate conversation with a user"
NOT_CHANNEL_ADMIN = "Bad Request: need administrator rights in the channel chat"
# Telegram keeps an unconfirmed update about 24 hours, then drops it.
UPDATE_KEPT_SECONDS = 24 * 3600

USER_REQUIRED = ("id", "first_name")
USER_OPTIONAL = ("last_name", "username", "language_code")


class ApiError(Exception):
    """A Bot API failure; the HTTP status equals ``error_code``, as on Telegram."""

    def __init__(self, error_code: int, description: str | None = None, retry_after: int | None = None) -> None:
        if error_code == HTTPStatus.TOO_MANY_REQUESTS:
            retry_after = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
            description = description or f"Too Many Requests: retry after {retry_after}"
        super().__init__(description)
        self.error_code = int(error_code)
        self.description = description or DEFAULT_DESCRIPTIONS.get(error_code) or _phrase(error_code)
        self.retry_after = retry_after

    def payload(self) -> JsonDict:
        body: JsonDict = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


class ControlError(ValueError):
    """Bad input to a test-control helper; the HTTP control endpoints answer it with 400."""


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


class _Signal:
    """Wakes every waiter on notify; each waiter re-checks its own condition afterwards."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


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


class FakeTelegram:
    """The fake Bot API: its state, its methods, the test controls and the HTTP server.

    Where it knowingly differs from Telegram: markup (parse_mode) is validated but not rendered,
    webhooks may be plain http, a webhook's response body is not run as a method call, and
    message ids count per chat in every chat type.
    """

    def __init__(
        self,
        token: str = "123:ABC",
        *,
        bot_username: str = "balcao_test_bot",
        bot_first_name: str = "Balcão Test Bot",
        webhook_retry_delay: float = 0.5,
    ) -> None:
        self.token = token
        self.bot_user: JsonDict = {
            "id": _bot_id(token),
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.webhook_retry_delay = webhook_retry_delay
        self.host = "127.0.0.1"
        self.port = 0
        self._methods: dict[str, tuple[str, ApiMethod]] = {
            name.lower(): (name, method)
            for name, method in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "close": self._accept,
                "logOut": self._accept,
            }.items()
        }
        # Ids are never reused, across resets too, as on Telegram.
        self._last_update_id = 0
        self._message_ids: dict[int, int] = {}
        self._next_channel_id = FIRST_CHANNEL_ID
        self._signal = _Signal()
        self._poll_generation = 0
        self._active_polls = 0
        self._closing = False
        self._server: tornado.httpserver.HTTPServer | None = None
        self._http_client: tornado.httpclient.AsyncHTTPClient | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self.flood_control = FloodControl()
        self._clear_state()

    def _clear_state(self) -> None:
        self._chats: dict[int, JsonDict] = {}
        # Users who wrote to the bot (or /start) may be messaged; blocking revokes that.
        self._started: set[int] = set()
        self._blocked: set[int] = set()
        self._not_admin: set[int] = set()
        self._pending: list[JsonDict] = []
        self._queued_at: dict[int, float] = {}
        self._deliveries: dict[int, int] = {}
        self._confirmed_offset = 0
        self._allowed_updates: frozenset[str] | None = None
        self._sent: list[JsonDict] = []
        self._attempts: list[Attempt] = []
        self._faults: list[Fault] = []
        self._webhook: Webhook | None = None

    # -- server lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API root; python-telegram-bot gets ``base_url + "/bot"``."""
        host = "127.0.0.1" if self.host in {"", "0.0.0.0", "::"} else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        self._server = tornado.httpserver.HTTPServer(self._application())
        self._server.add_sockets(sockets)
        self.host, self.port = host, sockets[0].getsockname()[1]
        self._http_client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        self._closing = False

    async def stop(self) -> None:
        self._closing = True
        self._signal.notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            await asyncio.gather(self._webhook_task, return_exceptions=True)
            self._webhook_task = None
        if self._server is not None:
            self._server.stop()
            # Woken long polls answer [] before their connections are closed under them.
            while self._active_polls:
                await asyncio.sleep(0.001)
            await self._server.close_all_connections()
            self._server = None
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    def _application(self) -> tornado.web.Application:
        control: list[tuple[str, type[tornado.web.RequestHandler]]] = [
            (r"/_test/users", _UsersHandler),
            (r"/_test/channels", _ChannelsHandler),
            (r"/_test/messages", _MessagesHandler),
            (r"/_test/updates", _UpdatesHandler),
            (r"/_test/updates/pending", _PendingHandler),
            (r"/_test/sent", _SentHandler),
            (r"/_test/confirmed_offset", _ConfirmedOffsetHandler),
            (r"/_test/faults", _FaultsHandler),
            (r"/_test/attempts", _AttemptsHandler),
            (r"/_test/reset", _ResetHandler),
            (r"/_test/stats", _StatsHandler),
            (r"/_test/flood_control", _FloodControlHandler),
            (r"/_test/updates/(-?[0-9]+)/deliveries", _DeliveriesHandler),
        ]
        routes = [(r"/bot([^/]*)/([^/]*)", _BotApiHandler), *control]
        return tornado.web.Application(
            [(pattern, handler, {"fake": self}) for pattern, handler in routes],
            default_handler_class=_NotFoundHandler,
        )

    # -- Bot API dispatch -------------------------------------------------------------------

    async def call_api(self, token: str, method: str, params: JsonDict) -> Any:
        """Runs one Bot API call; raises ApiError with Telegram's code and description."""
        if token != self.token:
            raise ApiError(HTTPStatus.UNAUTHORIZED)
        # Telegram matches method names case-insensitively.
        entry = self._methods.get(method.lower())
        if entry is None:
            raise ApiError(HTTPStatus.NOT_FOUND)
        name, handler = entry
        try:
            self._raise_armed_fault(name, params)
            result = await handler(params)
        except ApiError as error:
            self._record_attempt(name, params, error.error_code, error.description)
            raise
        self._record_attempt(name, params, HTTPStatus.OK, None)
        return result

    def _raise_armed_fault(self, method: str, params: JsonDict) -> None:
        requested = _chat_ref(params.get("chat_id"))
        chat = self._find_chat(requested) if requested is not None else None
        for fault in self._faults:
            if fault.method.lower() != method.lower():
                continue
            if fault.chat_id is not None and not _chat_matches(fault.chat_id, requested, chat):
                continue
            self._consume(fault)
            raise fault.error()

    def _consume(self, fault: Fault) -> None:
        if fault.times > 0:
            fault.times -= 1
        if fault.times == 0:
            self._faults.remove(fault)

    def _record_attempt(self, method: str, params: JsonDict, status: int, description: str | None) -> None:
        # Long polls would drown the calls tests care about.
        if method == "getUpdates":
            return
        requested = _chat_ref(params.get("chat_id"))
        text = params.get("text")
        self._attempts.append(
            Attempt(
                method=method,
                chat_id=requested,
                text=text if isinstance(text, str) else None,
                status=int(status),
                description=description,
                at=time.monotonic(),
                params=copy.deepcopy(params),
                chat=self._find_chat(requested) if requested is not None else None,
            )
        )

    # -- Bot API methods --------------------------------------------------------------------

    async def _get_me(self, params: JsonDict) -> JsonDict:
        return dict(self.bot_user)

    async def _accept(self, params: JsonDict) -> bool:
        return True

    async def _get_updates(self, params: JsonDict) -> list[JsonDict]:
        if self._webhook is not None:
            raise ApiError(HTTPStatus.CONFLICT, CONFLICT_WEBHOOK)
        offset = _int_param(params, "offset")
        limit = min(max(_int_param(params, "limit") or MAX_UPDATES_LIMIT, 1), MAX_UPDATES_LIMIT)
        timeout = max(_int_param(params, "timeout") or 0, 0)
        self._set_allowed_updates(_json_param(params, "allowed_updates"))
        self._forget_expired()
        first_id = self._confirm(offset)
        return await self._long_poll(first_id, limit, timeout)

    def _confirm(self, offset: int | None) -> int | None:
        """Applies getUpdates' offset and returns the lowest update_id still wanted.

        A positive offset confirms (forgets) every update below it. A negative offset keeps only
        the last ``-offset`` pending updates and forgets the rest, as the Bot API documents.
        """
        if not offset:
            return None
        if offset < 0:
            self._pending = self._pending[offset:]
            if self._pending:
                self._confirmed_offset = max(self._confirmed_offset, self._pending[0]["update_id"])
            return None
        self._pending = [update for update in self._pending if update["update_id"] >= offset]
        self._confirmed_offset = max(self._confirmed_offset, offset)
        return offset

    def _forget_expired(self) -> None:
        oldest = time.monotonic() - UPDATE_KEPT_SECONDS
        if any(self._queued_at.get(update["update_id"], oldest) < oldest for update in self._pending):
            self._pending = [
                update for update in self._pending if self._queued_at.get(update["update_id"], oldest) >= oldest
            ]

    async def _long_poll(self, first_id: int | None, limit: int, timeout: int) -> list[JsonDict]:
        self._poll_generation += 1
        generation = self._poll_generation
        # A poll still waiting is older than this one: waking it makes it answer 409.
        self._signal.notify()
        deadline = asyncio.get_running_loop().time() + timeout
        self._active_polls += 1
        try:
            return await self._wait_for_updates(generation, first_id, limit, deadline)
        finally:
            self._active_polls -= 1

    async def _wait_for_updates(
        self, generation: int, first_id: int | None, limit: int, deadline: float
    ) -> list[JsonDict]:
        while True:
            if generation != self._poll_generation:
                raise ApiError(HTTPStatus.CONFLICT, CONFLICT_OTHER_POLL)
            if self._webhook is not None:
                raise ApiError(HTTPStatus.CONFLICT, CONFLICT_WEBHOOK)
            batch = [
                copy.deepcopy(update) for update in self._pending if first_id is None or update["update_id"] >= first_id
            ][:limit]
            remaining = deadline - asyncio.get_running_loop().time()
            if batch or remaining <= 0 or self._closing:
                for update in batch:
                    self._deliveries[update["update_id"]] = self._deliveries.get(update["update_id"], 0) + 1
                return batch
            await self._signal.wait(remaining)

    def _set_allowed_updates(self, allowed: Any) -> None:
        if allowed is None:
            return
        if not isinstance(allowed, list) or not all(isinstance(kind, str) for kind in allowed):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse allowed_updates JSON array")
        self._allowed_updates = frozenset(allowed) or None

    async def _send_message(self, params: JsonDict) -> JsonDict:
        chat = self._resolve_chat(params.get("chat_id"))
        text = _message_text(params.get("text"))
        _check_parse_mode(params.get("parse_mode"))
        self._check_may_post(chat)
        self.flood_control.admit(chat)
        message: JsonDict = {"message_id": self._next_message_id(chat["id"])}
        # Channel posts carry the channel as sender_chat and have no "from".
        if chat["type"] == "channel":
            message["sender_chat"] = chat
        else:
            message["from"] = dict(self.bot_user)
        message.update({"chat": chat, "date": int(time.time()), "text": text})
        self._sent.append(message)
        return copy.deepcopy(message)

    def _resolve_chat(self, chat_id: Any) -> JsonDict:
        requested = _chat_ref(chat_id)
        if requested is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: chat_id is empty")
        chat = self._find_chat(requested)
        if chat is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: chat not found")
        return chat

    def _check_may_post(self, chat: JsonDict) -> None:
        """Telegram's refusals: a bot speaks only to users who started it and did not block
        it, and posts only in channels where it is an administrator."""
        if chat["type"] == "private":
            if chat["id"] in self._blocked:
                raise ApiError(HTTPStatus.FORBIDDEN, BLOCKED)
            if chat["id"] not in self._started:
                raise ApiError(HTTPStatus.FORBIDDEN, NOT_STARTED)
        elif chat["type"] == "channel" and chat["id"] in self._not_admin:
            raise ApiError(HTTPStatus.BAD_REQUEST, NOT_CHANNEL_ADMIN)

    def _find_chat(self, requested: str) -> JsonDict | None:
        if requested.startswith("@"):
            # @username addresses channels and supergroups only, never private chats.
            wanted = requested[1:].lower()
            return next(
                (
                    chat
                    for chat in self._chats.values()
                    if chat["type"] != "private" and chat.get("username", "").lower() == wanted
                ),
                None,
            )
        try:
            return self._chats.get(int(requested))
        except ValueError:
            return None

    async def _set_webhook(self, params: JsonDict) -> bool:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params)
        if not url.startswith(("https://", "http://")):
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = params.get("secret_token") or None
        if secret is not None and not SECRET_TOKEN.fullmatch(str(secret)):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: secret token contains unallowed characters")
        self._set_allowed_updates(_json_param(params, "allowed_updates"))
        if _bool_param(params, "drop_pending_updates"):
            self._pending.clear()
        self._webhook = Webhook(
            url=url, secret_token=secret, max_connections=_int_param(params, "max_connections") or 40
        )
        self._signal.notify()
        self._start_webhook_delivery()
        return True

    async def _delete_webhook(self, params: JsonDict) -> bool:
        if _bool_param(params, "drop_pending_updates"):
            self._pending.clear()
        self._webhook = None
        self._signal.notify()
        return True

    async def _get_webhook_info(self, params: JsonDict) -> JsonDict:
        webhook = self._webhook
        info: JsonDict = {
            "url": webhook.url if webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if webhook is not None:
            info["max_connections"] = webhook.max_connections
            if webhook.last_error_date is not None:
                info["last_error_date"] = webhook.last_error_date
                info["last_error_message"] = webhook.last_error_message
        if self._allowed_updates is not None:
            info["allowed_updates"] = sorted(self._allowed_updates)
        return info

    # -- webhook delivery -------------------------------------------------------------------

    def _start_webhook_delivery(self) -> None:
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.get_running_loop().create_task(self._deliver_webhook_updates())

    async def _deliver_webhook_updates(self) -> None:
        """POSTs pending updates one at a time, in order, retrying the head until it gets a 2xx."""
        while (webhook := self._webhook) is not None and not self._closing:
            if not self._pending:
                await self._signal.wait(None)
                continue
            update = self._pending[0]
            if await self._post_to_webhook(webhook, update):
                self._forget_delivered(update)
            else:
                await asyncio.sleep(self.webhook_retry_delay)

    async def _post_to_webhook(self, webhook: Webhook, update: JsonDict) -> bool:
        assert self._http_client is not None
        headers = {"Content-Type": "application/json"}
        if webhook.secret_token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = webhook.secret_token
        request = tornado.httpclient.HTTPRequest(
            webhook.url, method="POST", headers=headers, body=json.dumps(update), request_timeout=10
        )
        try:
            response = await self._http_client.fetch(request, raise_error=False)
        except (OSError, tornado.httpclient.HTTPClientError) as error:
            webhook.record_error(f"Connection failed: {error}")
            log.debug("webhook %s unreachable: %s", webhook.url, error)
            return False
        if 200 <= response.code < 300:
            return True
        webhook.record_error(f"Wrong response from the webhook: {response.code} {response.reason}")
        log.debug("webhook %s answered %d", webhook.url, response.code)
        return False

    def _forget_delivered(self, update: JsonDict) -> None:
        # A reset or deleteWebhook may have changed the queue during the POST.
        if self._pending and self._pending[0] is update:
            self._pending.pop(0)
            self._confirmed_offset = max(self._confirmed_offset, update["update_id"] + 1)

    # -- test controls ----------------------------------------------------------------------

    def register_user(
        self,
        id: int,
        first_name: str,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = None,
        *,
        started: bool = True,
        blocked: bool = False,
    ) -> JsonDict:
        """Makes a user known; returns the User object. By default the user has started the
        bot, so it may message them; `started=False` is a user who never wrote to it,
        `blocked=True` one who blocked it."""
        user: JsonDict = {
            "id": _control_int(id, "id"),
            "is_bot": False,
            "first_name": _control_text(first_name, "first_name"),
        }
        optional = {"last_name": last_name, "username": username, "language_code": language_code}
        user.update({key: value for key, value in optional.items() if value is not None})
        chat_fields = ("first_name", "last_name", "username")
        self._chats[user["id"]] = {
            "id": user["id"],
            "type": "private",
            **{key: user[key] for key in chat_fields if key in user},
        }
        (self._started.add if started else self._started.discard)(user["id"])
        (self._blocked.add if blocked else self._blocked.discard)(user["id"])
        return dict(user)

    def register_channel(
        self, username: str | None = None, id: int | None = None, title: str | None = None, admin: bool = True
    ) -> JsonDict:
        """Makes a channel known; the bot can post to it if it is an `admin` there.
        Returns the Chat object."""
        if username is None and id is None:
            raise ControlError("a channel needs a username or an id")
        name = _control_text(username, "username").lstrip("@") if username is not None else None
        chat_id = self._channel_id(id, name)
        chat: JsonDict = {"id": chat_id, "type": "channel"}
        chat["title"] = title or name or f"Channel {chat_id}"
        if name:
            chat["username"] = name
        self._chats[chat_id] = chat
        (self._not_admin.discard if admin else self._not_admin.add)(chat_id)
        return dict(chat)

    def _channel_id(self, requested: int | None, username: str | None) -> int:
        if requested is None:
            known = self._find_chat(f"@{username}") if username else None
            if known is not None:
                return int(known["id"])
            self._next_channel_id -= 1
            return self._next_channel_id + 1
        chat_id = _control_int(requested, "id")
        if not str(chat_id).startswith("-100"):
            raise ControlError("channel ids start with -100")
        return chat_id

    def inject_message(
        self, user: Mapping[str, Any], text: str | None = None, *, kind: str = "text", chat_id: int | None = None
    ) -> JsonDict:
        """Queues an Update as if ``user`` had just written; returns its update_id and message_id."""
        # Writing to the bot starts it (a blocked bot must be unblocked first).
        sender = self.register_user(**_user_fields(user), started=True, blocked=False)
        chat = self._incoming_chat(sender, chat_id)
        message: JsonDict = {
            "message_id": self._next_message_id(chat["id"]),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            **_content(kind, text),
        }
        update = self._enqueue({"message": message})
        return {"update_id": update["update_id"], "message_id": message["message_id"]}

    def _incoming_chat(self, sender: JsonDict, chat_id: int | None) -> JsonDict:
        target = sender["id"] if chat_id is None else _control_int(chat_id, "chat_id")
        if target == sender["id"]:
            return self._chats[target]
        chat = self._chats.get(target)
        if chat is None and target < 0:
            kind = "supergroup" if str(target).startswith("-100") else "group"
            chat = self._chats[target] = {"id": target, "type": kind, "title": f"Group {target}"}
        if chat is None or chat["type"] not in {"group", "supergroup"}:
            raise ControlError("chat_id must be the user's id or a group id (negative)")
        return chat

    def inject_update(self, update: Mapping[str, Any]) -> JsonDict:
        """Queues a raw Update verbatim, numbering it only if it has no update_id."""
        if not isinstance(update, Mapping):
            raise ControlError("update must be a JSON object")
        return {"update_id": self._enqueue(dict(update))["update_id"]}

    def _enqueue(self, update: JsonDict) -> JsonDict:
        if "update_id" in update:
            update["update_id"] = _control_int(update["update_id"], "update_id")
            self._last_update_id = max(self._last_update_id, update["update_id"])
        else:
            self._last_update_id += 1
            update = {"update_id": self._last_update_id, **update}
        # Like Telegram, updates the bot did not subscribe to are never queued.
        if self._wants(update):
            self._pending.append(update)
            self._queued_at[update["update_id"]] = time.monotonic()
            self._signal.notify()
        return update

    def _wants(self, update: JsonDict) -> bool:
        kind = next((key for key in update if key != "update_id"), "")
        if self._allowed_updates is None:
            return kind not in OPT_IN_UPDATE_TYPES
        return kind in self._allowed_updates

    def _next_message_id(self, chat_id: int) -> int:
        self._message_ids[chat_id] = self._message_ids.get(chat_id, 0) + 1
        return self._message_ids[chat_id]

    def sent(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """The Messages the bot sent successfully, in order, optionally for one chat."""
        query = _chat_ref(chat_id)
        return [
            copy.deepcopy(message)
            for message in self._sent
            if query is None or _chat_matches(query, None, message["chat"])
        ]

    @property
    def sent_count(self) -> int:
        """How many messages the bot sent successfully; cheap enough to poll."""
        return len(self._sent)

    def attempts(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """Every Bot API call except getUpdates, failed or not, with a monotonic ``at``."""
        query = _chat_ref(chat_id)
        return [
            attempt.to_json()
            for attempt in self._attempts
            if query is None or _chat_matches(query, attempt.chat_id, attempt.chat)
        ]

    def pending_updates(self) -> list[JsonDict]:
        return copy.deepcopy(self._pending)

    def deliveries(self, update_id: int) -> int:
        """How many getUpdates answers carried this update (more than 1: redelivered)."""
        return self._deliveries.get(update_id, 0)

    def stats(self) -> JsonDict:
        """Counts cheap enough to poll under load: sends, and attempts by status."""
        by_status: dict[str, int] = {}
        for attempt in self._attempts:
            by_status[str(attempt.status)] = by_status.get(str(attempt.status), 0) + 1
        return {
            "sent": len(self._sent),
            "attempts": len(self._attempts),
            "by_status": by_status,
            "flood_control": self.flood_control.enabled,
        }

    def set_flood_control(self, enabled: Any) -> JsonDict:
        """Test-only: flood control is on by default and after every reset."""
        if not isinstance(enabled, bool):
            raise ControlError("enabled must be true or false")
        self.flood_control.enabled = enabled
        return {"enabled": enabled}

    @property
    def confirmed_offset(self) -> int:
        """The highest offset the bot confirmed; every update below it is gone."""
        return self._confirmed_offset

    def add_fault(
        self,
        method: str,
        error_code: int,
        *,
        chat_id: int | str | None = None,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> JsonDict:
        """Makes the next ``times`` calls of ``method`` (for ``chat_id``, if given) fail."""
        code = _control_int(error_code, "error_code")
        if not 400 <= code <= 599:
            raise ControlError("error_code must be between 400 and 599")
        count = _control_int(times, "times")
        if count == 0 or count < -1:
            raise ControlError("times must be positive, or -1 for always")
        fault = Fault(
            method=_control_text(method, "method"),
            error_code=code,
            chat_id=_chat_ref(chat_id),
            description=description,
            retry_after=None if retry_after is None else _control_int(retry_after, "retry_after"),
            times=count,
        )
        self._faults.append(fault)
        return fault.to_json()

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset(self) -> None:
        """Forgets everything but the token and the id counters (ids are never reused);
        flood control is on again."""
        self._clear_state()
        self.flood_control.reset()
        self._signal.notify()


# -- request parsing ------------------------------------------------------------------------


def _request_params(request: tornado.httputil.HTTPServerRequest) -> JsonDict:
    """Query string plus body: JSON keeps its types, form fields arrive as strings.

    python-telegram-bot POSTs application/x-www-form-urlencoded (multipart/form-data when it
    uploads a file), with nested objects and lists JSON-encoded inside the field values; Tornado
    has already split both kinds of form into ``body_arguments``.
    """
    params = _decode_arguments(request.query_arguments)
    if request.headers.get("Content-Type", "").startswith("application/json"):
        params.update(_json_body(request.body))
    else:
        params.update(_decode_arguments(request.body_arguments))
    return params


def _decode_arguments(arguments: Mapping[str, list[bytes]]) -> JsonDict:
    return {name: values[-1].decode("utf-8", "replace") for name, values in arguments.items() if values}


def _json_body(body: bytes) -> JsonDict:
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse JSON object") from None
    if not isinstance(parsed, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse JSON object")
    return parsed


def _int_param(params: JsonDict, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Bad Request: invalid {name} specified")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Bad Request: invalid {name} specified") from None


def _json_param(params: JsonDict, name: str) -> Any:
    value = params.get(name)
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Bad Request: can't parse {name} JSON object") from None


def _bool_param(params: JsonDict, name: str) -> bool:
    return params.get(name) in (True, 1, "true", "True", "1")


def _message_text(text: Any) -> str:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message text is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message is too long")
    return text


def _check_parse_mode(parse_mode: Any) -> None:
    # The fake does not render markup: the text is stored and returned as the bot sent it.
    if parse_mode not in (None, "") and str(parse_mode).lower() not in PARSE_MODES:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: unsupported parse_mode")


def _chat_ref(chat_id: Any) -> str | None:
    """A chat id as Telegram accepts it (int, "12345", "-100...", "@name"), as a string."""
    if chat_id is None or chat_id == "":
        return None
    return str(chat_id)


def _chat_matches(query: str, requested: str | None, chat: JsonDict | None) -> bool:
    if requested is not None and requested.lower() == query.lower():
        return True
    if chat is None:
        return False
    if query.startswith("@"):
        return chat.get("username", "").lower() == query[1:].lower()
    return str(chat["id"]) == query


def _bot_id(token: str) -> int:
    prefix = token.split(":", 1)[0]
    return int(prefix) if prefix.isdigit() else 1


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


# -- incoming message content ---------------------------------------------------------------


def _content(kind: str, text: str | None) -> JsonDict:
    if kind == "text":
        body = _control_text(text, "text")
        entities = _command_entities(body)
        return {"text": body, "entities": entities} if entities else {"text": body}
    if kind == "photo":
        return {"photo": [_file(90, 90, 1_200), _file(800, 800, 48_000)], **({"caption": text} if text else {})}
    if kind == "sticker":
        return {
            "sticker": {
                **_file(512, 512, 20_000),
                "type": "regular",
                "is_animated": False,
                "is_video": False,
                "emoji": "👍",
            }
        }
    raise ControlError('kind must be "text", "photo" or "sticker"')


def _file(width: int, height: int, size: int) -> JsonDict:
    unique = uuid.uuid4().hex
    return {
        "file_id": f"fake-{unique}",
        "file_unique_id": unique[:16],
        "width": width,
        "height": height,
        "file_size": size,
    }


def _command_entities(text: str) -> list[JsonDict]:
    """bot_command entities, which PTB's CommandHandler relies on; offsets are UTF-16 units."""
    return [
        {"type": "bot_command", "offset": _utf16_length(text[: match.start()]), "length": _utf16_length(match.group())}
        for match in BOT_COMMAND.finditer(text)
    ]


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# -- control input validation ---------------------------------------------------------------


def _user_fields(user: Any) -> JsonDict:
    return _fields(user, USER_REQUIRED, USER_OPTIONAL, "user")


def _fields(body: Any, required: Iterable[str], optional: Iterable[str], what: str) -> JsonDict:
    if not isinstance(body, Mapping):
        raise ControlError(f"{what} must be a JSON object")
    missing = [name for name in required if name not in body]
    if missing:
        raise ControlError(f"{what} lacks {', '.join(missing)}")
    known = {*required, *optional}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ControlError(f"{what} has unknown fields: {', '.join(unknown)}")
    return dict(body)


def _control_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ControlError(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ControlError(f"{name} must be an integer") from None


def _control_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ControlError(f"{name} must be a non-empty string")
    return value


# -- HTTP handlers --------------------------------------------------------------------------


class _FakeHandler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeTelegram) -> None:
        self.fake = fake


class _BotApiHandler(_FakeHandler):
    async def get(self, token: str, method: str) -> None:
        try:
            result = await self.fake.call_api(token, method, _request_params(self.request))
        except ApiError as error:
            self.set_status(error.error_code)
            self.finish(error.payload())
            return
        self.finish({"ok": True, "result": result})

    async def post(self, token: str, method: str) -> None:
        await self.get(token, method)


class _NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(HTTPStatus.NOT_FOUND)
        self.finish(ApiError(HTTPStatus.NOT_FOUND).payload())


def _control_endpoint(
    handler: Callable[..., JsonDict],
) -> Callable[..., None]:
    """Answers the handler's dict as JSON, or a ControlError as 400 {"error": ...}."""

    @functools.wraps(handler)
    def wrapper(self: _ControlHandler, *args: str) -> None:
        try:
            result = handler(self, *args)
        except ControlError as error:
            self.set_status(HTTPStatus.BAD_REQUEST)
            self.finish({"error": str(error)})
            return
        self.finish(result)

    return wrapper


class _ControlHandler(_FakeHandler):
    def json_body(self) -> JsonDict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise ControlError("body must be JSON") from None
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        return body

    def chat_query(self) -> str | None:
        return self.get_query_argument("chat_id", None)


class _UsersHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = self.json_body()
        states = {key: body.pop(key) for key in ("started", "blocked") if key in body}
        for key, value in states.items():
            if not isinstance(value, bool):
                raise ControlError(f"{key} must be true or false")
        return self.fake.register_user(**_user_fields(body), **states)


class _ChannelsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = _fields(self.json_body(), (), ("username", "id", "title", "admin"), "channel")
        if not isinstance(body.get("admin", True), bool):
            raise ControlError("admin must be true or false")
        return self.fake.register_channel(**body)


class _MessagesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = _fields(self.json_body(), ("user",), ("text", "kind", "chat_id"), "message")
        return self.fake.inject_message(body.pop("user"), **body)


class _UpdatesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        return self.fake.inject_update(_fields(self.json_body(), ("update",), (), "body")["update"])


class _PendingHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"updates": self.fake.pending_updates()}


class _ConfirmedOffsetHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"confirmed_offset": self.fake.confirmed_offset}


class _SentHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"messages": self.fake.sent(self.chat_query())}


class _AttemptsHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"attempts": self.fake.attempts(self.chat_query())}


class _FaultsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        optional = ("chat_id", "description", "retry_after", "times")
        return self.fake.add_fault(**_fields(self.json_body(), ("method", "error_code"), optional, "fault"))

    @_control_endpoint
    def delete(self) -> JsonDict:
        self.fake.clear_faults()
        return {"ok": True}


class _StatsHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return self.fake.stats()


class _FloodControlHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"enabled": self.fake.flood_control.enabled}

    @_control_endpoint
    def post(self) -> JsonDict:
        return self.fake.set_flood_control(_fields(self.json_body(), ("enabled",), (), "body")["enabled"])


class _DeliveriesHandler(_ControlHandler):
    @_control_endpoint
    def get(self, update_id: str) -> JsonDict:
        return {"update_id": int(update_id), "deliveries": self.fake.deliveries(int(update_id))}


class _ResetHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        self.fake.reset()
        return {"ok": True}


# -- standalone -----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the fake Telegram Bot API server.")
    parser.add_argument("--host", default="127.0.0.1")
    # 8081 is the port of Telegram's own local Bot API server.
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", required=True)
    parser.add_argument("--bot-username", default="balcao_test_bot")
    parser.add_argument(
        "--no-flood-control", action="store_true", help="accept sends beyond Telegram's flood limits (on by default)"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per long poll would bury the start line; failures still log as warnings.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    fake = FakeTelegram(token=args.token, bot_username=args.bot_username)
    fake.flood_control.enabled = not args.no_flood_control
    await fake.start(host=args.host, port=args.port)
    log.info("fake Telegram Bot API for @%s listening on %s", args.bot_username, fake.base_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
