"""The sessions API: list and search open sessions, read them and their messages,
answer a contact as an agent, and finish a session with a goodbye."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

from bson import ObjectId
from nats.errors import Error as NatsError
from tornado.web import stream_request_body, url

from contract import clock, eventstream
from contract.messaging import OutboundFile, OutboundMessage
from runtime.failpoints import failpoint
from runtime.httpserver import declared_length
from server import eventpublishing, names, sessions
from server.agentfiles import FORM_SLACK, AgentFile, AgentUpload
from server.cursors import CursorInvalid
from server.handlers.base import ApiHandler, FieldProblems, ParameterProblems, key_reused, media_type, object_id
from server.models.stored import IdempotencyKeyReused
from server.problems import ApiError, database_errors

log = logging.getLogger(__name__)

T = TypeVar("T")

SESSION_ID = r"(?P<session_id>[^/]+)"
MESSAGE_ID = r"(?P<message_id>[^/]+)"

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_QUERY_LENGTH = 200
# A reply's characters JSON-escaped at worst as surrogate pairs (12 bytes each),
# plus room for the rest of the object; a larger body is not a reply and is not read.
ESCAPED_CHARACTER_BYTES = 12
REPLY_BODY_SLACK = 4096


def reply_body_limit(max_characters: int) -> int:
    """The largest body an agent reply of `max_characters` can take."""
    return max_characters * ESCAPED_CHARACTER_BYTES + REPLY_BODY_SLACK


_PLATFORM = re.compile(r"[a-z0-9_-]{1,32}")
# json.loads turns a "\ud83d" escape without its pair into a lone surrogate code point.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_QUERY_PUNCTUATION = frozenset(" '’-")
# RFC 3339 date-time, as the OpenAPI `format: date-time` promises; the zone is
# required so no one's local time is taken for UTC.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def session_resource(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "contact": {
            "platform": doc["platform"],
            "identifier": doc["contact_identifier"],
            "name": doc.get("contact_name") or "",
            "blocked": bool(doc.get("contact_blocked_at")),
            "blocked_at": clock.rfc3339(doc["contact_blocked_at"]) if doc.get("contact_blocked_at") else None,
        },
        "created_at": clock.rfc3339(doc["created_at"]),
        "last_message_at": clock.rfc3339(doc["last_message_at"]),
        "message_count": doc.get("message_count", 0),
        "last_message_preview": doc.get("last_message_preview") or "",
    }


def message_resource(doc: dict[str, Any]) -> dict[str, Any]:
    resource = {
        "id": str(doc["_id"]),
        "session_id": str(doc["session_id"]),
        "direction": doc["direction"],
        "kind": doc.get("kind") or "text",
        "text": doc["text"],
        "sent_at": clock.rfc3339(doc["sent_at"]),
    }
    if doc.get("file"):
        resource["file"] = eventstream.file_summary(doc["file"])
    for name in ("location", "contact"):
        if doc.get(name):
            resource[name] = doc[name]
    if doc.get("edited_at"):
        resource["edited_at"] = clock.rfc3339(doc["edited_at"])
        resource["earlier_versions"] = [
            {"text": version["text"], "at": clock.rfc3339(version["at"])} for version in doc.get("versions") or []
        ]
    return resource


def messages_listing(session_id: ObjectId) -> str:
    return json.dumps(["messages", str(session_id)])


class ListingParameters(ParameterProblems):
    """The parameters of a listing (page size, cursor, search and filters), every problem reported at once."""

    def __init__(self, handler: SessionsApiHandler) -> None:
        super().__init__(handler)
        self._cursors = handler.services.cursors

    def limit(self) -> int:
        raw = self.raw("limit")
        if raw is None:
            return DEFAULT_LIMIT
        # Length first: int() refuses over 4300 digits with a ValueError.
        if not raw.isascii() or not raw.isdigit() or len(raw) > 6 or not 1 <= int(raw) <= MAX_LIMIT:
            self.add("limit", f"must be a whole number from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
            return DEFAULT_LIMIT
        return int(raw)

    def search_words(self) -> tuple[str, ...]:
        raw = self.raw("q")
        if raw is None or not raw.strip():
            return ()
        if len(raw) > MAX_QUERY_LENGTH:
            self.add("q", f"must be at most {MAX_QUERY_LENGTH} characters, got {len(raw)}")
            return ()
        for position, char in enumerate(raw):
            if not (char.isalnum() or char in _QUERY_PUNCTUATION or unicodedata.category(char).startswith("M")):
                self.add(
                    "q",
                    "may hold only letters, digits, spaces, apostrophes and hyphens; "
                    f"found {char!r} at position {position}",
                )
                return ()
        words = names.query_keys(raw)
        if not words:
            self.add("q", "holds no letters or digits to search for")
        return tuple(words)

    def platform(self) -> str | None:
        raw = self.raw("platform")
        if raw is None:
            return None
        platform = raw.lower()
        if not _PLATFORM.fullmatch(platform):
            self.add("platform", "must be 1 to 32 letters, digits, '_' or '-', like 'telegram'")
            return None
        return platform

    def active_since(self) -> dt.datetime | None:
        raw = self.raw("active_since")
        if raw is None:
            return None
        try:
            if not _DATE_TIME.fullmatch(raw):
                raise ValueError(raw)
            since = dt.datetime.fromisoformat(raw.upper())
            # An offset can carry a date past the year 1..9999 range in UTC
            # (0001-01-01T00:00:00+23:59); the listing needs it in UTC.
            since.astimezone(dt.UTC)
            return since
        except (ValueError, OverflowError):
            self.add(
                "active_since",
                f"must be an RFC 3339 date-time with a zone, such as 2024-05-01T12:00:00Z, got {raw[:40]!r}",
            )
            return None

    def resume(self, listing: str, read: Callable[[dict[str, Any]], T]) -> T | None:
        """The position in `cursor`, checked only once every other parameter is valid,
        because a listing with bad filters has no cursors to compare with."""
        raw = self.raw("cursor")
        if raw is None or self.errors:
            return None
        try:
            return read(self._cursors.decode(listing, raw))
        except CursorInvalid as exc:
            self.add("cursor", f"{exc}; start again without a cursor")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("a validly signed cursor held an unreadable position: %r", exc)
            self.add("cursor", "cannot be read; start again without a cursor")
        return None


class SessionsApiHandler(ApiHandler):
    """Shared plumbing of the sessions routes."""

    async def promise(self, message: OutboundMessage) -> None:
        with database_errors():
            await self.services.outbound.promise(message)

    async def open_session(self, raw_id: str) -> dict[str, Any]:
        session_id = object_id(raw_id)
        session = None if session_id is None else await self.database(sessions.find_session, session_id)
        if session is None:
            raise ApiError(404, f"there is no open session with id {raw_id[:40]!r}", kind="session-not-found")
        return session

    async def open_message(self, session_id: str, message_id: str) -> dict[str, Any]:
        """A message of an open session, or a 404 naming which of the two is not there."""
        session = await self.open_session(session_id)
        wanted = object_id(message_id)
        message = None if wanted is None else await self.database(sessions.find_message, session["_id"], wanted)
        if message is None:
            raise ApiError(
                404, f"session {session_id} has no message with id {message_id[:40]!r}", kind="message-not-found"
            )
        return message


class SessionsHandler(SessionsApiHandler):
    SUPPORTED_METHODS = ("GET",)

    async def get(self) -> None:
        """Open sessions, most recent activity first, optionally searched and filtered."""
        params = ListingParameters(self)
        limit = params.limit()
        criteria = sessions.SessionFilter(
            words=params.search_words(), platform=params.platform(), active_since=params.active_since()
        )
        resume = params.resume(criteria.listing(), sessions.SessionsResume.from_position)
        params.check()
        page = await self.database(
            sessions.list_sessions,
            criteria,
            limit,
            resume,
            max_examined=self.services.config.search_max_examined,
            hints=self.services.slice_hints,
        )
        cursor = self.services.cursors.encode(criteria.listing(), page.resume.to_position()) if page.resume else None
        self.write_json({"items": [session_resource(doc) for doc in page.sessions], "next_cursor": cursor})


class SessionHandler(SessionsApiHandler):
    SUPPORTED_METHODS = ("GET", "DELETE")

    async def get(self, session_id: str) -> None:
        """One open session."""
        self.write_json(session_resource(await self.open_session(session_id)))

    async def delete(self, session_id: str) -> None:
        """Finish the session: delete it and its messages, and say goodbye to the contact.

        The goodbye is promised (kept in the outbox) before anything is deleted, so
        neither a crash nor NATS being down loses it; its key is the session's, so
        JetStream and the bot's delivered-key store drop any repeat.
        """
        session = await self.open_session(session_id)
        chat = session.get("chat_id")
        if chat:
            await self.promise(
                OutboundMessage(
                    key=f"goodbye:{session['_id']}",
                    chat_id=chat,
                    text=self.services.config.goodbye_text,
                    kind="goodbye",
                    meta={"session_id": str(session["_id"])},
                )
            )
        else:
            log.info("session %s finished without a goodbye: no chat is known for it", session["_id"])
        # Files the messages stored meanwhile keep: those messages move to the contact's next session.
        files = await self.database(sessions.file_objects, session["_id"])
        # Promised before the delete and held until the session is gone: a crash
        # after the delete loses no event, a failed delete announces none. Its
        # relay erases the session's copies in the streams (server.eventpublishing.erase_session).
        with database_errors():
            await self.services.outbound.promise_event(
                eventpublishing.session_finished(session),
                str(session["_id"]),
                after_session_gone=session["_id"],
                chat_id=chat,
                files=files,
            )
        await self.database(sessions.finish, session["_id"])
        self.services.outbound.wake()
        log.info("session %s finished", session["_id"])
        self.set_status(204)
        self.finish()


@stream_request_body
class SessionMessagesHandler(SessionsApiHandler):
    SUPPORTED_METHODS = ("GET", "POST")

    def prepare(self) -> None:
        super().prepare()
        self._body: list[bytes] = []
        self._upload: AgentUpload | None = None
        if self.request.method != "POST":
            return  # a GET with a body was refused before it was read (runtime/httpserver.py)
        limit = reply_body_limit(self.services.config.reply_max_characters)
        if media_type(self.request.headers.get("Content-Type")) == "multipart/form-data":
            # An agent's file: streamed to a spool file, so the body may be as large as the file.
            limit = self.services.config.agent_file_max_bytes + FORM_SLACK
            self._upload = AgentUpload(self.request.headers, self.services.config.agent_file_max_bytes)
        length = declared_length(self.request.headers)
        if length is not None and length > limit:
            raise ApiError(413, f"an agent reply body is at most {limit} bytes", kind="payload-too-large")
        if self.request.connection is not None:  # chunked bodies are cut off at the limit too
            self.request.connection.set_max_body_size(limit)  # type: ignore[attr-defined]
            if self._upload is not None:
                self.request.connection.set_body_timeout(  # type: ignore[attr-defined]
                    self.services.config.import_body_timeout
                )

    def data_received(self, chunk: bytes) -> None:
        if self._upload is not None:
            self._upload.receive(chunk)
        else:
            self._body.append(chunk)

    def on_finish(self) -> None:
        if getattr(self, "_upload", None) is not None:
            self._upload.close()  # type: ignore[union-attr]

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if getattr(self, "_upload", None) is not None:
            self._upload.close()  # type: ignore[union-attr]

    async def get(self, session_id: str) -> None:
        """The session's messages, oldest first."""
        session = await self.open_session(session_id)
        params = ListingParameters(self)
        limit = params.limit()
        listing = messages_listing(session["_id"])
        resume = params.resume(listing, sessions.MessagesResume.from_position)
        params.check()
        page = await self.database(sessions.list_messages, session["_id"], limit, resume)
        cursor = self.services.cursors.encode(listing, page.resume.to_position()) if page.resume else None
        self.write_json({"items": [message_resource(doc) for doc in page.messages], "next_cursor": cursor})

    async def post(self, session_id: str) -> None:
        """An agent's reply (a text, or a file with its caption): stored in the session and
        delivered to the contact."""
        upload: AgentFile | None = None
        if self._upload is not None:
            text, upload = self._upload.result()
        else:
            self.request.body = b"".join(self._body)
            text = agent_text(*self.body_fields(["text"], "an agent reply"), self.services.config.reply_max_characters)
        session = await self.open_session(session_id)
        chat = session.get("chat_id")
        if not chat:
            raise ApiError(
                409,
                "this session has no chat to deliver to (it was imported, not started by the contact)",
                kind="no-chat",
            )
        if session.get("contact_blocked_at"):
            raise ApiError(
                409,
                "the contact blocked the bot: Telegram refused a message to them with 403 'bot was blocked by "
                f"the user' at {clock.rfc3339(session['contact_blocked_at'])}, so this reply was not stored or "
                "sent; the session is reachable again once the contact writes to the bot",
                kind="contact-blocked",
            )
        idempotency_key = self.idempotency_key()
        message_id = ObjectId()
        file = await self.keep_agent_file(session, message_id, upload) if upload is not None else None
        try:
            message = await self.database(sessions.add_agent_reply, session, text, idempotency_key, message_id, file)
        except IdempotencyKeyReused:
            await self.forget_agent_file(file)
            raise key_reused(
                "this Idempotency-Key was used before with another reply; use a new key for a new reply"
            ) from None
        if message is None:
            await self.forget_agent_file(file)
            raise ApiError(404, f"session {session_id} was finished meanwhile", kind="session-not-found")
        if message["_id"] != message_id:
            await self.forget_agent_file(file)  # a retry: the first try's message and file stand
        await self.promise(
            OutboundMessage(
                key=f"agent:{message['_id']}",
                chat_id=chat,
                text=text,
                kind="agent",
                meta={"session_id": str(session["_id"]), "message_id": str(message["_id"])},
                file=outbound_file(message),
            )
        )
        failpoint("server.reply.after_promised")  # stored and promised, the agent not yet told
        self.set_header("Location", self.reverse_url("session_message", str(session["_id"]), str(message["_id"])))
        self.write_json(message_resource(message), status=201)

    async def keep_agent_file(self, session: dict[str, Any], message_id: ObjectId, upload: AgentFile) -> dict[str, Any]:
        """Put the agent's file in the store before anything refers to it; what the message records."""
        name = agent_file_object(session["_id"], message_id)
        try:
            await self.services.files.put(name, upload.spool, upload.sha256)
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("agent file not stored, NATS: %r", exc)
            raise ApiError(
                503, "the file store is unavailable; try again", kind="unavailable", headers={"Retry-After": "5"}
            ) from exc
        record = {
            "name": upload.name,
            "mime_type": upload.mime_type,
            "size": upload.size,
            "available": True,
            "object_name": name,
            "sha256": upload.sha256,
            "send_as": upload.send_as,
        }
        return {"kind": upload.send_as, "record": record}

    async def forget_agent_file(self, file: dict[str, Any] | None) -> None:
        if file is not None:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await self.services.files.delete([file["record"]["object_name"]])


