"""Contact-name folding for search: case- and accent-insensitive word prefixes.

MongoDB text indexes are not available everywhere (SecantusDB has none) and an
anchored regex is a collection scan there, so each session stores the folded
prefixes of its name's words and a search is an equality match on that
multikey index.
"""

from __future__ import annotations

import re
import unicodedata

# Longer query words are cut to this length before matching; names rarely have
# longer words, and it bounds the keys stored per session.
MAX_PREFIX = 16
_WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def search_keys(name: str) -> list[str]:
    """Every prefix of every word of the name, folded, shortest first."""
    keys: dict[str, None] = {}
    for word in words(name):
        for end in range(1, min(len(word), MAX_PREFIX) + 1):
            keys[word[:end]] = None
    return list(keys)


def query_keys(query: str) -> list[str]:
    """The keys a name must all hold to match the query (each word a prefix)."""
    return list(dict.fromkeys(word[:MAX_PREFIX] for word in words(query)))
