"""The Bot API as the bot sees it: ``/bot<token>/<method>`` and the download path
``/file/bot<token>/<file_path>``, answered the way Telegram answers.

getMe, getUpdates (offset confirmation and long polling), sendMessage, sendPhoto and
sendDocument (uploads, or a file_id sent again), getFile, the webhook methods, close and
logOut; webhook delivery POSTs the queued updates to the bot in order. Every send meets the
same refusals (a blocked user, a group that became a supergroup, a channel where the bot is
no administrator) and the same flood control.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import tornado.httpclient
import tornado.iostream
import tornado.web

from devstack.faketelegram import images
from devstack.faketelegram.apirequest import MAX_READ_BODY, RequestBody, Upload
from devstack.faketelegram.entities import (
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    PARSE_MODES,
    utf16_length,
    visible_text,
)
from devstack.faketelegram.errors import ApiError
from devstack.faketelegram.files import MAX_DOWNLOAD_SIZE, Blob, TelegramFile
from devstack.faketelegram.messages import photo_sizes
from devstack.faketelegram.state import TelegramState, Webhook, chat_ref

log = logging.getLogger("devstack.faketelegram")

JsonDict = dict[str, Any]
ApiMethod = Callable[[JsonDict], Awaitable[Any]]

MAX_UPDATES_LIMIT = 100
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")

CONFLICT_OTHER_POLL = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
BLOCKED = "Forbidden: bot was blocked by the user"
NOT_STARTED = "Forbidden: bot can't initiate conversation with a user"
NOT_CHANNEL_ADMIN = "Bad Request: need administrator rights in the channel chat"
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
WRONG_FILE = "Bad Request: wrong file identifier/HTTP URL specified"
UNAVAILABLE_FILE = "Bad Request: wrong file_id or the file is temporarily unavailable"
# sendPhoto: "The photo must be at most 10 MB in size. The photo's width and height must not
# exceed 10000 in total. Width and height ratio must be at most 20."
MAX_PHOTO_SIZE = 10 * 1024 * 1024
MAX_PHOTO_SIDES = 10_000
MAX_PHOTO_RATIO = 20
# The file types as Telegram names them in "can't use file of type X as Y".
FILE_TYPE_NAMES = {
    "photo": "Photo",
    "document": "Document",
    "voice": "VoiceNote",
    "audio": "Audio",
    "video": "Video",
    "video_note": "VideoNote",
    "animation": "Animation",
    "sticker": "Sticker",
}


class BotApi:
    """The Bot API methods over a TelegramState, and the webhook sender."""

    def __init__(
        self,
        state: TelegramState,
        token: str,
        *,
        bot_username: str,
        bot_first_name: str,
        webhook_retry_delay: float,
    ) -> None:
        self.state = state
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
        self._methods: dict[str, tuple[str, ApiMethod]] = {
            name.lower(): (name, method)
            for name, method in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "getFile": self._get_file,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "close": self._accept,
                "logOut": self._accept,
            }.items()
        }
        self._poll_generation = 0
        self._active_polls = 0
        self._closing = False
        self._http_client: tornado.httpclient.AsyncHTTPClient | None = None
        self._webhook_task: asyncio.Task[None] | None = None

    def open(self) -> None:
        self._http_client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        self._closing = False

    async def close(self) -> None:
        """Ends webhook delivery and wakes every long poll, which then answers []."""
        self._closing = True
        self.state.signal.notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            await asyncio.gather(self._webhook_task, return_exceptions=True)
            self._webhook_task = None

    async def polls_answered(self) -> None:
        """Waits until every woken long poll has written its answer."""
        while self._active_polls:
            await asyncio.sleep(0.001)

    def close_client(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    # -- dispatch ---------------------------------------------------------------------------

    async def call(self, token: str, method: str, params: JsonDict, *, refused: ApiError | None = None) -> Any:
        """Runs one Bot API call; raises ApiError with Telegram's code and description.

        ``refused`` is a refusal of the request's body (too large, unreadable), answered in
        the method's place and recorded as its attempt.
        """
        if token != self.token:
            raise ApiError(HTTPStatus.UNAUTHORIZED)
        # Telegram matches method names case-insensitively.
        entry = self._methods.get(method.lower())
        if entry is None:
            raise ApiError(HTTPStatus.NOT_FOUND)
        name, handler = entry
        held_up = self.state.arrival_delay(name, params)
        if held_up:
            await asyncio.sleep(held_up)
        try:
            if refused is not None:
                raise refused
            self.state.raise_armed_fault(name, params)
            result = await handler(params)
        except ApiError as error:
            self.state.record_attempt(name, _recorded(params), error.error_code, error.description)
            raise
        self.state.record_attempt(name, _recorded(params), HTTPStatus.OK, None)
        return result

    def download(self, token: str, file_path: str) -> TelegramFile:
        """The file a download path names; 404 as Telegram's file server answers, for a wrong
        token as for an unknown path."""
        params = {"file_path": file_path}
        try:
            if token != self.token:
                raise ApiError(HTTPStatus.NOT_FOUND)
            self.state.raise_armed_fault("download", params)
            file = self.state.files.at_path(file_path)
            if file is None:
                raise ApiError(HTTPStatus.NOT_FOUND)
        except ApiError as error:
            self.state.record_attempt("download", params, error.error_code, error.description)
            raise
        self.state.record_attempt("download", params, HTTPStatus.OK, None)
        return file

    # -- methods ----------------------------------------------------------------------------

    async def _get_me(self, params: JsonDict) -> JsonDict:
        return dict(self.bot_user)

    async def _accept(self, params: JsonDict) -> bool:
        return True

    async def _get_updates(self, params: JsonDict) -> list[JsonDict]:
        if self.state.webhook is not None:
            raise ApiError(HTTPStatus.CONFLICT, CONFLICT_WEBHOOK)
        offset = _int_param(params, "offset")
        limit = min(max(_int_param(params, "limit") or MAX_UPDATES_LIMIT, 1), MAX_UPDATES_LIMIT)
        timeout = max(_int_param(params, "timeout") or 0, 0)
        self._set_allowed_updates(_json_param(params, "allowed_updates"))
        self.state.forget_expired()
        first_id = self.state.confirm(offset)
        return await self._long_poll(first_id, limit, timeout)

    async def _long_poll(self, first_id: int | None, limit: int, timeout: int) -> list[JsonDict]:
        self._poll_generation += 1
        generation = self._poll_generation
        # A poll still waiting is older than this one: waking it makes it answer 409.
        self.state.signal.notify()
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
            if self.state.webhook is not None:
                raise ApiError(HTTPStatus.CONFLICT, CONFLICT_WEBHOOK)
            batch = self.state.batch(first_id, limit)
            remaining = deadline - asyncio.get_running_loop().time()
            if batch or remaining <= 0 or self._closing:
                self.state.count_deliveries(batch)
                return batch
            await self.state.signal.wait(remaining)

    def _set_allowed_updates(self, allowed: Any) -> None:
        if allowed is None:
            return
        if not isinstance(allowed, list) or not all(isinstance(kind, str) for kind in allowed):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: can't parse allowed_updates JSON array")
        self.state.allowed_updates = frozenset(allowed) or None

    async def _send_message(self, params: JsonDict) -> JsonDict:
        chat = self._resolve_chat(params.get("chat_id"))
        parse_mode = _parse_mode(params.get("parse_mode"))
        text = _message_text(params.get("text"), parse_mode)
        self._check_may_post(chat)
        self.state.flood_control.admit(chat)
        message = self._new_message(chat, {"text": text})
        self.state.record_sent(message)
        return copy.deepcopy(message)

    async def _send_photo(self, params: JsonDict) -> JsonDict:
        return self._send_file("photo", params)

    async def _send_document(self, params: JsonDict) -> JsonDict:
        return self._send_file("document", params)

    def _send_file(self, kind: str, params: JsonDict) -> JsonDict:
        """sendPhoto and sendDocument: a new upload, or a file_id the bot got before."""
        chat = self._resolve_chat(params.get("chat_id"))
        parse_mode = _parse_mode(params.get("parse_mode"))
        caption = _caption(params.get("caption"), parse_mode)
        self._check_may_post(chat)
        source = self._file_source(kind, params)
        photo_size = _photo_size(source.blob) if kind == "photo" and isinstance(source, Upload) else None
        self.state.flood_control.admit(chat)
        media: JsonDict | list[JsonDict]
        if isinstance(source, Upload):
            source.taken = True
            if photo_size is not None:
                media, file = photo_sizes(self.state.files, source.blob, *photo_size, stated_size=source.blob.size)
            else:
                file = self.state.files.add(
                    kind, source.blob, stated_size=source.blob.size, details=_document_names(source)
                )
                media = file.to_object()
        else:
            file, media = source, _resent_media(source)
        content: JsonDict = {kind: media}
        if caption:
            content["caption"] = caption
        message = self._new_message(chat, content)
        upload = {
            "kind": kind,
            "file_id": file.file_id,
            # What the bot sent: the part's own name and type, or the earlier file's.
            "file_name": source.file_name if isinstance(source, Upload) else file.details.get("file_name"),
            "mime_type": source.mime_type if isinstance(source, Upload) else file.details.get("mime_type"),
            "size": file.blob.size,
            "sha256": file.blob.sha256,
            "resent": not isinstance(source, Upload),
        }
        self.state.record_sent({**copy.deepcopy(message), "upload": upload})
        return message

    def _file_source(self, kind: str, params: JsonDict) -> Upload | TelegramFile:
        """The file a send names: an uploaded part (by its own name or attach://), or a file_id."""
        value = params.get(kind)
        if isinstance(value, str) and value.startswith("attach://"):
            value = params.get(value.removeprefix("attach://"))
            if not isinstance(value, Upload):
                raise ApiError(HTTPStatus.BAD_REQUEST, WRONG_FILE)
        if isinstance(value, Upload):
            if value.blob.size == 0:
                raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: file must be non-empty")
            return value
        if not isinstance(value, str) or not value:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"Bad Request: there is no {kind} in the request")
        if value.startswith(("http://", "https://")):
            # Telegram would fetch the URL; the fake reaches nothing outside.
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: failed to get HTTP URL content")
        file = self.state.files.get(value)
        if file is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, WRONG_FILE)
        if file.kind != kind:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"Bad Request: can't use file of type {FILE_TYPE_NAMES[file.kind]} as {FILE_TYPE_NAMES[kind]}",
            )
        return file

    async def _get_file(self, params: JsonDict) -> JsonDict:
        file_id = params.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: invalid file_id")
        file = self.state.files.get(file_id)
        if file is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, UNAVAILABLE_FILE)
        # Telegram judges by the size it has on record: a file whose update stated a lie is
        # judged by the lie, and only the download shows the truth.
        if file.checked_size > MAX_DOWNLOAD_SIZE:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: file is too big")
        return file.to_file()

    def _new_message(self, chat: JsonDict, content: JsonDict) -> JsonDict:
        message: JsonDict = {"message_id": self.state.next_message_id(chat["id"])}
        # Channel posts carry the channel as sender_chat and have no "from".
        if chat["type"] == "channel":
            message["sender_chat"] = chat
        else:
            message["from"] = dict(self.bot_user)
        message.update({"chat": chat, "date": int(time.time()), **content})
        return message

    def _resolve_chat(self, chat_id: Any) -> JsonDict:
        requested = chat_ref(chat_id)
        if requested is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: chat_id is empty")
        chat = self.state.find_chat(requested)
        if chat is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: chat not found")
        return chat

    def _check_may_post(self, chat: JsonDict) -> None:
        """Telegram's refusals: a bot speaks only to users who started it and did not block
        it, posts only in channels where it is an administrator, and not at all in a group
        that became a supergroup (the answer names the supergroup)."""
        if chat["id"] in self.state.migrated:
            raise ApiError(HTTPStatus.BAD_REQUEST, MIGRATED, migrate_to_chat_id=self.state.migrated[chat["id"]])
        if chat["type"] == "private":
            if chat["id"] in self.state.blocked:
                raise ApiError(HTTPStatus.FORBIDDEN, BLOCKED)
            if chat["id"] not in self.state.started:
                raise ApiError(HTTPStatus.FORBIDDEN, NOT_STARTED)
        elif chat["type"] == "channel" and chat["id"] in self.state.not_admin:
            raise ApiError(HTTPStatus.BAD_REQUEST, NOT_CHANNEL_ADMIN)

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
            self.state.pending.clear()
        self.state.webhook = Webhook(
            url=url, secret_token=secret, max_connections=_int_param(params, "max_connections") or 40
        )
        self.state.signal.notify()
        self._start_webhook_delivery()
        return True

    async def _delete_webhook(self, params: JsonDict) -> bool:
        if _bool_param(params, "drop_pending_updates"):
            self.state.pending.clear()
        self.state.webhook = None
        self.state.signal.notify()
        return True

    async def _get_webhook_info(self, params: JsonDict) -> JsonDict:
        webhook = self.state.webhook
        info: JsonDict = {
            "url": webhook.url if webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.state.pending),
        }
        if webhook is not None:
            info["max_connections"] = webhook.max_connections
            if webhook.last_error_date is not None:
                info["last_error_date"] = webhook.last_error_date
                info["last_error_message"] = webhook.last_error_message
        if self.state.allowed_updates is not None:
            info["allowed_updates"] = sorted(self.state.allowed_updates)
        return info

    # -- webhook delivery -------------------------------------------------------------------

    def _start_webhook_delivery(self) -> None:
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.get_running_loop().create_task(self._deliver_webhook_updates())

    async def _deliver_webhook_updates(self) -> None:
        """POSTs pending updates one at a time, in order, retrying the head until it gets a 2xx."""
        while (webhook := self.state.webhook) is not None and not self._closing:
            if not self.state.pending:
                await self.state.signal.wait(None)
                continue
            update = self.state.pending[0]
            if await self._post_to_webhook(webhook, update):
                self.state.forget_delivered(update)
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


