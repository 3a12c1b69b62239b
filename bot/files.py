"""Keeping the files contacts send: downloaded from Telegram, put in the JetStream object store.

A Telegram file link expires and a contact may delete the message, so the bot
keeps the bytes before it relays the message: the server only ever reads the
store. The object's name comes from the chat and the message
(contract.messaging.file_object_name), so a crash between the put and the
publish, which makes Telegram deliver the update again, puts the same object
again instead of a second one, and the publish is de-duplicated as ever.

Bytes never sit whole in memory: the download is spooled to a temporary file
as it arrives, counted against the Bot API's 20 MB, and the object store reads
that file in 128 KiB chunks. A file's stated size is Telegram's (or a hostile
client's) word; only the bytes counted here are stored as its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import httpx
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from telegram import Bot, InputFile
from telegram.error import BadRequest, TelegramError

from contract import messaging
from contract.messaging import MAX_DOWNLOAD_BYTES, InboundFile, OutboundMessage
from contract.values import well_formed_media_type
from runtime.failpoints import failpoint
from runtime.filestore import FileStore

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 60.0
# Uploading 50 MB takes a while on a slow link; PTB's default write timeout is 20 s.
SEND_TIMEOUT = 300.0
DOWNLOAD_ATTEMPTS = 3

# What Telegram sends each kind as when it names no type (it names none for photos).
DEFAULT_MIME_TYPES = {
    "photo": ("image/jpeg", ".jpg"),
    "voice": ("audio/ogg", ".ogg"),
    "audio": ("audio/mpeg", ".mp3"),
    "video": ("video/mp4", ".mp4"),
    "video_note": ("video/mp4", ".mp4"),
    "animation": ("video/mp4", ".mp4"),
    "sticker": ("image/webp", ".webp"),
    "document": ("application/octet-stream", ""),
}


class FileGone(Exception):
    """An agent's file is not in the store (deleted with its session, or never put)."""


class FileNotKept(Exception):
    """The file's bytes cannot be kept; `reason` says why, for the agent to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreUnavailable(Exception):
    """The object store did not take the file; the update must be relayed again later."""


@dataclass(frozen=True)
class Attachment:
    """What Telegram says of a file: its id, and the name, type and size it states."""

    kind: str
    file_id: str
    name: str
    mime_type: str
    stated_size: int


def mime_type_of(kind: str, stated: str | None) -> str:
    """The stated type when it is one (RFC 6838 syntax), else the kind's usual one."""
    return well_formed_media_type(stated) or DEFAULT_MIME_TYPES[kind][0]


def file_name_of(kind: str, message_id: int, stated: str | None) -> str:
    """The stated name, bounded; or one made of the kind and the message id. It is kept
    as the contact sent it: it is made safe where it is used (the download's header)."""
    if stated:
        return stated[: messaging.MAX_FILE_NAME_LENGTH]
    return f"{kind}-{message_id}{DEFAULT_MIME_TYPES[kind][1]}"


