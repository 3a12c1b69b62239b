"""What the import machinery refuses, and where: the import domain's own exceptions.

An upload, a chunk or a request to start or end an import may be refused for
what it is (a bad channel, a file that cannot be read, a chunk out of order)
or for when it comes (the import has ended, this replica reads as many imports
as it may). Each refusal says what was refused (`kind`, `detail`) and where
(`problems`: the field, and for a file the line and byte offset). It knows
nothing of HTTP: the API's handlers turn every refusal into its problem
document in one place (server/problems.py), as they do their own errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bson import ObjectId


@dataclass(frozen=True, slots=True)
class FilePlace:
    """Where in the user's file: the physical line (when known) and the byte offset."""

    line: int | None
    offset: int | None


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One field of the request at fault, what is wrong with it, and where in the file when that is known."""

    field: str
    message: str
    place: FilePlace | None = None


class Refused(Exception):
    """Something the import machinery will not do.

    `kind` names the refusal (it becomes the problem's type), `detail` says why
    in a sentence, `problems` lists the fields at fault. `import_id` names an
    import that the refusal ended as failed, so its report can be found.
    """

    def __init__(
        self, kind: str, detail: str, problems: Sequence[FieldProblem] = (), *, import_id: ObjectId | None = None
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.problems = list(problems)
        self.import_id = import_id

    def __str__(self) -> str:
        return self.detail


class Malformed(Refused):
    """The request is not what the import protocol takes (a bad channel, a broken form or chunk)."""


class TooLarge(Refused):
    """More than an import may take: bytes, or chunks."""


class UnsupportedFile(Refused):
    """The file is of no kind an import reads."""


class Unreadable(Refused):
    """The file is of a kind an import reads, but it cannot be imported: empty, or broken before its first record."""


class Conflicting(Refused):
    """The import's state forbids it now: the import has ended, is no chunked import, or lacks chunks."""


class TryLater(Refused):
    """Refused for now, not for what it is: ask again after `retry_after` seconds."""

    def __init__(self, kind: str, detail: str, retry_after: int) -> None:
        super().__init__(kind, detail)
        self.retry_after = retry_after
