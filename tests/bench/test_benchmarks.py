"""Every benchmark runs, at a tiny size, so none can rot; and the published page is what the results render.

The figures at these sizes mean nothing; what is checked is that each benchmark
completes against the real servers, writes its machine-readable results, that
its own checks of the work done passed (each raises when a side stored less
than it should), and that bench.report renders them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from devstack.processes import unmeasured_environ
from tests.harness import ROOT

TINY = {
    "intake": ["--parts", "intake", "existing", "--messages", "20", "--contacts", "5", "--pairs", "1"],
    "intake-e2e": ["--parts", "e2e", "--messages", "10", "--pairs", "1", "--durability", "nats-sync+mongo-journal"],
    "replies": ["--rates", "10", "35", "--seconds", "2", "--contacts", "40"],
    "imports": ["--sessions", "60", "--pairs", "1"],
    "sessions": ["--sessions", "200", "--page", "3", "--repeat", "5"],
    "eventlatency": ["--clients", "3", "--messages", "10", "--rate", "20", "--runs", "1"],
    "outbound": ["--messages", "40", "--chats", "20", "--burst", "3"],
    "csv_reading": ["--sessions", "100", "--repeat", "1"],
}


def run_benchmark(name: str, tmp_path: Path) -> dict:
    module = name.split("-")[0]
    finished = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *TINY[name], "--results", str(tmp_path)],
        cwd=ROOT,
        env=unmeasured_environ(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    result = json.loads((tmp_path / f"{module}.json").read_text())
    page = report.render({module: result})
    assert f"## {report.TITLES[module]}" in page
    assert f"Not run yet: `{report.COMMANDS[module]}`" not in page
    return result


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(TINY))
def test_each_benchmark_runs_at_a_tiny_size(name: str, tmp_path: Path):
    result = run_benchmark(name, tmp_path)
    figures = result["figures"]
    assert result["commit"] and result["load_before"] and result["load_after"]
    if name.startswith("intake"):
        for case in figures["cases"]:
            assert case["summary"]["ratio"] > 0 and len(case["runs"]) == 2
            assert case["summary"]["balcao"]["mongo_commands_per_message"]["server"] > 0
    elif name == "replies":
        assert [run["too_many_requests"] for run in figures["runs"]] == [0, 0]
    elif name == "imports":
        assert figures["summary"]["balcao"]["reimport_rate"] > 0
    elif name == "sessions":
        assert figures["http_round_trip"]["samples"] == figures["find_over_twice_the_page"]["samples"] == 5
        assert "Where a first page's difference goes" in report.render({"sessions": result})


def test_the_published_page_is_what_the_results_render():
    assert (ROOT / "docs" / "benchmarks.md").read_text() == report.render(report.load(report.RESULTS)), (
        "run `python -m bench.report` after the benchmarks"
    )
