"""bench/bench_two_hop.py trains the settings side by side and prints their ratios."""

from __future__ import annotations

from bench import bench_two_hop


def test_tiny_run_prints_every_setting_and_its_ratio(capsys):
    bench_two_hop.main(["--items", "3000", "--steps", "2", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [
        line for line in out.splitlines() if line.startswith(("| off |", "| concat |", "| gated |"))
    ]
    assert len(rows) == 3 and rows[0].endswith("| 1.00 |")
    assert "one refresh of the neighbourhoods" in out and "negatives user_full" in out
