"""bench/bench_loss.py runs end to end on tiny catalogs and prints every loss's column."""

from __future__ import annotations

import pytest

from bench import bench_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_sweep_prints_the_table(capsys):
    args = ["--items", "150,300", "--rounds", "1", "--steps", "2", "--threads", "1"]
    bench_loss.main([*args, "--interactions", "6000"])  # 5 batches: 2 warm-up, 3 measured
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| items |"))
    assert all(f"{loss} samples/s" in header for loss in bench_loss.LOSSES)
    rows = [line for line in out.splitlines() if line.startswith(("| 150 |", "| 300 |"))]
    assert len(rows) == 2 and rows[0].count("| 1.00") == len(bench_loss.LOSSES)
