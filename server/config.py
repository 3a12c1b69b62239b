"""The server's settings: the only place that reads the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contract import messaging
from contract.importformat import MAX_MESSAGES_PER_RECORD, MAX_RECORD_BYTES
from runtime import logs
from runtime.environment import Environment
from server.importing.limits import MAX_RECORD_DEPTH, MAX_RECORD_VALUES

DEFAULT_GOODBYE = "Seu atendimento foi finalizado. Obrigado pelo contato!"
DEFAULT_REPLY = "Reply: mensagem recebida"
DEFAULT_REPLY_MAX_CHARACTERS = 32768
# 32 random characters are beyond guessing online; shorter tokens are typed by hand.
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Settings:
    http_port: int
    api_token: str
    mongodb_uri: str
    nats_url: str
    reply_text: str = DEFAULT_REPLY
    goodbye_text: str = DEFAULT_GOODBYE
    # An agent's reply, in characters (code points); past Telegram's 4,096 UTF-16
    # code units the bot sends it as several messages.
    reply_max_characters: int = DEFAULT_REPLY_MAX_CHARACTERS
    import_max_bytes: int = 1024 * 1024 * 1024
    import_max_record_bytes: int = MAX_RECORD_BYTES
    import_max_record_depth: int = MAX_RECORD_DEPTH
    import_max_record_values: int = MAX_RECORD_VALUES
    import_max_record_messages: int = MAX_MESSAGES_PER_RECORD
    import_idle_timeout: int = 3600
    # How long an ended import's report (and its batch records) is kept.
    import_retention: int = 30 * 24 * 3600
    import_max_chunks: int = 100_000
    import_max_chunked_bytes: int = 64 * 1024 * 1024 * 1024
    # Uploads and chunks one replica reads at once; each may hold a record at the
    # limits and two batches.
    import_max_concurrent: int = 4
    # An agent's file (POST .../messages as multipart): Telegram's bots upload at most 50 MB.
    agent_file_max_bytes: int = messaging.MAX_UPLOAD_BYTES
    intake_batch: int = 1000
    # Seconds before a crashed replica's unacknowledged inbound batch goes to another.
    intake_ack_wait: int = 30
    db_threads: int = 8
    stream_max_bytes: int = messaging.STREAM_MAX_BYTES
    stream_max_age: int = messaging.STREAM_MAX_AGE_SECONDS
    parked_max_age: int = messaging.PARKED_MAX_AGE_SECONDS
    dead_letter_max_age: int = messaging.DEAD_LETTER_MAX_AGE_SECONDS
    # Servers holding a copy of each stream: 1 on one node, 3 in a three-node cluster.
    nats_replicas: int = 1
    log_format: str = "text"
    log_level: str = "info"
    # The previous API token, still accepted while clients move to the new one.
    api_token_previous: str = ""
    # Signs page cursors; "" derives it from the API token (as before cursors had their own key).
    cursor_key: str = ""
    cursor_key_previous: str = ""
    # Loopback by default: `make run` must not expose the API; the image sets 0.0.0.0.
    http_address: str = "127.0.0.1"
    # Bodies of routes that do not stream (everything but the import uploads and chunks).
    http_max_body_bytes: int = 64 * 1024
    http_idle_timeout: float = 60.0
    http_body_timeout: float = 60.0
    import_body_timeout: float = 3600.0
    http_max_connections: int = 1000
    # A tenth of the connections: one client cannot take them all, an office behind one NAT still fits.
    http_max_connections_per_address: int = 100
    http_trust_proxy_headers: bool = False
    query_max_time_ms: int = 15000
    search_max_examined: int = 5000
    # The live event stream (GET /v1/events). A client may hold twice its buffer
    # (unread events, and the live ones held while it catches up): 500 clients of
    # 256 KiB hold at most 250 MiB, a quarter of the container's 1 GiB.
    events_max_age: int = 7 * 24 * 3600
    events_max_bytes: int = 1024 * 1024 * 1024
    events_max_clients: int = 500
    events_max_clients_per_token: int = 100
    events_client_buffer_bytes: int = 256 * 1024
    events_ping_interval: float = 20.0
    # A pong is awaited until the next ping at most: Tornado cuts a longer
    # timeout down to the interval, with a warning on every connection.
    events_ping_timeout: float = 20.0

    def __repr__(self) -> str:  # never print the token
        return f"Settings(http_port={self.http_port}, api_token=***, nats_url=…, mongodb_uri=…)"

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """Every bearer token accepted: the current one, and the previous during a rotation."""
        return tuple(token for token in (self.api_token, self.api_token_previous) if token)

    @property
    def cursor_keys(self) -> tuple[str, ...]:
        """Cursor signing secrets, the signing one first.

        Without CURSOR_KEY the API tokens sign, as before cursors had a key of
        their own, so cursors survive an upgrade and a token rotation alike.
        """
        if self.cursor_key:
            return tuple(key for key in (self.cursor_key, self.cursor_key_previous) if key)
        return self.api_tokens

    @property
    def secrets(self) -> list[str]:
        """Values no log line may show."""
        return [
            self.api_token,
            self.api_token_previous,
            self.cursor_key,
            self.cursor_key_previous,
            *logs.url_credentials(self.mongodb_uri),
            *logs.url_credentials(self.nats_url),
        ]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = Environment(environ)
    settings = Settings(
        http_port=env.integer("HTTP_PORT", 8080, minimum=1, maximum=65535),
        api_token=env.secret("API_TOKEN", required=True) or "",
        mongodb_uri=env.url_with_password("MONGODB_URI", None, ("mongodb", "mongodb+srv"), password="MONGODB_PASSWORD")
        or "",
        nats_url=env.url_list_with_password(
            "NATS_URL", None, ("nats", "tls", "ws", "wss"), password="NATS_PASSWORD", decoded=False
        )
        or "",
        nats_replicas=env.integer("NATS_REPLICAS", 1, minimum=1, maximum=5),
        goodbye_text=env.text("GOODBYE_TEXT", DEFAULT_GOODBYE) or DEFAULT_GOODBYE,
        reply_max_characters=env.integer(
            "REPLY_MAX_CHARACTERS", DEFAULT_REPLY_MAX_CHARACTERS, minimum=1, maximum=messaging.MAX_REPLY_LENGTH
        ),
        import_max_bytes=env.integer("IMPORT_MAX_BYTES", 1024 * 1024 * 1024, minimum=1),
        import_max_record_bytes=env.integer("IMPORT_MAX_RECORD_BYTES", MAX_RECORD_BYTES, minimum=1024),
        import_max_record_depth=env.integer("IMPORT_MAX_RECORD_DEPTH", MAX_RECORD_DEPTH, minimum=4, maximum=10_000),
        import_max_record_values=env.integer("IMPORT_MAX_RECORD_VALUES", MAX_RECORD_VALUES, minimum=100),
        import_max_record_messages=env.integer("IMPORT_MAX_RECORD_MESSAGES", MAX_MESSAGES_PER_RECORD, minimum=1),
        import_idle_timeout=env.integer("IMPORT_IDLE_TIMEOUT", 3600, minimum=1),
        import_retention=env.integer("IMPORT_RETENTION_SECONDS", 30 * 24 * 3600, minimum=60),
        import_max_chunks=env.integer("IMPORT_MAX_CHUNKS", 100_000, minimum=1, maximum=999_999_999),
        import_max_chunked_bytes=env.integer("IMPORT_MAX_CHUNKED_BYTES", 64 * 1024 * 1024 * 1024, minimum=1),
        import_max_concurrent=env.integer("IMPORT_MAX_CONCURRENT", 4, minimum=1),
        agent_file_max_bytes=env.integer(
            "AGENT_FILE_MAX_BYTES", messaging.MAX_UPLOAD_BYTES, minimum=1, maximum=messaging.MAX_UPLOAD_BYTES
        ),
        intake_batch=env.integer("INTAKE_BATCH", 1000, minimum=1, maximum=1000),
        intake_ack_wait=env.integer("INTAKE_ACK_WAIT", 30, minimum=3, maximum=3600),
        db_threads=env.integer("DB_THREADS", 8, minimum=1, maximum=64),
        stream_max_bytes=env.integer("STREAM_MAX_BYTES", messaging.STREAM_MAX_BYTES),
        stream_max_age=env.integer("STREAM_MAX_AGE_SECONDS", messaging.STREAM_MAX_AGE_SECONDS),
        parked_max_age=env.integer("PARKED_MAX_AGE_SECONDS", messaging.PARKED_MAX_AGE_SECONDS, minimum=3600),
        dead_letter_max_age=env.integer(
            "DEAD_LETTER_MAX_AGE_SECONDS", messaging.DEAD_LETTER_MAX_AGE_SECONDS, minimum=3600
        ),
        log_format=env.choice("LOG_FORMAT", "text", ("text", "json")),
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        api_token_previous=env.secret("API_TOKEN_PREVIOUS", required=False) or "",
        cursor_key=env.secret("CURSOR_KEY", required=False) or "",
        cursor_key_previous=env.secret("CURSOR_KEY_PREVIOUS", required=False) or "",
        http_address=env.text("HTTP_ADDRESS", "127.0.0.1") or "127.0.0.1",
        http_max_body_bytes=env.integer("HTTP_MAX_BODY_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024),
        http_idle_timeout=env.integer("HTTP_IDLE_TIMEOUT", 60, minimum=1),
        http_body_timeout=env.integer("HTTP_BODY_TIMEOUT", 60, minimum=1),
        import_body_timeout=env.integer("IMPORT_BODY_TIMEOUT", 3600, minimum=1),
        http_max_connections=env.integer("HTTP_MAX_CONNECTIONS", 1000, minimum=1),
        http_max_connections_per_address=env.integer("HTTP_MAX_CONNECTIONS_PER_ADDRESS", 100, minimum=1),
        http_trust_proxy_headers=env.choice("HTTP_TRUST_PROXY_HEADERS", "false", ("true", "false")) == "true",
        query_max_time_ms=env.integer("QUERY_MAX_TIME_MS", 15000, minimum=1),
        search_max_examined=env.integer("SEARCH_MAX_EXAMINED", 5000, minimum=1000),
        events_max_age=env.integer("EVENTS_MAX_AGE_SECONDS", 7 * 24 * 3600, minimum=60),
        events_max_bytes=env.integer("EVENTS_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024 * 1024),
        events_max_clients=env.integer("EVENTS_MAX_CLIENTS", 500, minimum=1),
        events_max_clients_per_token=env.integer("EVENTS_MAX_CLIENTS_PER_TOKEN", 100, minimum=1),
        events_client_buffer_bytes=env.integer("EVENTS_CLIENT_BUFFER_BYTES", 256 * 1024, minimum=4096),
        events_ping_interval=float(env.integer("EVENTS_PING_INTERVAL", 20, minimum=1, maximum=3600)),
        events_ping_timeout=float(env.integer("EVENTS_PING_TIMEOUT", 20, minimum=1, maximum=3600)),
    )
    if not settings.mongodb_uri:
        env.problems.append("MONGODB_URI is required")
    if not settings.nats_url:
        env.problems.append("NATS_URL is required")
    for name, value in (
        ("API_TOKEN", settings.api_token),
        ("API_TOKEN_PREVIOUS", settings.api_token_previous),
        ("CURSOR_KEY", settings.cursor_key),
        ("CURSOR_KEY_PREVIOUS", settings.cursor_key_previous),
    ):
        if value and len(value) < MIN_SECRET_LENGTH:
            # Name the variable and the rule, never the value.
            env.problems.append(f"{name} must be at least {MIN_SECRET_LENGTH} characters, got {len(value)}")
    if settings.events_ping_timeout > settings.events_ping_interval:
        env.problems.append(
            f"EVENTS_PING_TIMEOUT ({settings.events_ping_timeout:g}) must not be longer than "
            f"EVENTS_PING_INTERVAL ({settings.events_ping_interval:g}): a pong is awaited until the next ping"
        )
    if settings.cursor_key_previous and not settings.cursor_key:
        env.problems.append("CURSOR_KEY_PREVIOUS needs CURSOR_KEY: set the new key beside the old one")
    env.check()
    return settings
