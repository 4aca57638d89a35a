"""bench/bench_validation.py runs both rankings in child processes and prints their ratios."""

from __future__ import annotations

from bench import bench_validation


def test_tiny_run_prints_both_rankings_and_the_ratios(capsys):
    bench_validation.main(["--users", "300", "--items", "400", "--per-user", "8", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| blocks |", "| one block |"))]
    assert len(rows) == 2
    assert "blocks / one block: time" in out and "peak RSS" in out
