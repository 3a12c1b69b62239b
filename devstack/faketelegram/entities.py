"""Message text as Telegram measures it: markup parsed away, then counted in UTF-16 code units.

The Bot API's limits (1-4,096 characters of message text, 0-1,024 of caption) hold "after
entities parsing": ``<b>oi</b>`` in HTML is two characters. Telegram counts in UTF-16 code
units, the unit of its entity offsets, so an emoji outside the Basic Multilingual Plane (😀)
counts two. The fake does not render markup; it strips it only to count what a reader would
see, and does not check that the markup is well formed.
"""

from __future__ import annotations

import html
import re

PARSE_MODES = frozenset({"html", "markdown", "markdownv2"})
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024

HTML_TAG = re.compile(r"<[^<>]*>")
# A pre block's opening fence and its language line, or its closing fence.
CODE_FENCE = re.compile(r"```[^\s`]*\n?")
# Characters that only format: legacy Markdown has the first set, MarkdownV2 all of them.
MARKDOWN_MARKS = frozenset("*_`")
MARKDOWN_V2_MARKS = frozenset("*_`~|")


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text a reader sees once ``parse_mode`` markup is parsed away."""
    mode = (parse_mode or "").lower()
    if mode == "html":
        return html.unescape(HTML_TAG.sub("", text))
    if mode in {"markdown", "markdownv2"}:
        return _markdown_text(CODE_FENCE.sub("", text), v2=mode == "markdownv2")
    return text


def _markdown_text(text: str, *, v2: bool) -> str:
    marks = MARKDOWN_V2_MARKS if v2 else MARKDOWN_MARKS
    kept: list[str] = []
    index, length = 0, len(text)
    at_line_start = True
    while index < length:
        char = text[index]
        if char == "\\" and index + 1 < length:
            # An escaped character is itself, whatever it is.
            kept.append(text[index + 1])
            index += 2
        elif char in marks or char == "[" or (v2 and char == "!" and text.startswith("![", index)):
            index += 1
        elif v2 and char == ">" and at_line_start:
            # A blockquote's marker.
            index += 1
        elif char == "]" and text.startswith("](", index):
            # A link's label stays; its URL goes, up to the first ")" not escaped.
            index = _after_url(text, index + 2)
        else:
            kept.append(char)
            index += 1
        at_line_start = not kept or kept[-1] == "\n"
    return "".join(kept)


def _after_url(text: str, index: int) -> int:
    while index < len(text) and text[index] != ")":
        index += 2 if text[index] == "\\" else 1
    return index + 1
