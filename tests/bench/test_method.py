"""The method's rules: nearest-rank percentiles, a p99 only from enough samples, ratios of pairs."""

from __future__ import annotations

import pytest

from bench import method, report
from bench.replies import most_in_a_second


def test_percentiles_are_nearest_rank():
    samples = [float(n) for n in range(1, 101)]
    assert method.percentile(samples, 0.5) == 50
    assert method.percentile(samples, 0.99) == 99
    assert method.percentile(samples, 1.0) == 100
    assert method.percentile([7.0], 0.99) == 7


def test_a_p99_needs_a_thousand_samples_else_the_maximum_is_called_that():
    few = [0.001 * n for n in range(1, 1000)]
    assert method.tail(few) == {"max": few[-1]}
    enough = [0.001 * n for n in range(1, 1001)]
    assert method.tail(enough) == {"p99": enough[989]}
    figures = method.latency_figures(few)
    assert "p99_ms" not in figures and figures["max_ms"] == pytest.approx(999)
    assert report.tail(figures) == "max 999 ms (n=999)"


def test_a_ratio_is_the_median_of_the_pairs_ratios():
    figures = method.median_ratio([(90.0, 100.0), (50.0, 100.0), (120.0, 100.0)])
    assert figures["ratios"] == [0.9, 0.5, 1.2]
    assert figures["ratio"] == 0.9


def test_runs_alternate_balcao_and_its_reference():
    assert list(method.alternate(2)) == [(1, "balcao"), (1, "reference"), (2, "balcao"), (2, "reference")]


def test_the_most_sends_in_any_rolling_second():
    assert most_in_a_second([0.0, 0.5, 0.99, 1.0, 1.2]) == 4  # 0.5, 0.99, 1.0 and 1.2 within (0.2, 1.2]
    assert most_in_a_second([n / 30 for n in range(31)]) == 30  # the first leaves as the 31st comes


def test_a_record_names_the_commit_the_load_and_other_work(tmp_path):
    with method.recorded("example", tmp_path, ["--size", "1"]) as record:
        record.figures = {"answer": 42}
    written = (tmp_path / "example.json").read_text()
    for field in ("commit", "load_before", "load_after", "other_cpu_seconds", "other_work", "started"):
        assert f'"{field}"' in written
    assert '".venv/bin/python -m bench.example --size 1"' in written


def test_a_tree_without_git_is_recorded_as_an_unknown_commit(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert method.commit() == {"commit": "unknown", "dirty": False}
