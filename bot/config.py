"""The bot's settings: the only place that reads the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract.environment import Environment

DEFAULT_API_BASE = "https://api.telegram.org"


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
    log_format: str = "text"
    log_level: str = "info"

    def __repr__(self) -> str:  # never print the token
        return f"Settings(token=***, api_base_url={self.api_base_url!r})"

    @property
    def bot_base_url(self) -> str:
        """What PTB wants: it appends the token to `<root>/bot`."""
        return self.api_base_url.rstrip("/") + "/bot"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    settings = Settings(
        token=env.secret("TELEGRAM_BOT_TOKEN", required=True) or "",
        nats_url=env.url("NATS_URL", None, ("nats", "tls", "ws", "wss")) or "",
        api_base_url=env.url("TELEGRAM_API_BASE_URL", DEFAULT_API_BASE, ("https", "http")) or DEFAULT_API_BASE,
        poll_timeout=env.integer("TELEGRAM_POLL_TIMEOUT", 30, minimum=0, maximum=50),
        max_messages_per_second=env.integer("TELEGRAM_MAX_MESSAGES_PER_SECOND", 30, minimum=1),
        webhook_url=env.url("TELEGRAM_WEBHOOK_URL", None, ("https", "http")),
        webhook_secret=env.secret("TELEGRAM_WEBHOOK_SECRET", required=False),
        webhook_port=env.integer("WEBHOOK_PORT", 8443, minimum=1, maximum=65535),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
    )
    if not settings.nats_url:
        env.problems.append("NATS_URL is required")
    env.check()
    return settings
