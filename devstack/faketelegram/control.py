"""The test controls: make users and channels known, write as a user, arm faults, read what
the bot sent. Tests call them in-process on FakeTelegram or over HTTP under ``/_test/``."""

from __future__ import annotations

import copy
import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

import tornado.web

from devstack.faketelegram.errors import ControlError
from devstack.faketelegram.flood import FloodControl
from devstack.faketelegram.state import Delay, Fault, TelegramState, chat_matches, chat_ref

JsonDict = dict[str, Any]

BOT_COMMAND = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?")
USER_REQUIRED = ("id", "first_name")
USER_OPTIONAL = ("last_name", "username", "language_code")


class TelegramControls:
    """What a test may do to the fake's state that no bot can."""

    def __init__(self, state: TelegramState) -> None:
        self.state = state

    @property
    def flood_control(self) -> FloodControl:
        return self.state.flood_control

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
        self.state.chats[user["id"]] = {
            "id": user["id"],
            "type": "private",
            **{key: user[key] for key in chat_fields if key in user},
        }
        (self.state.started.add if started else self.state.started.discard)(user["id"])
        (self.state.blocked.add if blocked else self.state.blocked.discard)(user["id"])
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
        self.state.chats[chat_id] = chat
        (self.state.not_admin.discard if admin else self.state.not_admin.add)(chat_id)
        return dict(chat)

    def _channel_id(self, requested: int | None, username: str | None) -> int:
        if requested is None:
            known = self.state.find_chat(f"@{username}") if username else None
            if known is not None:
                return int(known["id"])
            return self.state.next_channel_id()
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
            "message_id": self.state.next_message_id(chat["id"]),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            **_content(kind, text),
        }
        update = self.state.enqueue({"message": message})
        return {"update_id": update["update_id"], "message_id": message["message_id"]}

    def _incoming_chat(self, sender: JsonDict, chat_id: int | None) -> JsonDict:
        target = sender["id"] if chat_id is None else _control_int(chat_id, "chat_id")
        chats = self.state.chats
        if target == sender["id"]:
            return chats[target]
        chat = chats.get(target)
        if chat is None and target < 0:
            kind = "supergroup" if str(target).startswith("-100") else "group"
            chat = chats[target] = {"id": target, "type": kind, "title": f"Group {target}"}
        if chat is None or chat["type"] not in {"group", "supergroup"}:
            raise ControlError("chat_id must be the user's id or a group id (negative)")
        return chat

    def inject_update(self, update: Mapping[str, Any]) -> JsonDict:
        """Queues a raw Update verbatim, numbering it only if it has no update_id."""
        if not isinstance(update, Mapping):
            raise ControlError("update must be a JSON object")
        raw = dict(update)
        if "update_id" in raw:
            raw["update_id"] = _control_int(raw["update_id"], "update_id")
        return {"update_id": self.state.enqueue(raw)["update_id"]}

    def sent(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """The Messages the bot sent successfully, in order, optionally for one chat."""
        query = chat_ref(chat_id)
        return [
            copy.deepcopy(message)
            for message in self.state.sent
            if query is None or chat_matches(query, None, message["chat"])
        ]

    @property
    def sent_count(self) -> int:
        """How many messages the bot sent successfully; cheap enough to poll."""
        return len(self.state.sent)

    def attempts(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """Every Bot API call except getUpdates, failed or not, with a monotonic ``at``."""
        query = chat_ref(chat_id)
        return [
            attempt.to_json()
            for attempt in self.state.attempts
            if query is None or chat_matches(query, attempt.chat_id, attempt.chat)
        ]

    def pending_updates(self) -> list[JsonDict]:
        return copy.deepcopy(self.state.pending)

    def deliveries(self, update_id: int) -> int:
        """How many getUpdates answers carried this update (more than 1: redelivered)."""
        return self.state.deliveries.get(update_id, 0)

    def stats(self) -> JsonDict:
        """Counts cheap enough to poll under load: sends, and attempts by status."""
        by_status: dict[str, int] = {}
        for attempt in self.state.attempts:
            by_status[str(attempt.status)] = by_status.get(str(attempt.status), 0) + 1
        return {
            "sent": len(self.state.sent),
            "attempts": len(self.state.attempts),
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
        return self.state.confirmed_offset

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
            chat_id=chat_ref(chat_id),
            description=description,
            retry_after=None if retry_after is None else _control_int(retry_after, "retry_after"),
            times=count,
        )
        self.state.faults.append(fault)
        return fault.to_json()

    def delay_arrival(self, method: str, seconds: float, *, chat_id: int | str | None = None, times: int = 1) -> None:
        """Holds the next ``times`` calls of ``method`` (for ``chat_id``, if given) ``seconds``
        before they arrive: flood control and faults see them only then, as Telegram would."""
        self.state.delays.append(Delay(method, seconds, chat_ref(chat_id), times))

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def reset(self) -> None:
        """Forgets everything but the token and the id counters (ids are never reused);
        flood control is on again."""
        self.state.reset()


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


# -- HTTP: /_test/... -----------------------------------------------------------------------


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


class _ControlHandler(tornado.web.RequestHandler):
    def initialize(self, controls: TelegramControls) -> None:
        self.controls = controls

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
        return self.controls.register_user(**_user_fields(body), **states)


class _ChannelsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = _fields(self.json_body(), (), ("username", "id", "title", "admin"), "channel")
        if not isinstance(body.get("admin", True), bool):
            raise ControlError("admin must be true or false")
        return self.controls.register_channel(**body)


class _MessagesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = _fields(self.json_body(), ("user",), ("text", "kind", "chat_id"), "message")
        return self.controls.inject_message(body.pop("user"), **body)


class _UpdatesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        return self.controls.inject_update(_fields(self.json_body(), ("update",), (), "body")["update"])


class _PendingHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"updates": self.controls.pending_updates()}


class _ConfirmedOffsetHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"confirmed_offset": self.controls.confirmed_offset}


class _SentHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"messages": self.controls.sent(self.chat_query())}


class _AttemptsHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"attempts": self.controls.attempts(self.chat_query())}


class _FaultsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        optional = ("chat_id", "description", "retry_after", "times")
        return self.controls.add_fault(**_fields(self.json_body(), ("method", "error_code"), optional, "fault"))

    @_control_endpoint
    def delete(self) -> JsonDict:
        self.controls.clear_faults()
        return {"ok": True}


class _StatsHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return self.controls.stats()


class _FloodControlHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"enabled": self.controls.flood_control.enabled}

    @_control_endpoint
    def post(self) -> JsonDict:
        return self.controls.set_flood_control(_fields(self.json_body(), ("enabled",), (), "body")["enabled"])


class _DeliveriesHandler(_ControlHandler):
    @_control_endpoint
    def get(self, update_id: str) -> JsonDict:
        return {"update_id": int(update_id), "deliveries": self.controls.deliveries(int(update_id))}


class _ResetHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        self.controls.reset()
        return {"ok": True}


CONTROL_ROUTES: list[tuple[str, type[_ControlHandler]]] = [
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