# -- HTTP -----------------------------------------------------------------------------------


@tornado.web.stream_request_body
class BotApiHandler(tornado.web.RequestHandler):
    """One method call; its body is read as it arrives, files straight to the spool."""

    def initialize(self, api: BotApi) -> None:
        self.api = api
        self.body: RequestBody | None = None

    def prepare(self) -> None:
        # RequestBody enforces Telegram's limits itself, and reads an oversized body to its end.
        assert self.request.connection is not None
        self.request.connection.set_max_body_size(MAX_READ_BODY)  # type: ignore[attr-defined]
        self.body = RequestBody(self.request.headers, self.api.state.files)

    def data_received(self, chunk: bytes) -> None:
        assert self.body is not None
        self.body.feed(chunk)

    async def get(self, token: str, method: str) -> None:
        assert self.body is not None
        try:
            params = self.body.params(self.request.query_arguments)
            result = await self.api.call(token, method, params, refused=self.body.error)
        except ApiError as error:
            self.set_status(error.error_code)
            self.finish(error.payload())
            return
        finally:
            self.body.release()
        self.finish({"ok": True, "result": result})

    async def post(self, token: str, method: str) -> None:
        await self.get(token, method)

    def on_connection_close(self) -> None:
        if self.body is not None:
            self.body.release()


