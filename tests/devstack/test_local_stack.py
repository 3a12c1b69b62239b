"""`make run` (python -m devstack): the whole system from nothing, stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx

from devstack.processes import free_port
from tests.harness import ROOT, eventually


def start_stack(tmp_path, *, own_group: bool = False, **extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("API_TOKEN", "MONGODB_URI", "NATS_URL", "TELEGRAM_BOT_TOKEN")
    }
    env.update({"HTTP_PORT": str(port), "BALCAO_DATA_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1", **extra})
    # own_group: the stack leads a process group, as in a terminal, where Ctrl-C
    # sends SIGINT to the whole group at once.
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=own_group,
    )
    return process, port


def read_until(process: subprocess.Popen, marker: str) -> str:
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError("stack exited early:\n" + "".join(lines))


def test_runs_everything_prints_url_and_token_and_stops_on_ctrl_c(tmp_path):
    process, port = start_stack(tmp_path)
    try:
        banner = read_until(process, "Press Ctrl-C to stop.")
        token = re.search(r"API token\s+: (\S+)", banner).group(1)
        assert f"http://127.0.0.1:{port}/v1" in banner
        assert "set TELEGRAM_BOT_TOKEN" in banner  # says how to enable the bot
        assert (tmp_path / "var" / "api_token").read_text().strip() == token

        ready = eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200)
        assert ready
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "nats-server stopped" in output and "secantusdb stopped" in output
    # Data stays for the next run: the same token is used again.
    second, _ = start_stack(tmp_path)
    try:
        assert f"API token    : {token}" in read_until(second, "Press Ctrl-C to stop.")
    finally:
        second.send_signal(signal.SIGINT)
        second.communicate(timeout=60)


def test_a_busy_port_is_reported_and_everything_started_is_stopped(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process, _ = start_stack(tmp_path, HTTP_PORT=str(taken.getsockname()[1]))
        output = process.communicate(timeout=90)[0]
    assert process.returncode == 1
    assert "is in use; set HTTP_PORT" in output
    assert "nats-server stopped" in output and "secantusdb stopped" in output


def test_ctrl_c_in_a_terminal_stops_the_server_before_nats_and_the_database_quietly(tmp_path):
    process, port = start_stack(tmp_path, own_group=True)
    try:
        read_until(process, "Press Ctrl-C to stop.")
        assert eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    after = output.splitlines()  # what came after the banner, which read_until consumed
    stops = [line for line in after if re.search(r"(server|nats-server|secantusdb) stopped$", line)]
    assert [line.rsplit(" ", 2)[-2] for line in stops] == ["server", "secantusdb", "nats-server"], output
    # A few lines (each of the server's two consumers says when it starts and stops), and
    # none of the reconnect warnings of infrastructure that went first.
    assert not re.search(r"(?i)refused|reconnect|disconnected|traceback|error", "\n".join(after)), output
    assert len(after) <= 12, output


def test_help_says_what_it_runs_and_starts_nothing(tmp_path):
    env = {**os.environ, "BALCAO_DATA_DIR": str(tmp_path / "var")}
    shown = subprocess.run(
        [sys.executable, "-m", "devstack", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    wrong = subprocess.run(
        [sys.executable, "-m", "devstack", "--port", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert shown.returncode == 0 and "usage: python -m devstack" in shown.stdout
    assert "NATS_URL" in shown.stdout and "BALCAO_DATA_DIR" in shown.stdout
    assert wrong.returncode == 2 and "unrecognized arguments: --port 1" in wrong.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or written
