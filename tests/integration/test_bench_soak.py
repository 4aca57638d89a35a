"""``bench/soak.py`` end to end in seconds: the bare target on tiny data (the 2-minute Serve
soak is a benchmark, run by hand; figures in docs/RELIABILITY.md)."""

from __future__ import annotations

import shutil

import pytest

from bench import soak

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_soak_smoke(capsys):
    assert soak.main(["--smoke-test", "--seconds", "3"]) == 0
    out = capsys.readouterr().out
    assert "| bare server |" in out and "0 errors" in out and "PASS" in out


def test_growth_counts_vanished_processes_and_ignores_small_noise():
    result = soak.Soak({1: "proxy actor", 2: "TwoTower replica", 3: "HAProxy"})
    result.memory = [{1: 100.0, 2: 200.0, 3: 10.0}, {1: 150.0, 2: None, 3: 15.0}]
    growth = result.growth(floor_mib=8.0)
    assert growth[1][2] == pytest.approx(0.5) and growth[3][2] == 0.0
    assert growth[2][2] == float("inf")
