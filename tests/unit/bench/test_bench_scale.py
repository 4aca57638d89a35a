"""bench/bench_scale.py: the steps without Ray on a tiny size, the child runner, table, plot."""

from __future__ import annotations

import json
import os
import resource
import sys

import pytest

from bench import bench_scale
from bench.bench_scale import RESULT_PREFIX, StepRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(size: str, step: str, seconds: float, rc: int = 0) -> StepRun:
    return StepRun(size, step, seconds, 2 * 2**30, 3 * 2**30, rc, {"samples_per_s": 10}, 1.5)


def test_steps_without_ray_run_in_turn_on_a_tiny_size(tmp_path, capsys):
    common = ["--sizes", "tiny", "--root", str(tmp_path), "--train-steps", "3"]
    results = {}
    for step in ("prepare", "train", "knn", "evaluate"):
        bench_scale.main([*common, "--step", step])
        results[step] = bench_scale.parse_result(capsys.readouterr().out)
    assert results["prepare"]["interactions"] > 0.9 * bench_scale.SIZES["tiny"][2]
    train = results["train"]
    assert train["steps"] == train["previous_steps"] == 3 and train["samples_per_s"] > 0
    assert train["negatives"] == "user_full" and train["previous_negatives"].startswith("mixed")
    epochs = train["epochs"]  # the epoch's seconds rounded to 0.1 before they are multiplied
    assert train["training_s"] == pytest.approx(train["epoch_s_extrapolated"] * epochs, abs=epochs)
    assert train["rate_vs_previous"] == pytest.approx(
        train["samples_per_s"] / train["previous_samples_per_s"], rel=0.01
    )
    assert results["knn"]["search"] == "exact" and "neighbor_recall@10" not in results["knn"]
    assert 0 < results["evaluate"]["ndcg@10"] <= 1
    assert (tmp_path / "tiny" / "model").is_dir() and (tmp_path / "tiny" / "knn").is_dir()


def test_parent_measures_a_child_and_reads_its_result(tmp_path, monkeypatch):
    """run_step on a stand-in child that allocates ~300 MB and prints a result line."""
    child = tmp_path / "child.py"
    child.write_text(
        "import json\n"
        "block = bytearray(300 * 2**20)\n"
        f"print({RESULT_PREFIX!r} + json.dumps({{'ok': len(block)}}))\n"
    )
    real_popen = bench_scale.subprocess.Popen
    monkeypatch.setattr(
        bench_scale.subprocess, "Popen", lambda cmd, **kw: real_popen([sys.executable, child], **kw)
    )
    args = bench_scale.parse_args(["--root", str(tmp_path)])
    (tmp_path / "tiny").mkdir()
    measured = bench_scale.run_step("tiny", "prepare", tmp_path / "tiny", args)
    assert measured.returncode == 0 and measured.extra == {"ok": 300 * 2**20}
    # wait4's peak of the child: its 300 MB, plus at most what a forked child shares with this
    # (test) process before it execs — the bench's own driver is small, pytest is not.
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 300 * 2**20 < measured.peak_process_bytes < 300 * 2**20 + parent + 2**28
    assert os.path.exists(tmp_path / "tiny_prepare.log")


def test_table_slopes_and_plot(tmp_path):
    runs = [run("1m", "train", 10.0), run("5m", "train", 50.0), run("25m", "train", 500.0)]
    runs.append(run("1m", "knn", 4.0, rc=1))
    slopes = bench_scale.slopes(runs, "train")  # 5x data: 5x time, then 10x time
    assert slopes[0] == pytest.approx(1.0, rel=0.01) and slopes[1] > 1.4
    assert bench_scale.slopes(runs, "knn") == []  # failed runs are not points
    table = bench_scale.markdown(runs)
    assert "| 5m | train | 50.0 | 2.00 | 3.00 | 1.5 | samples_per_s 10 |" in table
    assert "**failed (exit 1)**" in table and "- train: 1.00, 1.43" in table
    bench_scale.plot(runs, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    saved = tmp_path / "runs.json"
    saved.write_text(json.dumps([r.__dict__ for r in runs]))
    bench_scale.main(["--replot", str(saved), "--plot", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").exists()


def test_parse_result_takes_the_last_result_line():
    first, last = json.dumps({"a": 1}), json.dumps({"a": 2})
    out = f"noise\n{RESULT_PREFIX}{first}\nmore\n{RESULT_PREFIX}{last}\n"
    assert bench_scale.parse_result(out) == {"a": 2}
    assert bench_scale.parse_result("no result") == {}