class FileHandler(tornado.web.RequestHandler):
    """The download path: a file's bytes, streamed chunk by chunk from the spool."""

    def initialize(self, api: BotApi) -> None:
        self.api = api

    async def get(self, token: str, file_path: str) -> None:
        try:
            file = self.api.download(token, file_path)
        except ApiError as error:
            self.set_status(error.error_code)
            self.finish(error.payload())
            return
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", file.blob.size)
        try:
            for chunk in file.blob.chunks():
                self.write(chunk)
                # Waits until the chunk is on its way: a slow reader slows the reading.
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return
        self.finish()


class NotFoundHandler(tornado.web.RequestHandler):
    def prepare(self) -> None:
        self.set_status(HTTPStatus.NOT_FOUND)
        self.finish(ApiError(HTTPStatus.NOT_FOUND).payload())


# -- parameters -------------------------------------------------------------------------


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


def _message_text(text: Any, parse_mode: str | None) -> str:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message text is empty")
    shown = visible_text(text, parse_mode)
    if not shown.strip():
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message text is empty")
    if utf16_length(shown) > MAX_TEXT_LENGTH:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message is too long")
    return text


def _caption(caption: Any, parse_mode: str | None) -> str:
    if caption is None:
        return ""
    text = str(caption)
    if utf16_length(visible_text(text, parse_mode)) > MAX_CAPTION_LENGTH:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: message caption is too long")
    return text


