"""The bot's settings: the only place that reads the environment."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from bot.delivery import SENDS_PER_SECOND
from contract import messaging
from runtime import logs
from runtime.environment import Environment

DEFAULT_API_BASE = "https://api.telegram.org"
# What setWebhook accepts as secret_token (Bot API documentation).
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
# Guessing a secret this long over the network is out of reach.
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Settings:
    token: str
    nats_url: str
    api_base_url: str = DEFAULT_API_BASE
    poll_timeout: int = 30
    # Telegram allows about 30 messages per second overall; a local fake allows more.
    max_messages_per_second: int = 30
    # How long a crashed bot's unacknowledged sends wait before another bot gets them;
    # messages queued behind a slow chat are kept alive meanwhile, whatever this is.
    delivery_ack_wait: int = 30
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_port: int = 8443
    metrics_port: int | None = None  # none: no metrics endpoint
    stream_max_bytes: int = messaging.STREAM_MAX_BYTES
    stream_max_age: int = messaging.STREAM_MAX_AGE_SECONDS
    parked_max_age: int = messaging.PARKED_MAX_AGE_SECONDS
    dead_letter_max_age: int = messaging.DEAD_LETTER_MAX_AGE_SECONDS
    # Servers holding a copy of each stream: 1 on one node, 3 in a three-node cluster.
    nats_replicas: int = 1
    log_format: str = "text"
    log_level: str = "info"

    def __repr__(self) -> str:  # never print the token
        return f"Settings(token=***, api_base_url={self.api_base_url!r})"

    @property
    def bot_base_file_url(self) -> str:
        """Where files are downloaded from: PTB appends the token, then the file's path."""
        return self.api_base_url.rstrip("/") + "/file/bot"

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


def plain_http_allowed(url: str) -> bool:
    """True unless `url` is plain http:// to a host other than this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    settings = Settings(
        token=env.secret("TELEGRAM_BOT_TOKEN", required=True) or "",
        nats_url=env.url_list_with_password(
            "NATS_URL", None, ("nats", "tls", "ws", "wss"), password="NATS_PASSWORD", decoded=False
        )
        or "",
        nats_replicas=env.integer("NATS_REPLICAS", 1, minimum=1, maximum=5),
        api_base_url=env.url("TELEGRAM_API_BASE_URL", DEFAULT_API_BASE, ("https", "http")) or DEFAULT_API_BASE,
        poll_timeout=env.integer("TELEGRAM_POLL_TIMEOUT", 30, minimum=0, maximum=50),
        max_messages_per_second=env.integer("TELEGRAM_MAX_MESSAGES_PER_SECOND", SENDS_PER_SECOND, minimum=1),
        delivery_ack_wait=env.integer("BOT_DELIVERY_ACK_WAIT", 30, minimum=3, maximum=3600),
        webhook_url=env.url("TELEGRAM_WEBHOOK_URL", None, ("https", "http")),
        webhook_secret=env.secret("TELEGRAM_WEBHOOK_SECRET", required=False),
        webhook_port=env.integer("WEBHOOK_PORT", 8443, minimum=1, maximum=65535),
        metrics_port=env.integer("BOT_METRICS_PORT", 0, minimum=0, maximum=65535) or None,
        # The bot declares the streams too (either process may start first):
        # give both processes the same limits, or each start-up resets them.
        stream_max_bytes=env.integer("STREAM_MAX_BYTES", messaging.STREAM_MAX_BYTES),
        stream_max_age=env.integer("STREAM_MAX_AGE_SECONDS", messaging.STREAM_MAX_AGE_SECONDS),
        parked_max_age=env.integer("PARKED_MAX_AGE_SECONDS", messaging.PARKED_MAX_AGE_SECONDS, minimum=3600),
        dead_letter_max_age=env.integer(
            "DEAD_LETTER_MAX_AGE_SECONDS", messaging.DEAD_LETTER_MAX_AGE_SECONDS, minimum=3600
        ),
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
    elif settings.webhook_secret and len(settings.webhook_secret) < MIN_SECRET_LENGTH:
        env.problems.append(
            f"TELEGRAM_WEBHOOK_SECRET must be at least {MIN_SECRET_LENGTH} characters, "
            f"got {len(settings.webhook_secret)}"
        )
    if not plain_http_allowed(settings.api_base_url):
        # The bot token travels in every Bot API URL: never over the network in clear.
        env.problems.append(
            "TELEGRAM_API_BASE_URL may use http:// only for a loopback host (localhost, 127.0.0.0/8, ::1); use https://"
        )
    env.check()
    return settings
