"""Bot settings."""

import pytest

from bot import config
from contract.environment import ConfigError


def test_defaults_and_base_url_for_ptb():
    settings = config.load({"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222"})
    assert settings.api_base_url == "https://api.telegram.org"
    assert settings.bot_base_url == "https://api.telegram.org/bot"
    assert settings.max_messages_per_second == 30
    assert "1:abc" not in repr(settings)


def test_missing_token_and_bad_url():
    with pytest.raises(ConfigError) as error:
        config.load({"TELEGRAM_API_BASE_URL": "ftp://x"})
    assert sorted(error.value.problems) == [
        "NATS_URL is required",
        "TELEGRAM_API_BASE_URL must start with https:// or http://",
        "TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_TOKEN_FILE) is required",
    ]


def test_bot_exits_with_the_message_when_the_token_is_missing():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "bot"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "NATS_URL": "nats://x:1"}, timeout=60)
    assert result.returncode == 1
    assert "bot: configuration error: TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_TOKEN_FILE) is required" in result.stderr


def test_nats_password_from_a_file_is_put_in_the_url_and_masked(tmp_path):
    (tmp_path / "nats").write_text("bot-nats-secret\n")
    settings = config.load({"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://bot@n:4222",
                            "NATS_PASSWORD_FILE": str(tmp_path / "nats"), "STREAM_MAX_BYTES": "4096"})
    assert settings.nats_url == "nats://bot:bot-nats-secret@n:4222"
    assert "bot-nats-secret" in settings.secrets
    assert (settings.stream_max_bytes, settings.stream_max_age) == (4096, 7 * 24 * 3600)
