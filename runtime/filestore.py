"""Files kept in the JetStream object store FILES_BUCKET: contacts' and agents'.

The bot puts a contact's file before it relays the message (bot/files.py) and
reads an agent's to send it; the server puts an agent's file before it promises
the message, reads contacts' files for the API, and deletes a session's files
with it. nats.py's `ObjectStore.get` gathers a whole object in memory, so the
chunks are read here one at a time (a message get of the next chunk on the
object's chunk subject): a reader holds one chunk (128 KiB) however large the
file. `put` reads its source in chunks of the same size.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import IO, Any, cast

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta, StorageType
from nats.js.errors import BadRequestError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from contract.messaging import FILES_BUCKET

log = logging.getLogger(__name__)

FILES_STREAM = f"OBJ_{FILES_BUCKET}"


class FileCorrupt(Exception):
    """The store's chunks of a file are missing or do not match its digest."""


class FileStore:
    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self._js = js
        self._replicas = replicas
        self._store: ObjectStore | None = None

    async def _bucket(self, create: bool = False) -> ObjectStore | None:
        """The bucket; None when no file was ever kept, unless `create`."""
        if self._store is None:
            try:
                self._store = await self._js.object_store(FILES_BUCKET)
            except NotFoundError:
                if not create:
                    return None
                try:
                    self._store = await self._js.create_object_store(
                        FILES_BUCKET, storage=StorageType.FILE, replicas=self._replicas
                    )
                except BadRequestError:  # made meanwhile by another process
                    self._store = await self._js.object_store(FILES_BUCKET)
        return self._store

    async def put(self, name: str, source: IO[bytes], digest: str = "") -> ObjectInfo:
        """Store `source` (read from its current position) as `name`, replacing what was there."""
        bucket = await self._bucket(create=True)
        assert bucket is not None
        return await bucket.put(name, cast(Any, source), meta=ObjectMeta(name=name, description=digest or None))

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
