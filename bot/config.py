"""The bot's settings: the only place that reads the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from contract import logs
from contract.environment import Environment

DEFAULT_API_BASE = "https://api.telegram.org"
# What setWebhook accepts as secret_token (Bot API documentation).
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class Settings:
    token: str
    nats_url: str
    api_base_url: str = DEFAULT_API_BASE
    poll_timeout: int = 30
    # Telegram allows about 30 messages per second overall; a local fake allows more.
    max_messages_per_second: int = 30
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_port: int = 8443
    metrics_port: int | None = None  # none: no metrics endpoint
    # Servers holding a copy of each stream: 1 on one node, 3 in a three-node cluster.
    nats_replicas: int = 1
    log_format: str = "text"
    log_level: str = "info"

    def __repr__(self) -> str:  # never print the token
        return f"Settings(token=***, api_base_url={self.api_base_url!r})"

    @property
    def bot_base_url(self) -> str:
        """What PTB wants: it appends the token to `<root>/bot`."""
        return self.api_base_url.rstrip("/") + "/bot"

    @property
    def webhook_path(self) -> str:
        """The path Telegram POSTs to, which the webhook listener serves."""
        return urlsplit(self.webhook_url or "").path or "/"

    @property
    def secrets(self) -> list[str]:
        """Values no log line may show."""
        return [self.token, self.webhook_secret or "", *logs.url_credentials(self.nats_url)]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    settings = Settings(
        token=env.secret("TELEGRAM_BOT_TOKEN", required=True) or "",
        nats_url=env.url_list("NATS_URL", None, ("nats", "tls", "ws", "wss")) or "",
        nats_replicas=env.integer("NATS_REPLICAS", 1, minimum=1, maximum=5),
        api_base_url=env.url("TELEGRAM_API_BASE_URL", DEFAULT_API_BASE, ("https", "http")) or DEFAULT_API_BASE,
        poll_timeout=env.integer("TELEGRAM_POLL_TIMEOUT", 30, minimum=0, maximum=50),
        max_messages_per_second=env.integer("TELEGRAM_MAX_MESSAGES_PER_SECOND", 30, minimum=1),
        webhook_url=env.url("TELEGRAM_WEBHOOK_URL", None, ("https", "http")),
        webhook_secret=env.secret("TELEGRAM_WEBHOOK_SECRET", required=False),
        webhook_port=env.integer("WEBHOOK_PORT", 8443, minimum=1, maximum=65535),
        metrics_port=env.integer("BOT_METRICS_PORT", 0, minimum=0, maximum=65535) or None,
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
    )
    if not settings.nats_url:
        env.problems.append("NATS_URL is required")
    if settings.webhook_url and not settings.webhook_secret:
        # Without it anyone who finds the URL can post updates as any contact.
        env.problems.append("TELEGRAM_WEBHOOK_URL needs TELEGRAM_WEBHOOK_SECRET (or _FILE)")
    if settings.webhook_secret and not WEBHOOK_SECRET.fullmatch(settings.webhook_secret):
        env.problems.append("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
    env.check()
    return settings
