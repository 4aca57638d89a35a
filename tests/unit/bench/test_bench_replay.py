"""bench/bench_replay.py replays the tiny data set's temporal test part end to end."""

from __future__ import annotations

import json

import pytest

from bench import bench_replay

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_replay_prints_every_method(tiny_storage, tmp_path, capsys):
    out = tmp_path / "replay.json"
    args = ["--storage", tiny_storage.uri, "--chunks", "3", "--epochs", "1", "--warm-epochs", "1"]
    bench_replay.main([*args, "--out", str(out)])
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| chunk |"))
    names = (*bench_replay.TWO_TOWER, *bench_replay.KNN, *bench_replay.EVENT_USERS)
    assert all(f" {name} |" in header for name in names)
    rows = json.loads(out.read_text())["rows"]
    assert [r["chunk"] for r in rows] == [1, 2] and rows[-1]["users_with_events"] > 0
    assert all(
        0 <= r[name] <= 1 for r in rows for name in (*bench_replay.TWO_TOWER, *bench_replay.KNN)
    )
    assert all(0 <= rows[-1][name] <= 1 for name in bench_replay.EVENT_USERS)  # NaN: no such user
    assert "Adam" not in text and "chunk 2:" in text  # progress lines
    # --live-only: the same frozen and live values, nothing retrained (nan).
    live = tmp_path / "live.json"
    bench_replay.main([*args, "--live-only", "--out", str(live)])
    only = json.loads(live.read_text())["rows"]
    keep = ("frozen", "live", "knn_frozen", "knn_live")
    assert [[r[n] for n in keep] for r in only] == [[r[n] for n in keep] for r in rows]
    assert all(r[n] != r[n] for r in only for n in ("warm", "full", "knn_refit", "t_full"))


def test_help_runs(capsys):
    with pytest.raises(SystemExit):
        bench_replay.main(["--help"])
    assert "--warm-epochs" in capsys.readouterr().out
