"""Log lines: text or one JSON object per line, secrets masked whoever logs them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from runtime.logs import MASK, formatter, url_credentials
from tests.harness import ROOT

TOKEN = "123456:AAE-secret-bot-token_xyz"


def record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("telegram.ext.ExtBot", logging.DEBUG, __file__, 1, message, args, exc_info)


def test_text_lines_mask_secrets_in_messages_and_arguments() -> None:
    line = formatter("text", [TOKEN]).format(record("Set Bot API URL: http://127.0.0.1/bot%s", TOKEN))
    assert TOKEN not in line
    assert line.endswith(f"DEBUG telegram.ext.ExtBot: Set Bot API URL: http://127.0.0.1/bot{MASK}")


def test_json_lines_are_objects_and_mask_secrets_in_tracebacks() -> None:
    try:
        raise RuntimeError(f"GET /bot{TOKEN}/getMe failed")
    except RuntimeError:
        entry = record("call failed: é", exc_info=sys.exc_info())
    line = formatter("json", [TOKEN]).format(entry)
    assert "\n" not in line and TOKEN not in line
    parsed = json.loads(line)
    assert parsed["level"] == "debug"
    assert parsed["logger"] == "telegram.ext.ExtBot"
    assert parsed["message"] == "call failed: é"
    assert f"GET /bot{MASK}/getMe failed" in parsed["exception"]


def test_secrets_that_json_escapes_are_masked_too() -> None:
    secret = 'pa"ss\\word'
    line = formatter("json", [secret]).format(record("login with %s", secret))
    assert json.loads(line)["message"] == f"login with {MASK}"


def test_short_secrets_are_masked_and_empty_values_ignored() -> None:
    line = formatter("text", ["", "pw"]).format(record("login with pw=pw"))
    assert line.endswith(f"login with {MASK}={MASK}")


def test_url_credentials_finds_passwords_and_bare_tokens() -> None:
    assert sorted(url_credentials("mongodb://app:p%40ss@db1:27017,db2/balcao")) == ["p%40ss", "p@ss"]
    assert url_credentials("nats://s3cr3t-token@nats:4222") == ["s3cr3t-token"]
    assert url_credentials("nats://nats:4222") == []
    assert url_credentials(None) == []


def test_configured_process_writes_json_warnings_and_masks_its_secrets() -> None:
    code = (
        "import logging, warnings\n"
        "from runtime import logs\n"
        f"logs.configure('info', 'json', secrets=[{TOKEN!r}])\n"
        f"logging.getLogger('x').info('token %s', {TOKEN!r})\n"
        "logging.getLogger('httpx').info('HTTP Request: POST https://api/bot.../getMe')\n"
        "warnings.warn('careful')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(entry["logger"], entry["level"]) for entry in lines] == [("x", "info"), ("py.warnings", "warning")]
    assert lines[0]["message"] == f"token {MASK}"
    assert "careful" in lines[1]["message"]
