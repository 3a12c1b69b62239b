"""`balcao watch` and `balcao reply` against a real server, bot, NATS and fake Telegram."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unicodedata

from cli.watch import Tail, events_url, terminal_json
from devstack.processes import free_port
from tests.harness import API_TOKEN, ROOT, eventually


def balcao(*args: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "BALCAO_API_URL": f"http://127.0.0.1:{port}", "BALCAO_API_TOKEN": API_TOKEN}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_watch_prints_a_contact_message_and_an_agent_reply_sent_from_the_terminal(stack, telegram):
    server = stack.server()
    stack.bot()
    # The stream starts empty in each test: from event 0 is everything, whenever watch connects.
    watching = balcao("watch", "--json", "--count", "4", "--since", "0", port=server.port)
    telegram.send_as_user(7501, "preciso de um boleto", first_name="Bia")
    session_id = eventually(lambda: stack_session(server.port), timeout=30, message="session opened")
    answered = balcao("reply", session_id, "Segue o boleto", port=server.port)
    out, err = finished(answered, 60)
    assert answered.returncode == 0, err
    out, err = finished(watching, 60)
    got = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in got[:2]] == ["session.opened", "message.received"], err
    assert got[1]["message"]["text"] == "preciso de um boleto"
    sent = {e["message"]["text"]: e["delivery"] for e in got[2:]}
    assert sent == {"Reply: mensagem recebida": "sent", "Segue o boleto": "sent"}
    assert [e["id"] for e in got] == sorted({e["id"] for e in got})


def finished(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"watch did not end; printed {out!r}, said {err!r}") from None


def stack_session(port: int) -> str | None:
    import httpx

    items = httpx.get(
        f"http://127.0.0.1:{port}/v1/sessions", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10
    ).json()["items"]
    return items[0]["id"] if items else None


def test_watch_resumes_on_another_replica_after_its_server_dies(stack, telegram):
    port = free_port()
    first = stack.server(HTTP_PORT=str(port), measured=False)
    stack.bot()
    watching = balcao("watch", "--json", "--type", "message.received", "--count", "4", "--since", "0", port=port)
    for contact in (7601, 7602):
        telegram.send_as_user(contact, f"antes {contact}")
    eventually(lambda: stack_session(port), timeout=30, message="a session stored")
    time.sleep(2.0)
    first.stop(signal.SIGKILL)
    stack.server(HTTP_PORT=str(port))  # the replacement, at the same address
    for contact in (7603, 7604):
        telegram.send_as_user(contact, f"depois {contact}")
    out, err = finished(watching, 90)
    got = [json.loads(line) for line in out.splitlines()]
    assert [e["message"]["text"] for e in got] == ["antes 7601", "antes 7602", "depois 7603", "depois 7604"], err
    assert "reconnecting" in err


def test_a_readable_line_names_the_contact_and_the_text():
    tail = Tail()
    line = tail.line(
        {
            "id": 1,
            "type": "message.received",
            "at": "2026-01-02T03:04:05.000Z",
            "session_id": "65f0c0ffee0000000000abcd",
            "contact": {"identifier": "1", "name": "João"},
            "message": {"text": "olá"},
        }
    )
    assert "João" in line and "0000abcd" in line and line.endswith("<- olá")
    sent = tail.line(
        {
            "id": 2,
            "type": "message.sent",
            "at": "x",
            "session_id": "65f0c0ffee0000000000abcd",
            "contact": {"identifier": "1", "name": ""},
            "message": {"text": "ok"},
            "delivery": "parked",
        }
    )
    assert "João" in sent and sent.endswith("-> ok [parked]")  # the name remembered from before
    assert events_url("https://h:1/", {"since": 5, "type": None}) == "wss://h:1/v1/events?since=5"


def test_blocked_contacts_and_moved_channels_have_lines_of_their_own():
    tail = Tail()
    blocked = tail.line(
        {
            "id": 4,
            "type": "contact.blocked",
            "at": "x",
            "session_id": "65f0c0ffee0000000000abcd",
            "contact": {"identifier": "77", "name": ""},
            "message": {"key": "agent:1"},
            "reason": "Forbidden: bot was blocked by the user",
        }
    )
    assert "77" in blocked and blocked.endswith("contact blocked the bot: Forbidden: bot was blocked by the user")
    moved = tail.line(
        {
            "id": 5,
            "type": "channel.moved",
            "at": "x",
            "channel": "-4001",
            "moved_to": "-1004001",
            "import": {"id": "65f0c0ffee0000000000beef"},
        }
    )
    assert moved.endswith("channel -4001 moved to -1004001 (import 65f0c0ffee0000000000beef)")


HOSTILE = {
    "id": 3,
    "type": "message.received",
    "at": "2026-01-02T03:04:05.000Z",
    "session_id": "65f0c0ffee0000000000abcd",
    # A bidi override that reverses what follows, and an escape sequence that clears the screen.
    "contact": {"identifier": "1", "name": "Ana\u202eoãoJ\x1b[2J"},
    # A line break that forges a line, an OSC that retitles the terminal, an 8-bit CSI,
    # isolates and a line separator.
    "message": {"text": "oi\r\n19:00:00  Suporte  -> senha?\x1b]0;x\x07 \u2066fim\u2069\x9b31m\u2028ok"},
}
UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp"}


def test_a_line_carries_no_control_bidi_or_separator_character_of_a_contact():
    line = Tail().line(HOSTILE)
    assert not [char for char in line if unicodedata.category(char) in UNPRINTABLE], repr(line)
    assert "Ana oãoJ [2J" in line
    assert line.endswith("<- oi 19:00:00 Suporte -> senha? ]0;x fim 31m ok")


def test_json_lines_escape_them_and_stay_the_same_json():
    printed = terminal_json(HOSTILE)
    assert not [char for char in printed if unicodedata.category(char) in UNPRINTABLE], repr(printed)
    assert "\\u202e" in printed and "\\u009b" in printed and "\\u2028" in printed
    assert json.loads(printed) == HOSTILE


def test_a_file_line_shows_its_kind_name_and_size_and_an_edit_says_so():
    tail = Tail()
    base = {"at": "2026-01-02T03:04:05.000Z", "session_id": "65f0c0ffee0000000000abcd", "contact": {"name": "Rita"}}
    file = {"name": "fatura.pdf", "mime_type": "application/pdf", "size": 123_456, "available": True}
    received = {"content_kind": "document", "text": "segunda via", "file": file}
    line = tail.line({**base, "type": "message.received", "message": received})
    assert line.endswith("<- [document fatura.pdf 120.6 KB] segunda via")
    unkept = {**file, "size": 30 * 1024 * 1024, "available": False, "reason": "larger than 20 MB"}
    line = tail.line({**base, "type": "message.received", "message": {"content_kind": "video", "file": unkept}})
    assert line.endswith("<- [video fatura.pdf 30.0 MB not kept]")
    place = {"content_kind": "location", "text": ""}
    assert tail.line({**base, "type": "message.received", "message": place}).endswith("<- [location]")
    edited = {"content_kind": "text", "text": "pedido 124"}
    assert tail.line({**base, "type": "message.edited", "message": edited}).endswith("<~ pedido 124 (edited)")
