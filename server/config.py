"""The server's settings: the only place that reads the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract import logs
from contract.environment import Environment

DEFAULT_GOODBYE = "Seu atendimento foi finalizado. Obrigado pelo contato!"
DEFAULT_REPLY = "Reply: mensagem recebida"


@dataclass(frozen=True)
class Settings:
    http_port: int
    api_token: str
    mongodb_uri: str
    nats_url: str
    reply_text: str = DEFAULT_REPLY
    goodbye_text: str = DEFAULT_GOODBYE
    import_max_bytes: int = 1024 * 1024 * 1024
    intake_batch: int = 1000
    db_threads: int = 8
    log_format: str = "text"
    log_level: str = "info"
    # The live event stream (GET /v1/events).
    events_max_age: int = 7 * 24 * 3600
    events_max_bytes: int = 1024 * 1024 * 1024
    events_max_clients: int = 1000
    events_max_clients_per_token: int = 100
    events_client_buffer_bytes: int = 1024 * 1024
    events_ping_interval: float = 20.0
    events_ping_timeout: float = 30.0

    def __repr__(self) -> str:  # never print the token
        return f"Settings(http_port={self.http_port}, api_token=***, nats_url=…, mongodb_uri=…)"

    @property
    def secrets(self) -> list[str]:
        """Values no log line may show."""
        return [self.api_token, *logs.url_credentials(self.mongodb_uri),
                *logs.url_credentials(self.nats_url)]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    settings = Settings(
        http_port=env.integer("HTTP_PORT", 8080, minimum=1, maximum=65535),
        api_token=env.secret("API_TOKEN", required=True) or "",
        mongodb_uri=env.url("MONGODB_URI", None, ("mongodb", "mongodb+srv")) or "",
        nats_url=env.url("NATS_URL", None, ("nats", "tls", "ws", "wss")) or "",
        goodbye_text=env.text("GOODBYE_TEXT", DEFAULT_GOODBYE) or DEFAULT_GOODBYE,
        import_max_bytes=env.integer("IMPORT_MAX_BYTES", 1024 * 1024 * 1024, minimum=1),
        intake_batch=env.integer("INTAKE_BATCH", 1000, minimum=1, maximum=1000),
        db_threads=env.integer("DB_THREADS", 8, minimum=1, maximum=64),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        events_max_age=env.integer("EVENTS_MAX_AGE_SECONDS", 7 * 24 * 3600, minimum=60),
        events_max_bytes=env.integer("EVENTS_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024 * 1024),
        events_max_clients=env.integer("EVENTS_MAX_CLIENTS", 1000, minimum=1),
        events_max_clients_per_token=env.integer("EVENTS_MAX_CLIENTS_PER_TOKEN", 100, minimum=1),
        events_client_buffer_bytes=env.integer("EVENTS_CLIENT_BUFFER_BYTES", 1024 * 1024, minimum=4096),
        events_ping_interval=float(env.integer("EVENTS_PING_INTERVAL", 20, minimum=1, maximum=3600)),
        events_ping_timeout=float(env.integer("EVENTS_PING_TIMEOUT", 30, minimum=1, maximum=3600)),
    )
    if not settings.mongodb_uri:
        env.problems.append("MONGODB_URI is required")
    if not settings.nats_url:
        env.problems.append("NATS_URL is required")
    if settings.api_token and len(settings.api_token) < 16:
        env.problems.append("API_TOKEN must be at least 16 characters")
    env.check()
    return settings
