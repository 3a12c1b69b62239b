"""Logging set-up for a process's `__main__`: text by default, JSON on request.

Secrets handed to `configure` are masked in every line, whoever logs them:
libraries log request URLs, and Bot API URLs carry the bot token (PTB logs its
base URL at debug level).
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
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        return line


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