def agent_file_object(session_id: ObjectId, message_id: ObjectId) -> str:
    """Where an agent's file is kept: one object per message, so a retry never overwrites another's."""
    return f"agent/{session_id}/{message_id}"


def outbound_file(message: dict[str, Any]) -> OutboundFile | None:
    file = message.get("file")
    if not file:
        return None
    return OutboundFile(
        object_name=file["object_name"],
        name=file["name"],
        mime_type=file["mime_type"],
        size=file["size"],
        send_as=file.get("send_as", "document"),
    )


def agent_text(body: dict[str, Any], problems: FieldProblems, max_characters: int) -> str:
    """The reply's text; every problem of the body (`problems`, its unknown fields among them) at once.

    Its length is counted in characters (code points); a text past one Telegram
    message (4,096 UTF-16 code units) is sent as several.
    """
    text = body.get("text")
    if text is None:
        problems.add("text", "is required")
    elif not isinstance(text, str):
        problems.add("text", "must be a string")
    elif not text.strip():
        problems.add("text", "must not be empty or only spaces")
    elif (surrogate := _LONE_SURROGATE.search(text)) is not None:
        # JSON lets "\ud800" through on its own; it is no character, and no store or Telegram takes it.
        problems.add(
            "text",
            f"holds a lone UTF-16 surrogate (U+{ord(surrogate.group()):04X}) at character {surrogate.start()}: "
            "not a character; an emoji is sent as its pair, or as itself",
        )
    elif len(text) > max_characters:
        problems.add(
            "text",
            f"must be at most {max_characters} characters (REPLY_MAX_CHARACTERS; longer than one "
            f"Telegram message is sent as several), got {len(text)}",
        )
    problems.check()
    assert isinstance(text, str)  # a problem otherwise
    return text


class SessionMessageHandler(SessionsApiHandler):
    SUPPORTED_METHODS = ("GET",)

    async def get(self, session_id: str, message_id: str) -> None:
        """One message of an open session."""
        self.write_json(message_resource(await self.open_message(session_id, message_id)))


default_handlers = [
    url(r"/v1/sessions", SessionsHandler, name="sessions"),
    url(rf"/v1/sessions/{SESSION_ID}", SessionHandler, name="session"),
    url(rf"/v1/sessions/{SESSION_ID}/messages", SessionMessagesHandler, name="session_messages"),
    url(rf"/v1/sessions/{SESSION_ID}/messages/{MESSAGE_ID}", SessionMessageHandler, name="session_message"),
]
