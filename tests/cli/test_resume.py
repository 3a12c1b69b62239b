"""A many-chunk import through the CLI, interrupted twice, ends as a clean import would.

What matters is the number of chunks (a crash lands mid-file, chunks before and
after it), not their size: 15 chunks of 200 sessions prove what 20 of 1,000 did,
in a fraction of the time, so the test fits pytest's 120 s on a busy machine.
Its own waits add up to less than that, so a slow run fails with a clear message
rather than a timeout.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from server.importing.records import message_key, normalise_session
from server.models.sessions import preview
from tests.harness import API_TOKEN, ROOT, eventually, failpoint_fired, outbound_messages

SESSIONS = 1_500
CHUNK = 100
# Inside a chunk (one upsert of its records): after its messages are stored, before it is recorded.
CHUNK_POINT = "import.after_sessions_inserted"
CHANNEL = "@suporte"


def chunks_acknowledged(state_dir: Path) -> int:
    for path in state_dir.glob("*.json"):
        try:
            return json.loads(path.read_text())["chunks_sent"]
        except (ValueError, KeyError, FileNotFoundError):
            return 0  # caught mid-replace
    return 0


def clean_import(path: Path) -> list[tuple]:
    """What a clean import of the file stores, worked out from the file itself."""
    expected = []
    for number, raw in enumerate(generate_sessions(SESSIONS, messages_per_session=1, seed=77), start=1):
        session = normalise_session(raw, record=number)
        (message,) = session.messages
        expected.append(
            (
                session.contact_identifier,
                session.name,
                session.source_id,
                1,
                preview(message.content),
                message.date,
                message.date,
                (message_key(session.platform, session.contact_identifier, message),),
            )
        )
    return sorted(expected)


def stored(mongo) -> list[tuple]:
    keys: dict = {}
    for message in mongo.messages.find({}, {"session_id": 1, "key": 1}):
        keys.setdefault(message["session_id"], []).append(message["key"])
    return sorted(
        (
            s["contact_identifier"],
            s["contact_name"],
            s.get("source_id"),
            s["message_count"],
            s["last_message_preview"],
            s["created_at"],
            s["last_message_at"],
            tuple(sorted(keys.get(s["_id"], []))),
        )
        for s in mongo.sessions.find()
    )


def test_an_import_survives_a_server_crash_and_resumes_after_the_cli_dies(stack, telegram, mongo, tmp_path):
    telegram.add_channel(CHANNEL)
    # The server dies inside the fourth chunk: its sessions and messages stored, the
    # chunk neither counted nor recorded, the CLI not answered.
    log = tmp_path / "failpoints.log"
    server = stack.server(BALCAO_FAILPOINTS=f"{CHUNK_POINT}=kill@4", BALCAO_FAILPOINTS_LOG=str(log))
    stack.bot()
    path = tmp_path / "sessions.csv"
    out = io.StringIO()
    write_sessions(generate_sessions(SESSIONS, messages_per_session=1, seed=77), out, "csv")
    path.write_text(out.getvalue(), encoding="utf-8")
    state = tmp_path / "state"
    command = [
        sys.executable,
        "-m",
        "cli",
        "import",
        str(path),
        "--channel",
        CHANNEL,
        "--chunk-size",
        str(CHUNK),
        "--state-dir",
        str(state),
    ]
    env = {**os.environ, "BALCAO_API_URL": stack.api_url, "BALCAO_API_TOKEN": API_TOKEN}
    started = time.monotonic()
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # The server dies mid-chunk and comes back on the same port: the CLI retries and goes on.
    eventually(lambda: not server.running, timeout=25, message="server killed in the fourth chunk")
    assert failpoint_fired(log, CHUNK_POINT) and chunks_acknowledged(state) == 3
    assert mongo.sessions.count_documents({}) == 4 * CHUNK  # the fourth stored, not recorded
    stack.server()
    # Then the CLI itself dies.
    eventually(lambda: chunks_acknowledged(state) >= 9, timeout=25, message="9 chunks")
    first.kill()
    _, retries = first.communicate()
    assert "retrying" in retries

    resumed = subprocess.run(
        [*command, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=40, check=False
    )

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming import" in resumed.stderr
    assert stored(mongo) == clean_import(path)
    job = mongo.import_jobs.find_one()
    assert job["status"] == "succeeded"
    # Each chunk is counted once; the two chunks cut short (server crash, CLI killed) were sent
    # again, and the sessions their first try opened still count as created (import_origin).
    assert job["counts"] == {"received": SESSIONS, "created": SESSIONS, "updated": 0, "unchanged": 0, "rejected": 0}
    assert not list(state.glob("*.json"))
    # Settled: the announcement sent and nothing left in the outbound stream.
    eventually(
        lambda: telegram.sent(CHANNEL) and not outbound_messages(stack.env["NATS_URL"]),
        timeout=15,
        message="announcement",
    )
    assert len(telegram.sent(CHANNEL)) == 1
    print(f"interrupted import of {SESSIONS} sessions done in {time.monotonic() - started:.1f} s")


START_POINT = "import.start.after_job_stored"


def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "sessions.json"
    out = io.StringIO()
    write_sessions(generate_sessions(30, messages_per_session=1, seed=5), out, "json")
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def import_command(path: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "import", str(path), "--channel", CHANNEL, "--chunk-size", "10"] + [
        "--state-dir",
        str(state),
    ]


def test_a_start_whose_answer_was_lost_is_retried_into_the_same_import(stack, telegram, mongo, tmp_path):
    """The server stores the job and dies before answering: the CLI's retry, with the
    same Idempotency-Key, gets that job instead of starting a second one that nobody
    feeds (to be failed as abandoned and announced later)."""
    telegram.add_channel(CHANNEL)
    log = tmp_path / "failpoints.log"
    server = stack.server(BALCAO_FAILPOINTS=f"{START_POINT}=kill", BALCAO_FAILPOINTS_LOG=str(log))
    stack.bot()
    env = {**os.environ, "BALCAO_API_URL": stack.api_url, "BALCAO_API_TOKEN": API_TOKEN}
    cli = subprocess.Popen(
        import_command(small_file(tmp_path), tmp_path / "state"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    eventually(lambda: failpoint_fired(log, START_POINT), timeout=30, message="server killed after storing the job")
    eventually(lambda: not server.running, timeout=15, message="server gone")
    assert mongo.import_jobs.count_documents({}) == 1
    stack.server()

    out, err = cli.communicate(timeout=90)

    assert cli.returncode == 0, out + err
    assert "starting the import: RemoteProtocolError" in err and "retrying" in err
    (job,) = mongo.import_jobs.find()
    assert job["status"] == "succeeded" and job["counts"]["received"] == 30
    assert mongo.sessions.count_documents({}) == 30
    eventually(lambda: telegram.sent(CHANNEL), timeout=15, message="announcement")
    assert len(telegram.sent(CHANNEL)) == 1


def test_a_start_never_answered_is_picked_up_by_the_next_run(stack, telegram, mongo, tmp_path):
    """The server dies after storing the job, and the CLI is stopped while it retries: run
    again, it asks with the key it saved before starting, and carries on with that job."""
    telegram.add_channel(CHANNEL)
    log = tmp_path / "failpoints.log"
    server = stack.server(BALCAO_FAILPOINTS=f"{START_POINT}=kill", BALCAO_FAILPOINTS_LOG=str(log))
    stack.bot()
    env = {**os.environ, "BALCAO_API_URL": stack.api_url, "BALCAO_API_TOKEN": API_TOKEN}
    command = import_command(small_file(tmp_path), tmp_path / "state")
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually(lambda: failpoint_fired(log, START_POINT), timeout=30, message="server killed after storing the job")
    eventually(lambda: not server.running, timeout=15, message="server gone")
    first.kill()
    first.communicate()
    (saved,) = (tmp_path / "state").glob("*.json")
    assert json.loads(saved.read_text())["job_id"] == ""  # the start was never answered
    stack.server()

    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "was not answered; asking again" in again.stderr
    (job,) = mongo.import_jobs.find()
    assert job["status"] == "succeeded" and job["counts"]["received"] == 30
    assert mongo.sessions.count_documents({}) == 30
    eventually(lambda: telegram.sent(CHANNEL), timeout=15, message="announcement")
    assert len(telegram.sent(CHANNEL)) == 1
    assert not list((tmp_path / "state").glob("*.json"))
