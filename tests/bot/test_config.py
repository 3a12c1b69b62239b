"""Bot settings."""

import pytest

from bot import config
from runtime.environment import ConfigError


def test_defaults_and_base_url_for_ptb():
    settings = config.load({"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222"})
    assert settings.api_base_url == "https://api.telegram.org"
    assert settings.bot_base_url == "https://api.telegram.org/bot"
    assert settings.max_messages_per_second == 29, "one below Telegram's 30: a margin"
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

    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NATS_URL": "nats://x:1"},
        timeout=60,
    )
    assert result.returncode == 1
    assert "bot: configuration error: TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_TOKEN_FILE) is required" in result.stderr


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8081", "http://localhost:9", "http://[::1]:80", "https://telegram.example"]
)
def test_plain_http_only_to_loopback(url):
    assert (
        config.load(
            {"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222", "TELEGRAM_API_BASE_URL": url}
        ).api_base_url
        == url
    )


@pytest.mark.parametrize("url", ["http://api.telegram.org", "http://10.0.0.5:8081", "http://localhost.evil"])
def test_plain_http_to_another_host_is_refused(url):
    with pytest.raises(ConfigError) as error:
        config.load({"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222", "TELEGRAM_API_BASE_URL": url})
    assert error.value.problems == [
        "TELEGRAM_API_BASE_URL may use http:// only for a loopback host (localhost, 127.0.0.0/8, ::1); use https://"
    ]


def test_webhook_secret_shorter_than_32_is_refused():
    with pytest.raises(ConfigError) as error:
        config.load(
            {
                "TELEGRAM_BOT_TOKEN": "1:abc",
                "NATS_URL": "nats://n:4222",
                "TELEGRAM_WEBHOOK_URL": "https://bot.example/hook",
                "TELEGRAM_WEBHOOK_SECRET": "s" * 31,
            }
        )
    assert error.value.problems == ["TELEGRAM_WEBHOOK_SECRET must be at least 32 characters, got 31"]


def test_nats_password_from_a_file_is_put_in_the_url_and_masked(tmp_path):
    (tmp_path / "nats").write_text("bot-nats-secret\n")
    settings = config.load(
        {
            "TELEGRAM_BOT_TOKEN": "1:abc",
            "NATS_URL": "nats://bot@n:4222",
            "NATS_PASSWORD_FILE": str(tmp_path / "nats"),
            "STREAM_MAX_BYTES": "4096",
        }
    )
    assert settings.nats_url == "nats://bot:bot-nats-secret@n:4222"
    assert "bot-nats-secret" in settings.secrets
    assert (settings.stream_max_bytes, settings.stream_max_age) == (4096, 7 * 24 * 3600)


def test_delivery_ack_wait_defaults_to_30_and_is_bounded():
    base = {"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222"}
    assert config.load(base).delivery_ack_wait == 30
    assert config.load({**base, "BOT_DELIVERY_ACK_WAIT": "5"}).delivery_ack_wait == 5
    with pytest.raises(ConfigError) as error:
        config.load({**base, "BOT_DELIVERY_ACK_WAIT": "1"})
    assert any("BOT_DELIVERY_ACK_WAIT" in problem for problem in error.value.problems)


def test_the_bot_declares_parked_and_dead_letter_ages_as_the_server_does():
    base = {"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": "nats://n:4222"}
    assert (config.load(base).parked_max_age, config.load(base).dead_letter_max_age) == (30 * 24 * 3600,) * 2
    settings = config.load({**base, "PARKED_MAX_AGE_SECONDS": "86400", "DEAD_LETTER_MAX_AGE_SECONDS": "7200"})
    assert (settings.parked_max_age, settings.dead_letter_max_age) == (86400, 7200)
