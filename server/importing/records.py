"""Normalising one session record of an import file, reporting every problem in it.

A record arrives as a dict read from JSON (ijson, orjson) or built from a CSV row
or a pandas row, so one value can come in several shapes: numbers as int,
Decimal (ijson) or float (pandas, with NaN for an empty cell), MongoDB extended
JSON (`{"$oid": ...}`, `{"$date": ...}`), and strings padded by spreadsheets.
Validation does not stop at the first problem: the import report lists every
field of a record that is wrong, each with a path such as `messages[2].date`
(message indexes count from 0, as in the JSON array).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from contract.messaging import KINDS, MAX_CONTACT_DIGITS, MAX_NAME_LENGTH, PLATFORM, TEXT_KIND
from contract.messaging import MAX_TEXT_LENGTH as MAX_CONTENT_LENGTH
from contract.values import json_type, object_id_text

MAX_MESSAGE_ID_LENGTH = 200
# A float holds every integer up to 2**53 exactly; beyond that a number read as
# float (pandas does so for an int column with blanks) may already be wrong.
_EXACT_FLOAT_LIMIT = 2**53
# A 64-bit integer as MongoDB's extended JSON writes one.
_NUMBER_LONG = re.compile(r"-?[0-9]{1,19}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    id: str | None
    content: str  # the text, or a file's caption ("" when none)
    date: datetime  # tz-aware UTC, millisecond precision
    kind: str = TEXT_KIND


@dataclass(frozen=True, slots=True)
class ImportedSession:
    source_id: str | None  # the record's `_id`, lower-case hex
    name: str
    platform: str  # lower-case, e.g. "telegram"
    contact_identifier: str  # digits only, no leading zeros
    messages: tuple[ImportedMessage, ...]


@dataclass(frozen=True, slots=True)
class RecordError:
    record: int  # 1-based position of the session in the file
    line: int | None  # physical line where the record starts (NDJSON, CSV)
    offset: int | None  # byte offset where the record starts, when known
    field: str  # e.g. "contact_identifier", "messages[2].date"; "" for the whole record
    message: str

    def __str__(self) -> str:
        where = f"record {self.record}"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class RecordInvalid(ValueError):
    """A record that cannot be imported; `errors` lists every problem found in it."""

    def __init__(self, errors: list[RecordError]) -> None:
        super().__init__("; ".join(str(error) for error in errors))
        self.errors = errors


class _Invalid(ValueError):
    """One field's value is wrong; the message says how."""


def normalise_session(
    raw: object, *, record: int, line: int | None = None, offset: int | None = None
) -> ImportedSession:
    """Validate one raw session record and return it normalised.

    Raises RecordInvalid listing every problem of the record. A field is
    missing when its key is absent, None, or a float NaN (pandas' empty cell).
    """
    report = _Report()
    if not isinstance(raw, Mapping):
        report.add("", f"expected a JSON object, got {json_type(raw)}")
        raise RecordInvalid(report.errors(record, line, offset))
    source_id = report.optional(raw, "_id", _source_id)
    name = report.required(raw, "name", _name)
    platform = report.required(raw, "platform_type", _platform)
    contact_identifier = report.required(raw, "contact_identifier", _contact_identifier)
    messages = _messages(raw, report)
    if report.problems:
        raise RecordInvalid(report.errors(record, line, offset))
    assert name is not None and platform is not None and contact_identifier is not None
    return ImportedSession(source_id, name, platform, contact_identifier, messages)


def message_key(platform: str, contact_identifier: str, message: ImportedMessage) -> str:
    """The message's natural key, unique across all sessions.

    A message without an id is keyed by its date and content, so importing the
    same file again finds the messages already stored instead of adding copies.
    """
    contact = f"{platform}:{contact_identifier}"
    if message.id is not None:
        return f"{contact}:id:{message.id}"
    parts: list[str] = [message.date.isoformat(timespec="milliseconds"), message.content]
    if message.kind != TEXT_KIND:
        parts.append(message.kind)  # texts keep the keys they always had
    fingerprint = orjson.dumps(parts)
    return f"{contact}:sha256:{hashlib.sha256(fingerprint).hexdigest()}"


# The problems one record reports; past them it says how many more it had. A
# record of thousands of bad messages would otherwise make an error object for
# each (and the import's report keeps only its first 100 errors anyway).
MAX_RECORD_PROBLEMS = 20