class FileKeeper:
    """Downloads a contact's file and puts it in the FILES_BUCKET object store."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.store = FileStore(js, replicas)

    async def send(self, bot: Bot, chat: int | str, outbound: OutboundMessage) -> None:
        """Send an agent's file (`outbound.file`) with its caption: sendPhoto or sendDocument.

        Read from the store chunk by chunk into a spool file, which the upload
        streams: the bot holds a chunk, not the file. Raises FileGone when the
        store no longer has it, and what the Bot API raises.
        """
        file = outbound.file
        assert file is not None
        info = await self.store.info(file.object_name)
        if info is None:
            raise FileGone(f"the file {file.object_name} is not in the store")
        with tempfile.TemporaryFile() as spool:
            async for chunk in self.store.chunks(info):
                spool.write(chunk)
            spool.flush()
            spool.seek(0)
            upload = InputFile(spool, filename=file.name or "file", read_file_handle=False)
            caption = outbound.text or None
            if file.send_as == "photo":
                await bot.send_photo(
                    chat_id=chat, photo=upload, caption=caption, read_timeout=SEND_TIMEOUT, write_timeout=SEND_TIMEOUT
                )
            else:
                await bot.send_document(
                    chat_id=chat,
                    document=upload,
                    caption=caption,
                    read_timeout=SEND_TIMEOUT,
                    write_timeout=SEND_TIMEOUT,
                )

    async def keep(self, bot: Bot, attachment: Attachment, object_name: str) -> InboundFile:
        """The file as the message records it: kept under `object_name`, or not kept and why.

        StoreUnavailable when NATS did not take it: nothing is relayed then, and
        Telegram delivers the update again.
        """
        unkept = InboundFile(
            name=attachment.name, mime_type=attachment.mime_type, size=attachment.stated_size, available=False
        )
        if attachment.stated_size > MAX_DOWNLOAD_BYTES:
            return _with_reason(unkept, "larger than the 20 MB the Telegram Bot API lets bots download")
        with tempfile.TemporaryFile() as spool:
            try:
                size, digest = await self._download(bot, attachment.file_id, spool)
            except FileNotKept as exc:
                log.warning("file of %s not kept: %s", object_name, exc.reason)
                return _with_reason(unkept, exc.reason)
            spool.seek(0)
            try:
                await self.store.put(object_name, spool, digest)
            except (NatsError, asyncio.TimeoutError) as exc:
                raise StoreUnavailable(f"object store did not take {object_name}: {exc!r}") from exc
        # Kept, not yet relayed: a crash here means Telegram sends the update
        # again, and the same object name is put again.
        failpoint("bot.files.after_put_before_publish")
        return InboundFile(
            name=attachment.name, mime_type=attachment.mime_type, size=size, available=True, object_name=object_name
        )

    async def _download(self, bot: Bot, file_id: str, spool: IO[bytes]) -> tuple[int, str]:
        """Into `spool`: (bytes, sha256). FileNotKept when Telegram will not give it or it is too large."""
        last: Exception | None = None
        for attempt in range(DOWNLOAD_ATTEMPTS):
            spool.seek(0)
            spool.truncate()
            try:
                telegram_file = await bot.get_file(file_id)
                return await self._fetch(str(telegram_file.file_path), spool)
            except BadRequest as exc:  # too big by the size on record, or gone
                raise FileNotKept(f"Telegram refused the file: {exc.message}") from exc
            except (TelegramError, httpx.HTTPError) as exc:
                last = exc
                await asyncio.sleep(0.5 * (attempt + 1))
        raise FileNotKept(f"the download failed {DOWNLOAD_ATTEMPTS} times: {type(last).__name__}")

    async def _fetch(self, url: str, spool: IO[bytes]) -> tuple[int, str]:
        size, digest = 0, hashlib.sha256()
        # A client per download, closed with it (a connection per file costs nothing
        # beside the file); not PTB's, which reads a download whole into memory.
        # The link holds the token, so nothing here logs a URL.
        async with (
            httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code == 404:
                raise FileNotKept("Telegram no longer has the file")
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                # Counted, not trusted: the stated size may be a lie.
                if size > MAX_DOWNLOAD_BYTES:
                    raise FileNotKept("larger than the 20 MB the Telegram Bot API lets bots download")
                digest.update(chunk)
                spool.write(chunk)
        spool.flush()
        return size, digest.hexdigest()


def _with_reason(file: InboundFile, reason: str) -> InboundFile:
    return InboundFile(name=file.name, mime_type=file.mime_type, size=file.size, available=False, reason=reason)


def attachment_of(message: Any) -> Attachment | None:
    """The file a Telegram message carries, if any: the largest size of a photo, the
    animation rather than the document Telegram also sends with it."""
    for kind in ("animation", "sticker", "video_note", "voice", "audio", "video", "document"):
        item = getattr(message, kind, None)
        if item is not None:
            break
    else:
        if not message.photo:
            return None
        kind, item = "photo", message.photo[-1]
    return Attachment(
        kind=kind,
        file_id=item.file_id,
        name=file_name_of(kind, message.message_id, getattr(item, "file_name", None)),
        mime_type=mime_type_of(kind, getattr(item, "mime_type", None)),
        stated_size=item.file_size or 0,
    )
