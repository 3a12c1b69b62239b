"""The Makefile a newcomer meets first: which Python it takes, and what `make run` needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """`make -n -B ARGS`: every command make would run, nothing run."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, env=env, text=True, capture_output=True, timeout=60)


def fake_python(directory: Path, name: str, version: tuple[int, int]) -> None:
    """An interpreter named `name` that answers the Makefile's version probe as `version` would."""
    script = directory / name
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.exit({version} < (3, 11))'\n")
    script.chmod(0o755)


def test_make_run_needs_no_node(tmp_path: Path) -> None:
    run = dry_run("run", f"VENV={tmp_path}/venv")
    assert run.returncode == 0, run.stderr
    assert "-m devstack" in run.stdout
    assert "npm" not in run.stdout


def test_make_test_installs_the_bruno_cli(tmp_path: Path) -> None:
    test = dry_run("test", f"VENV={tmp_path}/venv")
    assert "npm install --prefix .tools/bruno" in test.stdout


def test_the_newest_python_from_3_11_on_is_taken(tmp_path: Path) -> None:
    fake_python(tmp_path, "python3.13", (3, 10))  # a python3.13 name that answers like 3.10 is skipped
    fake_python(tmp_path, "python3.12", (3, 12))
    run = dry_run(
        "install",
        f"VENV={tmp_path}/venv",
        "PYTHON_CANDIDATES=python3.13 python3.12",
        path=f"{tmp_path}:{os.environ['PATH']}",
    )
    assert "python3.12 -m venv" in run.stdout
    assert "python3.13 -m venv" not in run.stdout


def test_without_a_suitable_python_make_says_which_versions_work(tmp_path: Path) -> None:
    fake_python(tmp_path, "python3.10", (3, 10))
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env["PATH"] = f"{tmp_path}:{os.environ['PATH']}"
    result = subprocess.run(
        ["make", "install", f"VENV={tmp_path}/venv", "PYTHON_CANDIDATES=python3.10"],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "needs Python 3.11 or newer (3.11, 3.12 and 3.13 are tested)" in result.stderr
    assert not (tmp_path / "venv").exists()
