"""The test controls: make users, channels and groups known, write and edit as a user, store
files, arm faults, read what the bot sent. Tests call them in-process on FakeTelegram or over
HTTP under ``/_test/``."""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

import tornado.web

from devstack.faketelegram import messages
from devstack.faketelegram.errors import ControlError, control_fields, control_int, control_text
from devstack.faketelegram.files import Blob, Spool
from devstack.faketelegram.flood import FloodControl
from devstack.faketelegram.state import Delay, Fault, TelegramState, chat_matches, chat_ref

JsonDict = dict[str, Any]

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
            "id": control_int(id, "id"),
            "is_bot": False,
            "first_name": control_text(first_name, "first_name"),
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
        name = control_text(username, "username").lstrip("@") if username is not None else None
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
        chat_id = control_int(requested, "id")
        if not str(chat_id).startswith("-100"):
            raise ControlError("channel ids start with -100")
        return chat_id

    def register_group(self, id: int, title: str | None = None) -> JsonDict:
        """Makes a (basic) group known, with the bot in it; returns the Chat object."""
        chat_id = control_int(id, "id")
        if chat_id >= 0 or str(chat_id).startswith("-100"):
            raise ControlError("a group's id is negative and does not start with -100")
        chat = {"id": chat_id, "type": "group", "title": title or f"Group {chat_id}"}
        self.state.chats[chat_id] = chat
        self.state.migrated.pop(chat_id, None)
        return dict(chat)

    def migrate_group(self, chat_id: int, to_chat_id: int | None = None) -> JsonDict:
        """Turns a group into a supergroup with a new -100 id, as Telegram does when a group
        grows: the old id then refuses posts with ``migrate_to_chat_id``, the new one takes
        them, and both chats get their service message. Returns the supergroup."""
        old = self.state.chats.get(control_int(chat_id, "chat_id"))
        if old is None or old["type"] != "group" or old["id"] in self.state.migrated:
            raise ControlError(f"chat {chat_id} is not a group the fake knows (or it moved already)")
        new_id = self.state.next_channel_id() if to_chat_id is None else control_int(to_chat_id, "to_chat_id")
        if not str(new_id).startswith("-100") or new_id in self.state.chats:
            raise ControlError("to_chat_id must be a new id starting with -100")
        supergroup = {"id": new_id, "type": "supergroup", "title": old["title"]}
        self.state.chats[new_id] = supergroup
        self.state.migrated[old["id"]] = new_id
        now = int(time.time())
        services = ((old, "migrate_to_chat_id", new_id), (supergroup, "migrate_from_chat_id", old["id"]))
        for chat, field, value in services:
            service = {"message_id": self.state.next_message_id(chat["id"]), "chat": chat, "date": now, field: value}
            self.state.enqueue({"message": service})
        return dict(supergroup)

    def inject_message(
        self,
        user: Mapping[str, Any],
        text: str | None = None,
        *,
        kind: str = "text",
        chat_id: int | None = None,
        entities: Any = None,
        file: Mapping[str, Any] | None = None,
        location: Mapping[str, Any] | None = None,
        contact: Mapping[str, Any] | None = None,
    ) -> JsonDict:
        """Queues an Update as if ``user`` had just written; returns its update_id and
        message_id, and for a file message the file (``describe()``: its file_id, its real
        size and the sha256 of its bytes).

        ``text`` is the message's text, or a media message's caption; ``entities`` go with it
        (bot commands are found by themselves). ``file`` describes a file kind's file (see
        devstack.faketelegram.messages), ``location`` and ``contact`` are those kinds' objects.
        """
        user_fields = _user_fields(user)
        body, file_record = messages.content(
            self.state.files, kind, text, entities, file=file, location=location, contact=contact
        )
        # Writing to the bot starts it (a blocked bot must be unblocked first).
        sender = self.register_user(**user_fields, started=True, blocked=False)
        chat = self._incoming_chat(sender, chat_id)
        message: JsonDict = {
            "message_id": self.state.next_message_id(chat["id"]),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            **body,
        }
        self.state.remember_inbound(message)
        update = self.state.enqueue({"message": message})
        injected = {"update_id": update["update_id"], "message_id": message["message_id"]}
        if file_record is not None:
            injected["file"] = file_record.describe()
        return injected

    def edit_message(self, chat_id: int, message_id: int, text: str | None, *, entities: Any = None) -> JsonDict:
        """Queues an ``edited_message`` Update: the contact's message ``message_id`` in
        ``chat_id`` with a new text (or caption: None or "" removes it) and an edit_date."""
        key = (control_int(chat_id, "chat_id"), control_int(message_id, "message_id"))
        original = self.state.inbound.get(key)
        if original is None:
            raise ControlError(f"no message {key[1]} from a contact in chat {key[0]}")
        message = messages.edited(original, text, entities)
        self.state.remember_inbound(message)
        update = self.state.enqueue({"edited_message": message})
        return {
            "update_id": update["update_id"],
            "message_id": message["message_id"],
            "edit_date": message["edit_date"],
        }

    def store_file(self, content: bytes | Iterable[bytes]) -> JsonDict:
        """Keeps bytes for a file message to come (``file={"ref": ...}``); returns the ref,
        the size and the sha256. Over HTTP, the body of ``POST /_test/files``, streamed."""
        chunks = [bytes(content)] if isinstance(content, (bytes, bytearray)) else content
        return self.keep_blob(self.state.files.spool_bytes(chunks))

    def keep_blob(self, blob: Blob) -> JsonDict:
        """Holds bytes already spooled (the body of ``POST /_test/files``) as store_file does."""
        return {"ref": self.state.files.keep(blob), "size": blob.size, "sha256": blob.sha256}

    def file_info(self, file_id: str) -> JsonDict:
        """What a test may know of a file: its Bot API fields, real size and sha256."""
        file = self.state.files.get(control_text(file_id, "file_id"))
        if file is None:
            raise ControlError(f"no file {file_id[:60]!r}")
        return file.describe()

    def forget_file(self, file_id: str) -> JsonDict:
        """Makes a file unavailable, as when its message is deleted: getFile then answers
        400 and its download path 404."""
        if not self.state.files.forget(control_text(file_id, "file_id")):
            raise ControlError(f"no file {file_id[:60]!r}")
        return {"ok": True}

    def _incoming_chat(self, sender: JsonDict, chat_id: int | None) -> JsonDict:
        target = sender["id"] if chat_id is None else control_int(chat_id, "chat_id")
        chats = self.state.chats
        if target == sender["id"]:
            return chats[target]
        if target in self.state.migrated:
            raise ControlError(f"group {target} became supergroup {self.state.migrated[target]}; write there")
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
            raw["update_id"] = control_int(raw["update_id"], "update_id")
        return {"update_id": self.state.enqueue(raw)["update_id"]}

    def sent(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """The Messages the bot sent successfully, in order, optionally for one chat. A file
        message also has ``upload``: the kind, file name, mime type, size and sha256 of what
        the bot sent, and whether it was a file_id sent again (``resent``)."""
        return copy.deepcopy(self.sent_view(chat_id))

    def sent_view(self, chat_id: int | str | None = None) -> list[JsonDict]:
        """sent() without the copies, for answering over HTTP: cheap to poll for one chat."""
        query = chat_ref(chat_id)
        if query is None:
            return self.state.sent
        chat = self.state.find_chat(query)
        if chat is not None:
            return self.state.sent_by_chat.get(chat["id"], [])
        return [message for message in self.state.sent if chat_matches(query, None, message["chat"])]

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
        """Counts cheap enough to poll under load (kept as they happen): sends, and attempts
        by status."""
        return {
            "sent": len(self.state.sent),
            "attempts": len(self.state.attempts),
            "by_status": dict(self.state.attempts_by_status),
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
        code = control_int(error_code, "error_code")
        if not 400 <= code <= 599:
            raise ControlError("error_code must be between 400 and 599")
        count = control_int(times, "times")
        if count == 0 or count < -1:
            raise ControlError("times must be positive, or -1 for always")
        fault = Fault(
            method=control_text(method, "method"),
            error_code=code,
            chat_id=chat_ref(chat_id),
            description=description,
            retry_after=None if retry_after is None else control_int(retry_after, "retry_after"),
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


# -- control input validation ---------------------------------------------------------------


def _user_fields(user: Any) -> JsonDict:
    return control_fields(user, USER_REQUIRED, USER_OPTIONAL, "user")


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
        body = control_fields(self.json_body(), (), ("username", "id", "title", "admin"), "channel")
        if not isinstance(body.get("admin", True), bool):
            raise ControlError("admin must be true or false")
        return self.controls.register_channel(**body)


class _MessagesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        optional = ("text", "kind", "chat_id", "entities", "file", "location", "contact")
        body = control_fields(self.json_body(), ("user",), optional, "message")
        return self.controls.inject_message(body.pop("user"), **body)


class _EditsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        body = control_fields(self.json_body(), ("chat_id", "message_id", "text"), ("entities",), "edit")
        return self.controls.edit_message(body.pop("chat_id"), body.pop("message_id"), **body)


class _GroupsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        return self.controls.register_group(**control_fields(self.json_body(), ("id",), ("title",), "group"))


class _MigrationHandler(_ControlHandler):
    @_control_endpoint
    def post(self, chat_id: str) -> JsonDict:
        body = control_fields(self.json_body(), (), ("to_chat_id",), "body")
        return self.controls.migrate_group(int(chat_id), **body)


@tornado.web.stream_request_body
class _FilesHandler(_ControlHandler):
    """POST: the body's bytes, whatever they are, spooled as they arrive."""

    MAX_BODY = 1024 * 1024 * 1024

    def prepare(self) -> None:
        assert self.request.connection is not None
        self.request.connection.set_max_body_size(self.MAX_BODY)  # type: ignore[attr-defined]
        self.spool: Spool | None = self.controls.state.files.spool()

    def data_received(self, chunk: bytes) -> None:
        assert self.spool is not None
        self.spool.write(chunk)

    @_control_endpoint
    def post(self) -> JsonDict:
        assert self.spool is not None
        blob, self.spool = self.spool.finish(), None
        return self.controls.keep_blob(blob)

    def on_connection_close(self) -> None:
        if self.spool is not None:
            self.spool.discard()


class _FileHandler(_ControlHandler):
    @_control_endpoint
    def get(self, file_id: str) -> JsonDict:
        return self.controls.file_info(file_id)

    @_control_endpoint
    def delete(self, file_id: str) -> JsonDict:
        return self.controls.forget_file(file_id)


class _UpdatesHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        return self.controls.inject_update(control_fields(self.json_body(), ("update",), (), "body")["update"])


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
        # Encoded straight from the state: nothing changes it while this runs.
        return {"messages": self.controls.sent_view(self.chat_query())}


class _AttemptsHandler(_ControlHandler):
    @_control_endpoint
    def get(self) -> JsonDict:
        return {"attempts": self.controls.attempts(self.chat_query())}


class _FaultsHandler(_ControlHandler):
    @_control_endpoint
    def post(self) -> JsonDict:
        optional = ("chat_id", "description", "retry_after", "times")
        return self.controls.add_fault(**control_fields(self.json_body(), ("method", "error_code"), optional, "fault"))

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
        return self.controls.set_flood_control(control_fields(self.json_body(), ("enabled",), (), "body")["enabled"])


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
    (r"/_test/edits", _EditsHandler),
    (r"/_test/groups", _GroupsHandler),
    (r"/_test/groups/(-[0-9]+)/migrate", _MigrationHandler),
    (r"/_test/files", _FilesHandler),
    (r"/_test/files/([^/]+)", _FileHandler),
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
