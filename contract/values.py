"""Small rules for values that come from outside: a media type, a channel, an ObjectId as text, a whole number.

The server's handlers, its import records and the CLI read these values the
same way. Standard library only, as all of contract/.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping

# A Telegram channel: its public @username (5 to 32 letters, digits and
# underscores, starting with a letter) or its numeric id: a channel's or a
# supergroup's starts -100, a basic group's is any other negative number (the bot
# follows such a group when it becomes a supergroup). ASCII digits only: `\d`
# alone takes other scripts' digits, which int() reads as ASCII ones (the bot
# would post to another chat than the one written).
CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{4,31}|-100[0-9]{1,16}|-[1-9][0-9]{0,15}")
CHANNEL_RULE = "expected @name (5-32 letters, digits or _), a -100… channel id or a negative group id"
# An ObjectId as text: 24 hexadecimal digits, in either case.
OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
# 2**53 - 1: the largest whole number every JSON reader holds exactly.
MAX_WHOLE = 2**53 - 1


def media_type(value: str | None) -> str:
    """The media type of a Content-Type header, lower-case, without parameters."""
    return (value or "").split(";")[0].strip().lower()


# A media type as RFC 6838 spells one (type/subtype, restricted names), lower-case.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}", re.ASCII)


def well_formed_media_type(value: str | None) -> str | None:
    """`value` (parameters dropped, lower-cased) when it is a well-formed media type; None otherwise.

    Contacts and agents state a file's type; one that is not a type (a header
    line, a script) must never reach a Content-Type.
    """
    found = media_type(value)
    return found if _MEDIA_TYPE.fullmatch(found) else None


def channel_ref(text: str) -> str | None:
    """The channel in its one spelling (@usernames lower-cased: Telegram ignores case); None if it is none."""
    channel = text.strip()
    return channel.lower() if CHANNEL.fullmatch(channel) else None


def object_id_text(text: str) -> str | None:
    """The ObjectId written in `text`, as lower-case hex; None when it is none.

    Ids are compared as lower-case text, so every reader of an id from outside
    (a URL, a file) lower-cases it first.
    """
    return text.lower() if OBJECT_ID.fullmatch(text) else None


def whole_number(value: object, minimum: int = 1) -> int | None:
    """A whole number from JSON within [minimum, MAX_WHOLE], as an int; None otherwise.

    JSON has one number type, so 7.0 is the whole number 7 (JSON Schema agrees);
    true is no number, though Python's bool is an int. The bound keeps the value
    exact in every JSON reader and storable in BSON.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if minimum <= value <= MAX_WHOLE else None


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages a file's author understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__
