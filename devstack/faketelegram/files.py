"""The files the fake holds, and the Telegram file records that name them.

Bytes live in a temporary directory of the fake's own (removed when it stops), written as
they arrive, or are generated from a seed when a test only needs a file of some size: a test
may push twenty 20 MB files through at once, and none of them sits whole in memory. A
TelegramFile is what the Bot API shows of one: its ``file_id``, its ``file_unique_id``, the
``file_path`` that getFile hands out for the download path, and the size it states, which a
hostile test may set to a lie; the download always gives the real bytes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]

CHUNK_SIZE = 64 * 1024
# "Bots can currently download files of up to 20MB in size" and "send files of up to
# 50 MB" (Bot API, getFile and sending files); Telegram's MB are MiB.
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024
MAX_UPLOAD_SIZE = 50 * 1024 * 1024
# The largest file Telegram keeps at all (2 GB); a generated file is hashed when it is made,
# about a second per GB here.
MAX_GENERATED_SIZE = 2 * 1024 * 1024 * 1024
# An odd step turns each chunk of a generated file by a different amount, for 4 GiB.
GENERATED_TURN = 7919

# Where Telegram's file paths put each kind, and the extension it gives it when the file's
# own name offers none.
FOLDERS = {
    "photo": ("photos", "jpg"),
    "document": ("documents", None),
    "voice": ("voice", "oga"),
    "audio": ("music", "mp3"),
    "video": ("videos", "mp4"),
    "video_note": ("video_notes", "mp4"),
    "animation": ("animations", "mp4"),
    "sticker": ("stickers", "webp"),
    "thumbnail": ("thumbnails", "jpg"),
}


def generated_chunks(seed: int, size: int) -> Iterator[bytes]:
    """The bytes of a generated file, the same for the same seed and size.

    One random block, turned by a different amount for each chunk, so a chunk delivered
    twice or out of order changes the file's sha256.
    """
    block = random.Random(seed).randbytes(CHUNK_SIZE)
    for index, start in enumerate(range(0, size, CHUNK_SIZE)):
        turn = (index * GENERATED_TURN) % CHUNK_SIZE
        yield (block[turn:] + block[:turn])[: size - start]


@dataclass
class Blob:
    """A file's bytes: spooled to the fake's directory (``path``) or generated (``seed``)."""

    size: int
    path: Path | None = None
    seed: int = 0
    digest: str | None = None

    def chunks(self) -> Iterator[bytes]:
        if self.path is None:
            yield from generated_chunks(self.seed, self.size)
            return
        with open(self.path, "rb") as spooled:
            while chunk := spooled.read(CHUNK_SIZE):
                yield chunk

    @property
    def sha256(self) -> str:
        """The hex sha256 of the bytes, computed once."""
        if self.digest is None:
            hashed = hashlib.sha256()
            for chunk in self.chunks():
                hashed.update(chunk)
            self.digest = hashed.hexdigest()
        return self.digest

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes, for telling what kind of file this is."""
        head = bytearray()
        for chunk in self.chunks():
            head += chunk
            if len(head) >= size:
                break
        return bytes(head[:size])


class Spool:
    """Bytes written to the fake's directory as they arrive, counted and hashed on the way.

    Past ``limit`` bytes it stops writing and only counts, so an upload over Telegram's
    limit is read to its end (and refused) without filling the disk.
    """

    def __init__(self, path: Path, limit: int | None) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self._file = open(path, "wb")  # noqa: SIM115 - open until finish() or discard()

    @property
    def over_limit(self) -> bool:
        return self.limit is not None and self.size > self.limit

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if not self.over_limit:
            self._file.write(chunk)
            self._hash.update(chunk)

    def finish(self) -> Blob:
        self._file.close()
        return Blob(size=self.size, path=self.path, digest=self._hash.hexdigest())

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


