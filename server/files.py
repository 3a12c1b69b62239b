"""The files contacts sent, read from and deleted in the JetStream object store.

The bot puts each file in FILES_BUCKET before it relays the message (bot/files.py);
the server only reads it, chunk by chunk, and deletes it with its session.
nats.py's `ObjectStore.get` gathers a whole object in memory, so the chunks are
read here one at a time (a direct message get of the next chunk on the object's
chunk subject): a download holds one chunk (128 KiB) however large the file.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from contract.messaging import FILES_BUCKET

log = logging.getLogger(__name__)

FILES_STREAM = f"OBJ_{FILES_BUCKET}"


class FileCorrupt(Exception):
    """The store's chunks of a file are missing or do not match its digest."""


class FileStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def _bucket(self) -> ObjectStore | None:
        """The bucket, or None when no file was ever kept (the bot creates it)."""
        try:
            return await self._js.object_store(FILES_BUCKET)
        except NotFoundError:
            return None

    async def info(self, name: str) -> ObjectInfo | None:
        """What the store holds under `name`, or None when it holds nothing (deleted, never kept)."""
        bucket = await self._bucket()
        if bucket is None:
            return None
        try:
            return await bucket.get_info(name)
        except (ObjectNotFoundError, NotFoundError):
            return None

    async def chunks(self, info: ObjectInfo) -> AsyncIterator[bytes]:
        """The file's bytes, one stored chunk at a time, checked against its digest at the end."""
        subject = f"$O.{FILES_BUCKET}.C.{info.nuid}"
        digest = hashlib.sha256()
        sequence = 0
        for _ in range(info.chunks or 0):
            try:
                chunk = await self._js.get_msg(FILES_STREAM, seq=sequence + 1, subject=subject, next=True)
            except NotFoundError as exc:
                raise FileCorrupt(f"chunks of {info.name} are missing") from exc
            sequence = chunk.seq or sequence + 1
            data = chunk.data or b""
            digest.update(data)
            yield data
        expected = (info.digest or "").removeprefix("SHA-256=")
        if base64.urlsafe_b64encode(digest.digest()).decode() != expected:
            raise FileCorrupt(f"{info.name} does not match its digest")

    async def delete(self, names: Iterable[str]) -> None:
        """Delete these files; one already gone is no error. Raises NatsError when NATS does not answer."""
        wanted = list(names)
        if not wanted:
            return
        bucket = await self._bucket()
        if bucket is None:
            return
        for name in wanted:
            try:
                await bucket.delete(name)
            except (ObjectNotFoundError, NotFoundError):
                continue  # deleted by an earlier try of the same finish
