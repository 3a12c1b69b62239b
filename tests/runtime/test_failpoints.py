"""Fail points: inert unless armed, fire on the pass asked for, kill for real."""

import os
import subprocess
import sys

import pytest

from runtime import failpoints
from runtime.failpoints import FailPointError, failpoint
from tests.harness import ROOT


@pytest.fixture(autouse=True)
def disarm():
    yield
    failpoints.configure({})


def test_unarmed_fail_point_does_nothing():
    failpoints.configure({})
    failpoint("anything")


def test_raise_fires_on_the_pass_asked_for_and_is_logged(tmp_path):
    log = tmp_path / "fired"
    failpoints.configure({"BALCAO_FAILPOINTS": "a.b=raise@2, other=kill", "BALCAO_FAILPOINTS_LOG": str(log)})
    failpoint("a.b")
    failpoint("unrelated")
    with pytest.raises(FailPointError, match="a.b"):
        failpoint("a.b")
    failpoint("a.b")  # the third pass is past the armed one
    assert log.read_text().split()[:2] == ["a.b", "raise"]


def test_every_pass_fires_when_armed_with_a_star(tmp_path):
    log = tmp_path / "fired"
    failpoints.configure({"BALCAO_FAILPOINTS": "each=raise@*", "BALCAO_FAILPOINTS_LOG": str(log)})
    for _ in range(3):
        with pytest.raises(FailPointError):
            failpoint("each")
    assert log.read_text().count("each raise") == 3


@pytest.mark.parametrize("spec", ["nameonly", "x=explode", "x=kill@two", "=kill", "x=raise@0"])
def test_bad_spec_is_refused_with_the_entry(spec):
    with pytest.raises(ValueError, match="BALCAO_FAILPOINTS"):
        failpoints.parse(spec)


def test_kill_ends_the_process_with_sigkill():
    env = {**os.environ, "BALCAO_FAILPOINTS": "here=kill"}
    code = "from runtime.failpoints import failpoint; failpoint('here'); print('survived')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == -9
    assert b"survived" not in result.stdout


def test_pause_blocks_until_resumed_through_the_log(tmp_path):
    import threading
    import time

    log = tmp_path / "fired"
    failpoints.configure({"BALCAO_FAILPOINTS": "window=pause", "BALCAO_FAILPOINTS_LOG": str(log)})
    passed = threading.Event()
    worker = threading.Thread(target=lambda: (failpoint("window"), passed.set()))
    worker.start()
    time.sleep(0.3)
    assert not passed.is_set()
    assert log.read_text().startswith("window pause")
    failpoints.resume(str(log), "window")
    worker.join(5)
    assert passed.is_set()
    failpoint("window")  # fired once: the second pass goes straight through


def test_pause_without_a_log_to_resume_through_raises():
    failpoints.configure({"BALCAO_FAILPOINTS": "window=pause"})
    with pytest.raises(FailPointError, match="BALCAO_FAILPOINTS_LOG"):
        failpoint("window")


def test_nothing_is_armed_outside_a_test(monkeypatch):
    monkeypatch.delenv(failpoints.TESTING_ENV)
    failpoints.configure({"BALCAO_FAILPOINTS": "window=raise"})
    failpoint("window")  # not armed: goes straight through
    assert failpoints.armed() == []
    assert "armed only in tests (BALCAO_TESTING=1)" in (failpoints.refusal() or "")
    failpoints.configure({"BALCAO_FAILPOINTS": "window=raise", "BALCAO_TESTING": "1"})
    assert failpoints.armed() == ["window"] and failpoints.refusal() is None


def test_a_fail_point_that_fires_says_so_in_the_log(caplog):
    failpoints.configure({"BALCAO_FAILPOINTS": "a.b=raise"})
    with caplog.at_level("WARNING", logger="runtime.failpoints"), pytest.raises(FailPointError):
        failpoint("a.b")
    assert caplog.messages == ["fail point a.b fires: raise"]


def start(module: str, **extra: str) -> subprocess.Popen:
    """`python -m module` with its required settings pointing nowhere, and `extra`."""
    env = {
        **{name: value for name, value in os.environ.items() if name != failpoints.TESTING_ENV},
        "API_TOKEN": "a" * 32,
        "TELEGRAM_BOT_TOKEN": "1:x",
        "MONGODB_URI": "mongodb://127.0.0.1:9/balcao?serverSelectionTimeoutMS=200",
        "NATS_URL": "nats://127.0.0.1:9",
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("module", ["server", "bot"])
def test_a_process_given_fail_points_outside_a_test_refuses_to_start(module):
    process = start(module, BALCAO_FAILPOINTS="server.intake.before_ack=kill")
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"{module} started with fail points armed: {output[-2000:]}") from None
    assert process.returncode == 1
    assert output.strip() == (
        f"{module}: BALCAO_FAILPOINTS is set (server.intake.before_ack), but fail points crash this process "
        "on purpose and are armed only in tests (BALCAO_TESTING=1); unset BALCAO_FAILPOINTS"
    )


def test_a_process_with_fail_points_armed_says_so_loudly_at_start():
    process = start("server", BALCAO_FAILPOINTS="server.intake.before_ack=kill", BALCAO_TESTING="1")
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "MongoDB not reachable yet" in line:
                break
    finally:
        process.terminate()
        process.communicate(timeout=30)
    armed = [line for line in lines if "FAIL POINTS ARMED" in line]
    assert len(armed) == 1 and " WARNING " in armed[0] and "(server.intake.before_ack)" in armed[0], lines
