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


def test_delivery_ack_wait_defaults_to_30_and_is_bounded():
    base = {"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222"}
    assert config.load(base).delivery_ack_wait == 30
    assert config.load({**base, "BOT_DELIVERY_ACK_WAIT": "5"}).delivery_ack_wait == 5
    with pytest.raises(ConfigError) as error:
        config.load({**base, "BOT_DELIVERY_ACK_WAIT": "1"})
    assert any("BOT_DELIVERY_ACK_WAIT" in problem for problem in error.value.problems)
