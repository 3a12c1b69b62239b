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
