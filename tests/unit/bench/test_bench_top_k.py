"""bench/bench_top_k.py times both top-k ways on both kinds of scores and prints their ratio."""

from __future__ import annotations

import re

from bench import bench_top_k


def test_tiny_run_prints_both_kinds_and_equal_lists_for_model_scores(capsys):
    bench_top_k.main(["--users", "300", "--items", "500", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    row = r"^\| model \| [\d.]+ \| [\d.]+ \| [\d.]+x \| ([\d.]+)% of rows \|$"
    model = re.search(row, out, re.M)
    assert model and float(model.group(1)) == 100.0  # no ties: both ways give the same lists
    assert re.search(r"^\| popularity \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out, re.M)
