"""Server settings: defaults, one message for every problem, the token never shown."""

import pytest

from runtime.environment import ConfigError
from server import config

VALID = {"API_TOKEN": "t" * 32, "MONGODB_URI": "mongodb://db/balcao", "NATS_URL": "nats://n:4222"}


def test_defaults():
    settings = config.load(VALID)
    assert settings.http_port == 8080
    assert settings.goodbye_text == "Seu atendimento foi finalizado. Obrigado pelo contato!"
    assert settings.reply_text == "Reply: mensagem recebida"
    assert "t" * 32 not in repr(settings)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        config.load({"HTTP_PORT": "http", "API_TOKEN": "short", "LOG_FORMAT": "xml"})
    problems = error.value.problems
    assert "HTTP_PORT must be a whole number, got 'http'" in problems
    assert "MONGODB_URI is required" in problems
    assert "NATS_URL is required" in problems
    assert "API_TOKEN must be at least 32 characters, got 5" in problems
    assert "LOG_FORMAT must be one of text, json, got 'xml'" in problems
    assert "short" not in str(error.value)


def test_server_exits_with_the_message_when_misconfigured():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "server"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NATS_URL": "nats://x:1"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "server: configuration error:" in result.stderr
    assert "API_TOKEN (or API_TOKEN_FILE) is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_security_defaults():
    settings = config.load(VALID)
    assert settings.http_address == "127.0.0.1"
    assert settings.http_trust_proxy_headers is False
    assert settings.http_max_body_bytes == 64 * 1024
    assert settings.api_tokens == ("t" * 32,)
    # Without CURSOR_KEY the API tokens sign cursors, as before cursors had a key.
    assert settings.cursor_keys == ("t" * 32,)


def test_rotation_settings_accept_the_previous_token_and_cursor_key():
    settings = config.load({**VALID, "API_TOKEN_PREVIOUS": "p" * 32})
    assert settings.api_tokens == ("t" * 32, "p" * 32)
    assert settings.cursor_keys == ("t" * 32, "p" * 32)
    settings = config.load({**VALID, "CURSOR_KEY": "c" * 32, "CURSOR_KEY_PREVIOUS": "t" * 32})
    assert settings.cursor_keys == ("c" * 32, "t" * 32)
    assert {"p" * 32, "c" * 32} <= set(
        config.load({**VALID, "API_TOKEN_PREVIOUS": "p" * 32, "CURSOR_KEY": "c" * 32}).secrets
    )


def test_short_rotation_secrets_and_an_orphan_previous_cursor_key_are_refused():
    with pytest.raises(ConfigError) as error:
        config.load({**VALID, "API_TOKEN_PREVIOUS": "short-old", "CURSOR_KEY_PREVIOUS": "k" * 32})
    assert error.value.problems == [
        "API_TOKEN_PREVIOUS must be at least 32 characters, got 9",
        "CURSOR_KEY_PREVIOUS needs CURSOR_KEY: set the new key beside the old one",
    ]
    assert "short-old" not in str(error.value)


def test_backend_passwords_come_from_files_and_are_masked(tmp_path):
    (tmp_path / "mongodb").write_text("mongo-app-secret\n")
    (tmp_path / "nats").write_text("nats-server-secret\n")
    settings = config.load(
        {
            **VALID,
            "MONGODB_URI": "mongodb://balcao@db/balcao",
            "MONGODB_PASSWORD_FILE": str(tmp_path / "mongodb"),
            "NATS_URL": "nats://server@n:4222",
            "NATS_PASSWORD_FILE": str(tmp_path / "nats"),
        }
    )
    assert settings.mongodb_uri == "mongodb://balcao:mongo-app-secret@db/balcao"
    assert settings.nats_url == "nats://server:nats-server-secret@n:4222"
    assert {"mongo-app-secret", "nats-server-secret"} <= set(settings.secrets)
    assert "secret" not in repr(settings)


