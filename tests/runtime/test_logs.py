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


# A contact as the database errors below hold it. Tracebacks quote source lines,
# so the values are only ever named here, never written where the errors arise.
CONTACT = {"phone": "".join(["5585", "999990001"]), "name": " ".join(["Joaquina", "Esmeralda"])}


def database_errors(mongo) -> tuple[BaseException, BaseException]:
    """A real bulk write error and a real duplicate key error from the MongoDB-wire server,
    each holding the contact's name or number in its text."""
    from pymongo.errors import BulkWriteError, DuplicateKeyError

    contacts = mongo["log_privacy"]
    contacts.create_index("phone", unique=True)
    contacts.insert_one(dict(CONTACT))
    errors: list[BaseException] = []
    try:
        contacts.insert_many([dict(CONTACT)], ordered=False)
    except BulkWriteError as exc:
        errors.append(exc)
    try:
        contacts.insert_one(dict(CONTACT))
    except DuplicateKeyError as exc:
        errors.append(exc)
    assert len(errors) == 2 and all(CONTACT["phone"] in str(error) for error in errors)
    return errors[0], errors[1]


def test_database_error_texts_are_logged_without_the_documents_they_hold(mongo) -> None:
    bulk, duplicate = database_errors(mongo)
    try:
        try:
            raise bulk
        except Exception as cause:
            raise RuntimeError("the batch could not be stored") from cause
    except RuntimeError:
        traced = record("batch failed", exc_info=sys.exc_info())
    for fmt in ("text", "json"):
        for entry in (
            record("left for redelivery, MongoDB: %s", bulk),
            record("left for redelivery: %r", duplicate),
            record("%s", duplicate),
            traced,
        ):
            line = formatter(fmt, []).format(entry)
            assert CONTACT["phone"] not in line and CONTACT["name"] not in line, line
            assert "withheld from the log" in line, line
            assert "11000" in line, line  # the code, which says what went wrong
    assert "pymongo.errors.BulkWriteError: 1 write errors and 0 write concern errors" in formatter("text", []).format(
        traced
    )