def _parse_mode(parse_mode: Any) -> str | None:
    # The fake does not render markup: the text is stored and returned as the bot sent it.
    if parse_mode in (None, ""):
        return None
    if str(parse_mode).lower() not in PARSE_MODES:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: unsupported parse_mode")
    return str(parse_mode)


def _photo_size(blob: Blob) -> tuple[int, int]:
    """The (width, height) Telegram would read of a photo, or its refusal of the image."""
    size = images.image_size(blob.head(images.HEAD_SIZE))
    if size is None:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: IMAGE_PROCESS_FAILED")
    if blob.size > MAX_PHOTO_SIZE:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: PHOTO_SAVE_FILE_INVALID")
    width, height = size
    too_long = max(width, height) > MAX_PHOTO_RATIO * min(width, height)
    if not width or not height or width + height > MAX_PHOTO_SIDES or too_long:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    return size


def _resent_media(file: TelegramFile) -> JsonDict | list[JsonDict]:
    """What a message shows of a file sent again by its file_id: the same file."""
    return [file.to_object()] if file.kind == "photo" else file.to_object()


def _document_names(upload: Upload) -> JsonDict:
    names: JsonDict = {"mime_type": upload.mime_type}
    if upload.file_name is not None:
        names = {"file_name": upload.file_name, **names}
    return names


def _recorded(params: JsonDict) -> JsonDict:
    """The parameters as an attempt keeps them: an upload by its name, size and sha256."""
    return {name: value.to_json() if isinstance(value, Upload) else value for name, value in params.items()}


def _bot_id(token: str) -> int:
    prefix = token.split(":", 1)[0]
    return int(prefix) if prefix.isdigit() else 1