def test_stream_limits_default_and_read():
    defaults = config.load(VALID)
    assert (defaults.stream_max_bytes, defaults.stream_max_age) == (256 * 1024**2, 7 * 24 * 3600)
    settings = config.load({**VALID, "STREAM_MAX_BYTES": "0", "STREAM_MAX_AGE_SECONDS": "3600"})
    assert (settings.stream_max_bytes, settings.stream_max_age) == (0, 3600)
    with pytest.raises(ConfigError, match="STREAM_MAX_BYTES must be a whole number"):
        config.load({**VALID, "STREAM_MAX_BYTES": "1GB"})


def test_intake_ack_wait_defaults_to_30_and_is_bounded():
    assert config.load(VALID).intake_ack_wait == 30
    assert config.load({**VALID, "INTAKE_ACK_WAIT": "5"}).intake_ack_wait == 5
    for wrong in ("2", "3601"):
        with pytest.raises(ConfigError) as error:
            config.load({**VALID, "INTAKE_ACK_WAIT": wrong})
        assert any("INTAKE_ACK_WAIT" in problem for problem in error.value.problems)


def test_the_ping_timeout_is_never_longer_than_the_ping_interval():
    """Tornado would cut it to the interval and warn on every WebSocket connection."""
    settings = config.load(VALID)
    assert settings.events_ping_timeout <= settings.events_ping_interval
    assert config.load({**VALID, "EVENTS_PING_INTERVAL": "40", "EVENTS_PING_TIMEOUT": "30"}).events_ping_timeout == 30
    with pytest.raises(ConfigError) as error:
        config.load({**VALID, "EVENTS_PING_INTERVAL": "10"})
    assert error.value.problems == [
        "EVENTS_PING_TIMEOUT (20) must not be longer than EVENTS_PING_INTERVAL (10): "
        "a pong is awaited until the next ping"
    ]


def test_retention_of_parked_messages_dead_letters_and_imports_defaults_to_30_days():
    month = 30 * 24 * 3600
    defaults = config.load(VALID)
    assert (defaults.parked_max_age, defaults.dead_letter_max_age, defaults.import_retention) == (month, month, month)
    settings = config.load(
        {
            **VALID,
            "PARKED_MAX_AGE_SECONDS": "86400",
            "DEAD_LETTER_MAX_AGE_SECONDS": "172800",
            "IMPORT_RETENTION_SECONDS": "3600",
        }
    )
    assert (settings.parked_max_age, settings.dead_letter_max_age, settings.import_retention) == (86400, 172800, 3600)
    with pytest.raises(ConfigError) as error:
        config.load({**VALID, "PARKED_MAX_AGE_SECONDS": "0", "IMPORT_RETENTION_SECONDS": "1"})
    assert {problem.split()[0] for problem in error.value.problems} == {
        "PARKED_MAX_AGE_SECONDS",
        "IMPORT_RETENTION_SECONDS",
    }


def test_the_agent_reply_limit_defaults_to_32768_and_is_bounded_by_the_contract():
    assert config.load(VALID).reply_max_characters == 32768
    assert config.load({**VALID, "REPLY_MAX_CHARACTERS": "4096"}).reply_max_characters == 4096
    for bad in ("0", "65537", "lots"):
        with pytest.raises(ConfigError) as error:
            config.load({**VALID, "REPLY_MAX_CHARACTERS": bad})
        assert any("REPLY_MAX_CHARACTERS" in problem for problem in error.value.problems)


def test_an_agents_file_is_at_most_telegrams_upload_limit():
    assert config.load(VALID).agent_file_max_bytes == 50 * 1024 * 1024
    assert config.load({**VALID, "AGENT_FILE_MAX_BYTES": "1000"}).agent_file_max_bytes == 1000
    with pytest.raises(ConfigError) as error:
        config.load({**VALID, "AGENT_FILE_MAX_BYTES": str(50 * 1024 * 1024 + 1)})
    assert any(problem.startswith("AGENT_FILE_MAX_BYTES") for problem in error.value.problems)