@dataclass
class TelegramFile:
    """One file as the Bot API shows it."""

    kind: str
    file_id: str
    file_unique_id: str
    file_path: str
    blob: Blob
    # The size the Bot API states: the real one, a test's lie, or None (left out).
    stated_size: int | None
    # The rest of its object: a photo's width and height, a document's file_name and mime_type...
    details: JsonDict = field(default_factory=dict)

    @property
    def checked_size(self) -> int:
        """The size getFile judges by: Telegram trusts its own record of the file."""
        return self.blob.size if self.stated_size is None else self.stated_size

    def fields(self) -> JsonDict:
        """The fields every file object (PhotoSize, Document, Voice, ...) begins with."""
        fields: JsonDict = {"file_id": self.file_id, "file_unique_id": self.file_unique_id}
        if self.stated_size is not None:
            fields["file_size"] = self.stated_size
        return fields

    def to_object(self) -> JsonDict:
        """The PhotoSize, Document, Voice... object."""
        return {**self.fields(), **self.details}

    def to_file(self) -> JsonDict:
        """The File object getFile answers."""
        return {**self.fields(), "file_path": self.file_path}

    def describe(self) -> JsonDict:
        """What a test may know of the file, the real size and the bytes' sha256 included."""
        return {
            "kind": self.kind,
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_path": self.file_path,
            "file_size": self.stated_size,
            **self.details,
            "size": self.blob.size,
            "sha256": self.blob.sha256,
        }


class FileStore:
    """The fake's files: blobs by test reference, TelegramFiles by file_id and file_path.

    The directory is made on first use and removed by close(). clear() (a reset) forgets
    every file and deletes the spooled bytes; counters go on, so no file_path comes back.
    """

    def __init__(self) -> None:
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._spooled = 0
        self._paths_given = 0
        self._refs: dict[str, Blob] = {}
        self._by_id: dict[str, TelegramFile] = {}
        self._by_path: dict[str, TelegramFile] = {}
        self._blob_paths: set[Path] = set()

    @property
    def directory(self) -> Path | None:
        """Where the bytes are spooled, once something was."""
        return None if self._directory is None else Path(self._directory.name)

    def close(self) -> None:
        self.clear()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def clear(self) -> None:
        self._refs.clear()
        self._by_id.clear()
        self._by_path.clear()
        for path in self._blob_paths:
            # A download still streaming keeps its open file; unlinking does not cut it.
            path.unlink(missing_ok=True)
        self._blob_paths.clear()

    # -- bytes ------------------------------------------------------------------------------

    def spool(self, limit: int | None = None) -> Spool:
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="faketelegram-")
        self._spooled += 1
        path = Path(self._directory.name) / f"blob-{self._spooled}"
        self._blob_paths.add(path)
        return Spool(path, limit)

    def spool_bytes(self, chunks: Iterable[bytes]) -> Blob:
        spool = self.spool()
        for chunk in chunks:
            spool.write(chunk)
        return spool.finish()

    @staticmethod
    def generated(size: int, seed: int) -> Blob:
        return Blob(size=size, seed=seed)

    def keep(self, blob: Blob) -> str:
        """Holds ``blob`` for later messages; returns the reference they name it by."""
        ref = f"blob-{secrets.token_hex(8)}"
        self._refs[ref] = blob
        return ref

    def kept(self, ref: str) -> Blob | None:
        return self._refs.get(ref)

    # -- Telegram files ---------------------------------------------------------------------

    def add(self, kind: str, blob: Blob, *, stated_size: int | None, details: JsonDict | None = None) -> TelegramFile:
        """A new file of ``kind`` over ``blob``; its file_name lends the path its extension."""
        folder, default_extension = FOLDERS[kind]
        self._paths_given += 1
        details = dict(details or {})
        extension = _extension(details.get("file_name")) or default_extension
        file_path = f"{folder}/file_{self._paths_given}" + (f".{extension}" if extension else "")
        file = TelegramFile(
            kind=kind,
            file_id=_token(40),
            file_unique_id=_token(12),
            file_path=file_path,
            blob=blob,
            stated_size=stated_size,
            details=details,
        )
        self._by_id[file.file_id] = file
        self._by_path[file.file_path] = file
        return file

    def get(self, file_id: str) -> TelegramFile | None:
        return self._by_id.get(file_id)

    def at_path(self, file_path: str) -> TelegramFile | None:
        return self._by_path.get(file_path)

    def forget(self, file_id: str) -> bool:
        """Makes a file unavailable, as when its message was deleted; False if unknown."""
        file = self._by_id.pop(file_id, None)
        if file is None:
            return False
        with contextlib.suppress(KeyError):
            del self._by_path[file.file_path]
        return True


def _token(size: int) -> str:
    """A random identifier in the URL-safe base64 Telegram's file ids are written in."""
    return base64.urlsafe_b64encode(secrets.token_bytes(size)).decode().rstrip("=")


def _extension(name: str | None) -> str | None:
    # Only a short alphanumeric suffix: a hostile file name never reaches the file path.
    if not name or "." not in name:
        return None
    suffix = name.rsplit(".", 1)[1]
    return suffix.lower() if suffix.isascii() and suffix.isalnum() and len(suffix) <= 8 else None
