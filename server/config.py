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
    # Servers holding a copy of each stream: 1 on one node, 3 in a three-node cluster.
    nats_replicas: int = 1
    log_format: str = "text"
    log_level: str = "info"

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
        nats_url=env.url_list("NATS_URL", None, ("nats", "tls", "ws", "wss")) or "",
        nats_replicas=env.integer("NATS_REPLICAS", 1, minimum=1, maximum=5),
        goodbye_text=env.text("GOODBYE_TEXT", DEFAULT_GOODBYE) or DEFAULT_GOODBYE,
        import_max_bytes=env.integer("IMPORT_MAX_BYTES", 1024 * 1024 * 1024, minimum=1),
        intake_batch=env.integer("INTAKE_BATCH", 1000, minimum=1, maximum=1000),
        db_threads=env.integer("DB_THREADS", 8, minimum=1, maximum=64),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
    )
    if not settings.mongodb_uri:
        env.problems.append("MONGODB_URI is required")
    if not settings.nats_url:
        env.problems.append("NATS_URL is required")
    if settings.api_token and len(settings.api_token) < 16:
        env.problems.append("API_TOKEN must be at least 16 characters")
    env.check()
    return settings
