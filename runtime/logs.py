"""Logging set-up for a process's `__main__`: text by default, JSON on request.

Secrets handed to `configure` are masked in every line, whoever logs them:
libraries log request URLs, and Bot API URLs carry the bot token (PTB logs its
base URL at debug level).

Contacts' data is kept out the same way where a library would write it: the
text of a database write error holds the documents that failed (a bulk write
error prints each one whole, a duplicate key error the key's values: phone
numbers, names), so such an error is logged as its type and codes only,
whether it is an argument of the line or the exception of a traceback (or what
caused it).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class MaskingFormatter(logging.Formatter):
    """Formats with another formatter, then masks the secrets in the finished line."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        # Longest first, so a secret containing another is masked whole. Every
        # secret is masked, however short: a short password that shows in a log
        # is found at once, while masking an ordinary word only costs readability.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # JSON lines hold secrets escaped; mask that spelling too.
        for secret in list(self._secrets):
            escaped = json.dumps(secret, ensure_ascii=False)[1:-1]
            if escaped != secret:
                self._secrets.append(escaped)

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        for text, summary in private_texts(record):
            line = line.replace(text, summary)
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        return line


# Errors whose text carries documents, by module and class name (this module
# needs no database driver; a process without one never meets them). Their
# subclasses (BulkWriteError, DuplicateKeyError, WriteError...) count too.
_PRIVATE_ERRORS = {("pymongo.errors", "OperationFailure"), ("bson.errors", "InvalidDocument")}


def is_private_error(exc: BaseException) -> bool:
    return any((cls.__module__, cls.__name__) in _PRIVATE_ERRORS for cls in type(exc).__mro__)


def error_summary(exc: BaseException) -> str:
    """What a log may say of an error whose text holds documents: its kind and codes."""
    details = getattr(exc, "details", None)
    details = details if isinstance(details, dict) else {}
    if "writeErrors" in details or "writeConcernErrors" in details:
        errors = [*(details.get("writeErrors") or []), *(details.get("writeConcernErrors") or [])]
        codes = sorted({str(error.get("code")) for error in errors if isinstance(error, dict)})
        return (
            f"{len(details.get('writeErrors') or [])} write errors and "
            f"{len(details.get('writeConcernErrors') or [])} write concern errors "
            f"(codes {', '.join(codes) or 'none'}; documents withheld from the log)"
        )
    code = getattr(exc, "code", None)
    name = details.get("codeName")
    said = f"code {code}" + (f" {name}" if isinstance(name, str) else "") if code is not None else "no code"
    return f"{said} (details withheld from the log)"


def private_texts(record: logging.LogRecord) -> list[tuple[str, str]]:
    """(text, what to write instead) for every private error the record would print."""
    found: list[BaseException] = []
    args = record.args.values() if isinstance(record.args, dict) else record.args or ()
    for value in (record.msg, *args, record.exc_info[1] if record.exc_info else None):
        seen: set[int] = set()
        while isinstance(value, BaseException) and id(value) not in seen:  # the cause chain, once each
            seen.add(id(value))
            if is_private_error(value):
                found.append(value)
            value = value.__cause__ or value.__context__
    replacements = []
    for exc in found:
        summary = error_summary(exc)
        # The longer first: repr() holds str().
        for text, instead in ((repr(exc), f"{type(exc).__name__}({summary})"), (str(exc), summary)):
            if text:
                replacements.append((text, instead))
                # JSON lines hold the text escaped.
                escaped = json.dumps(text, ensure_ascii=False)[1:-1]
                if escaped != text:
                    replacements.append((escaped, instead))
    return replacements


# A comma that starts another URL of a list (`nats://a:4222,nats://b:4222`); the
# commas between the hosts of one MongoDB URI (`mongodb://u:p@h1,h2/db`) do not.
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def url_credentials(url: str | None) -> list[str]:
    """The password in a connection URL, or the user part when it stands alone
    (NATS token authentication: `nats://TOKEN@host`), as written and percent-decoded.

    A comma-separated list of URLs (NATS_URL naming a cluster) yields the
    credentials of every member."""
    if not url:
        return []
    members = _NEXT_URL.split(url)
    if len(members) > 1:
        return list({secret for member in members for secret in url_credentials(member)})
    try:
        parts = urlsplit(url)
        secret = parts.password if parts.password is not None else parts.username
    except ValueError:
        return []
    if not secret:
        return []
    return list({secret, unquote(secret)})


def formatter(fmt: str = "text", secrets: Iterable[str] = ()) -> logging.Formatter:
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    return MaskingFormatter(inner, secrets)


def configure(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, secrets))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # through the same formatter, so JSON stays JSON
    # httpx logs every request URL at INFO, and Bot API URLs carry the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