class _Report:
    """The problems found so far in one record, as (field, message) pairs."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.unlisted = 0

    def add(self, field: str, message: str) -> None:
        if len(self.problems) < MAX_RECORD_PROBLEMS:
            self.problems.append((field, message))
        else:
            self.unlisted += 1

    @property
    def found(self) -> int:
        """Every problem found, listed or not."""
        return len(self.problems) + self.unlisted

    def required(self, raw: Mapping[str, Any], key: str, parse: Callable[[Any], T], path: str = "") -> T | None:
        value = raw.get(key)
        if _missing(value):
            self.add(path + key, "required")
            return None
        return self.parse(path + key, parse, value)

    def optional(self, raw: Mapping[str, Any], key: str, parse: Callable[[Any], T], path: str = "") -> T | None:
        value = raw.get(key)
        return None if _missing(value) else self.parse(path + key, parse, value)

    def parse(self, field: str, parse: Callable[[Any], T], value: object) -> T | None:
        try:
            return parse(value)
        except _Invalid as problem:
            self.add(field, str(problem))
            return None

    def errors(self, record: int, line: int | None, offset: int | None) -> list[RecordError]:
        listed = [RecordError(record, line, offset, field, message) for field, message in self.problems]
        if self.unlisted:
            more = f"and {self.unlisted} more problems in this record, not listed"
            listed.append(RecordError(record, line, offset, "", more))
        return listed


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _source_id(value: object) -> str:
    # mongoexport writes ObjectIds as {"$oid": "..."}, the original file as plain strings.
    if isinstance(value, Mapping) and set(value) == {"$oid"}:
        value = value["$oid"]
    if not isinstance(value, str):
        raise _Invalid(f'expected an ObjectId string or {{"$oid": ...}}, got {json_type(value)}')
    source_id = object_id_text(value.strip())
    if source_id is None:
        raise _Invalid(f"expected an ObjectId (24 hexadecimal digits), got {_shown(value)}")
    return source_id


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {json_type(value)}")
    # NFC so that a name exported decomposed (as macOS does) equals the composed one.
    name = unicodedata.normalize("NFC", value.strip())
    if not name:
        raise _Invalid("must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise _Invalid(f"longer than {MAX_NAME_LENGTH} characters ({len(name)})")
    return name


def _platform(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {json_type(value)}")
    platform = value.strip().lower()
    if not platform:
        raise _Invalid("must not be empty")
    if not PLATFORM.fullmatch(platform):
        raise _Invalid(f"expected up to 32 letters, digits, '_' or '-', got {_shown(value)}")
    return platform


def _contact_identifier(value: object) -> str:
    """Digits without leading zeros, so 85996199709 and "085996199709" are one contact.

    Spreadsheets drop leading zeros of numbers anyway, and a string is the only
    way to write a phone number in E.164 form: spaces and one leading '+' are
    accepted and dropped ("+55 85 99619 9709" is 5585996199709); any other
    punctuation is refused rather than guessed at.
    """
    if isinstance(value, bool):
        raise _Invalid("expected a number or a string of digits, got boolean")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, float | Decimal):
        number = _whole_number(value)
    elif isinstance(value, str):
        digits = "".join(value.split())
        digits = digits.removeprefix("+")
        if not (digits.isascii() and digits.isdigit()):
            raise _Invalid(f"expected digits (spaces and a leading '+' allowed), got {_shown(value)}")
        # Measured before int(), which refuses more than 4,300 digits with a ValueError.
        digits = digits.lstrip("0") or "0"
        if len(digits) > MAX_CONTACT_DIGITS:
            raise _Invalid(f"longer than {MAX_CONTACT_DIGITS} digits ({len(digits)})")
        number = int(digits)
    else:
        raise _Invalid(f"expected a number or a string of digits, got {json_type(value)}")
    if number <= 0:
        raise _Invalid(f"must be a positive number, got {number}")
    identifier = str(number)
    if len(identifier) > MAX_CONTACT_DIGITS:
        raise _Invalid(f"longer than {MAX_CONTACT_DIGITS} digits ({len(identifier)})")
    return identifier


def _whole_number(value: float | Decimal) -> int:
    # int() of a Decimal such as 1E+999999999 would build a number of a billion digits.
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() >= MAX_CONTACT_DIGITS:
        raise _Invalid(f"longer than {MAX_CONTACT_DIGITS} digits")
    if not math.isfinite(value) or value != int(value):
        raise _Invalid(f"expected a whole number, got {value}")
    if isinstance(value, float) and abs(value) > _EXACT_FLOAT_LIMIT:
        raise _Invalid("too large to be exact as a floating-point number; write it as a string of digits")
    return int(value)


def _messages(raw: Mapping[str, Any], report: _Report) -> tuple[ImportedMessage, ...]:
    items = report.required(raw, "messages", _message_list)
    if items is None:
        return ()
    messages = []
    for index, item in enumerate(items):
        path = f"messages[{index}]"
        if not isinstance(item, Mapping):
            report.add(path, f"expected a JSON object, got {json_type(item)}")
            continue
        before = report.found
        message_id = report.optional(item, "id", _message_id, path + ".")
        kind = report.optional(item, "kind", _kind, path + ".") or TEXT_KIND
        if kind == TEXT_KIND:
            content = report.required(item, "content", _content, path + ".")
        else:  # a file, place or card: its caption, which may be empty
            content = report.optional(item, "caption", _caption, path + ".")
            if content is None:
                content = report.optional(item, "content", _caption, path + ".") or ""
        date = report.required(item, "date", _date, path + ".")
        if report.found == before:
            assert content is not None and date is not None
            messages.append(ImportedMessage(message_id, content, date, kind))
    return tuple(messages)


def _message_list(value: object) -> list[Any]:
    # The session-per-row CSV layout carries the messages as JSON text in one cell.
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as problem:
            raise _Invalid(f"not a valid JSON array: {problem}") from None
    if not isinstance(value, list | tuple):
        raise _Invalid(f"expected an array of messages, got {json_type(value)}")
    return list(value)


def _message_id(value: object) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {json_type(value)}")
    message_id = value.strip()
    if not message_id:
        raise _Invalid("must not be empty when present (leave it out instead)")
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise _Invalid(f"longer than {MAX_MESSAGE_ID_LENGTH} characters ({len(message_id)})")
    return message_id


def _content(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {json_type(value)}")
    # Telegram delivers no empty or blank text message, so one in a file is a mistake.
    if not value.strip():
        raise _Invalid("must not be empty")
    if len(value) > MAX_CONTENT_LENGTH:
        raise _Invalid(f"longer than {MAX_CONTENT_LENGTH} characters ({len(value)})")
    return value


def _kind(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in KINDS:
        raise _Invalid(f"must be one of {', '.join(KINDS)}")
    return value.strip().lower()


def _caption(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {json_type(value)}")
    if len(value) > MAX_CONTENT_LENGTH:
        raise _Invalid(f"longer than {MAX_CONTENT_LENGTH} characters ({len(value)})")
    return value


def _date(value: object) -> datetime:
    if isinstance(value, Mapping):
        return _extended_json_date(value)
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str):
        return _iso_date(value)
    raise _Invalid(f'expected an ISO-8601 string or {{"$date": ...}}, got {json_type(value)}')


def _extended_json_date(value: Mapping[str, Any]) -> datetime:
    """MongoDB extended JSON: {"$date": ISO string | epoch millis | {"$numberLong": "millis"}}."""
    if set(value) != {"$date"}:
        raise _Invalid('expected an ISO-8601 string or {"$date": ...}, got another object')
    inner = value["$date"]
    if isinstance(inner, str):
        return _iso_date(inner)
    if isinstance(inner, Mapping) and set(inner) == {"$numberLong"} and isinstance(inner["$numberLong"], str):
        # ASCII digits only: int() also reads other scripts' digits, spaces and underscores.
        if not _NUMBER_LONG.fullmatch(inner["$numberLong"]):
            raise _Invalid(f"$numberLong is not an integer in ASCII digits: {_shown(inner['$numberLong'])}")
        return _from_epoch_millis(int(inner["$numberLong"]))
    if isinstance(inner, numbers.Integral) and not isinstance(inner, bool):
        return _from_epoch_millis(int(inner))
    raise _Invalid(
        f'$date must be an ISO-8601 string, epoch milliseconds or {{"$numberLong": ...}}, got {json_type(inner)}'
    )


def _iso_date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Invalid(f"not an ISO-8601 date and time: {_shown(text)}") from None
    return _utc(moment)


def _from_epoch_millis(millis: int) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        raise _Invalid(f"epoch milliseconds out of range: {millis}") from None


def _utc(moment: datetime) -> datetime:
    """UTC, a naive time being UTC already; cut to milliseconds, what a BSON date holds."""
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise _Invalid(f"out of range once converted to UTC: {moment.isoformat()}") from None
    # A plain datetime even for a pandas Timestamp, whose nanoseconds BSON cannot hold.
    return datetime(
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.microsecond // 1000 * 1000,
        tzinfo=UTC,
    )
