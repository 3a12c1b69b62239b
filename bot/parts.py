"""Splitting a long outbound text into the parts Telegram accepts, in order.

Telegram takes at most 4,096 characters per message, and counts them as UTF-16
code units: a letter of the Basic Multilingual Plane is one, an emoji such as 😀
(outside it, a surrogate pair in UTF-16) is two. So parts are measured in UTF-16
code units here too, and a text within the limit is one part, unchanged.

A longer text is cut at the last paragraph break (a blank line) that leaves a
part within the limit; failing that at the last line break, then at the last
space; only a "word" longer than the limit is cut inside, at the last place that
is a grapheme boundary by the rule below. The whitespace at a cut is dropped
(Telegram trims a message's ends anyway), and a part holding only whitespace is
not sent.

Python's standard library has no grapheme segmentation (UAX #29), so a cut is
kept out of a user-perceived character by a conservative rule: never cut before
a combining mark (Unicode categories Mn, Mc, Me), a zero-width joiner, a
variation selector, an emoji skin-tone modifier or a tag character (flags of
regions), never right after a zero-width joiner, never between CR and LF, and
never between the two regional indicators of a flag. Code points are never cut,
so neither is a surrogate pair. A cluster that this rule cannot cut and that is
longer than the limit on its own (thousands of stacked combining marks) is cut
at the limit: Telegram would refuse it whole.
"""

from __future__ import annotations

import unicodedata

# Telegram's limit for the text of one message, in UTF-16 code units.
MAX_PART_LENGTH = 4096

_ZWJ = "\u200d"
_PARAGRAPH = "\n\n"
_LINE = "\n"


def utf16_length(text: str) -> int:
    """The text's length as Telegram counts it."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def split_message(text: str, limit: int = MAX_PART_LENGTH) -> list[str]:
    """The parts to send for `text`, in order, each at most `limit` UTF-16 code units."""
    if utf16_length(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while utf16_length(rest) > limit:
        window = max(_fitting(rest, limit), 1)  # a limit below one code point still progresses
        end, start = _cut(rest, window)
        part = rest[:end]
        if part.strip():
            parts.append(part)
        rest = rest[start:]
    if rest.strip():
        parts.append(rest)
    return parts


def _fitting(text: str, limit: int) -> int:
    """How many code points of `text` fit in `limit` UTF-16 code units."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            return index
    return len(text)


def _cut(text: str, window: int) -> tuple[int, int]:
    """Where the part ends and the next one starts, for a part within `text[:window]`."""
    for separator in (_PARAGRAPH, _LINE):
        at = text.rfind(separator, 0, window)
        while at > 0:
            start = _skip_space(text, at)
            if is_boundary(text, start):
                return _trim(text, at), start
            at = text.rfind(separator, 0, at)
    at = window
    while at > 0:
        if not text[at - 1].isspace():
            at -= 1
            continue
        end = _trim(text, at - 1)
        if end == 0:
            break  # only whitespace before: no word ends in this part
        start = _skip_space(text, at - 1)
        if is_boundary(text, start):
            return end, start
        at = end  # past the whole run: each run is looked at once, however long
    for at in range(window, 0, -1):
        if is_boundary(text, at):
            return at, at
    return window, window  # one cluster longer than the limit: cut it at the limit


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _trim(text: str, end: int) -> int:
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def is_boundary(text: str, at: int) -> bool:
    """Whether a part may end before `text[at]` without splitting a user-perceived character."""
    if at <= 0 or at >= len(text):
        return True
    before, after = text[at - 1], text[at]
    if before == "\r" and after == "\n":
        return False
    if before == _ZWJ or _extends(after):
        return False
    if _regional_indicator(before) and _regional_indicator(after):
        # Flags are pairs: a cut between two indicators is allowed only after an even run.
        run = 0
        while at - run - 1 >= 0 and _regional_indicator(text[at - run - 1]):
            run += 1
        return run % 2 == 0
    return True


def _extends(char: str) -> bool:
    """Code points that belong to the character before them."""
    code = ord(char)
    return (
        char == _ZWJ
        or unicodedata.category(char) in ("Mn", "Mc", "Me")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors (text or emoji presentation)
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags such as England's)
    )


def _regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF
