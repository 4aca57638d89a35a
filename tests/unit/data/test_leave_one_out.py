"""The leave-one-out (next-item) split: last by time is test, the one before valid, ties in file
order, too-short users in train only, and each bad input named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_jobs import prepare
from towers.data.errors import DataError
from towers.data.prepared import load_prepared, summary
from towers.data.splits import leave_one_out
from towers.storage.root import Storage


def test_the_last_is_test_and_the_one_before_is_valid():
    # Rows out of time order on purpose: user 0's times 5, 1, 9, 3; user 1's 2, 8, 4.
    users = np.array([0, 0, 1, 0, 1, 0, 1])
    times = np.array([5, 1, 2, 9, 8, 3, 4])
    parts, short = leave_one_out(users, times)
    assert short == 0
    assert parts.test.tolist() == [3, 4]  # user 0's time 9, user 1's time 8
    assert parts.valid.tolist() == [0, 6]  # user 0's time 5, user 1's time 4
    assert parts.train.tolist() == [1, 2, 5]
    without_valid, _ = leave_one_out(users, times, with_valid=False)
    assert without_valid.valid.size == 0 and without_valid.train.tolist() == [0, 1, 2, 5, 6]


def test_ties_in_time_keep_file_order():
    users = np.zeros(4, np.int64)
    parts, _ = leave_one_out(users, np.zeros(4))  # one timestamp for all: the file's order
    assert (parts.train.tolist(), parts.valid.tolist(), parts.test.tolist()) == ([0, 1], [2], [3])
    parts, _ = leave_one_out(users, np.array([7, 7, 7, 1]))  # the tie after the older row
    assert (parts.valid.tolist(), parts.test.tolist()) == ([1], [2])


def test_users_with_fewer_than_three_stay_in_train_and_are_counted():
    users = np.array([0, 0, 1, 2, 2, 2])
    parts, short = leave_one_out(users, np.arange(6))
    assert short == 2  # users 0 (two rows) and 1 (one row)
    assert parts.train.tolist() == [0, 1, 2, 3] and parts.test.tolist() == [5]


def test_no_user_with_three_interactions_is_an_error():
    with pytest.raises(ValueError, match="none of the 3 users has .most has 2"):
        leave_one_out(np.array([0, 0, 1, 2]), np.arange(4))


def _write(tmp_path, frame: pd.DataFrame, timestamp: bool) -> list[str]:
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    ts = "  timestamp: ts\n" if timestamp else ""
    (tmp_path / "schema.yaml").write_text(f"interactions:\n  user_id: u\n  item_id: i\n{ts}")
    return ["--interactions", str(path), "--schema", str(tmp_path / "schema.yaml")]


def _run(tmp_path, *args: str) -> dict:
    argv = [*args, "--split", "leave-one-out", "--storage", str(tmp_path / "run")]
    return prepare.run(prepare.parse_config(prepare.PrepareConfig, argv))


def test_prepare_publishes_the_split_and_says_how_many_users_are_too_short(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(30) for t, i in enumerate(rng.permutation(40)[: 2 + u])]
    rows.append((99, 5, 0))  # one user with a single interaction
    frame = pd.DataFrame(rows, columns=["u", "i", "ts"])
    manifest = _run(tmp_path, *_write(tmp_path, frame, timestamp=True))
    counts = manifest["split_counts"]["leave-one-out"]
    assert counts == {"train": len(frame) - 2 * 29, "valid": 29, "test": 29}
    assert manifest["leave_one_out_short_users"] == 2  # user 0 (2 rows) and user 99
    assert "2 users with fewer than 3 interactions stay in train only" in summary(manifest)
    data = load_prepared(Storage(str(tmp_path / "run")), "leave-one-out")
    assert data.time_ordered
    last_train = pd.Series(data.train.timestamp).groupby(data.train.user_idx).max()
    valid = pd.Series(data.valid.timestamp, index=data.valid.user_idx)
    test = pd.Series(data.test.timestamp, index=data.test.user_idx)
    assert (valid == test - 1).all() and (last_train[valid.index] == valid - 1).all()


def test_data_without_a_time_order_is_named(tmp_path):
    frame = pd.DataFrame({"u": [0, 0, 0, 1, 1, 1], "i": [1, 2, 3, 1, 2, 3]})
    with pytest.raises(DataError, match="leave-one-out split needs each user's interactions in"):
        _run(tmp_path, *_write(tmp_path, frame, timestamp=False))
    assert not (tmp_path / "run" / "data").exists()  # nothing half-written


def test_data_where_no_user_has_three_interactions_is_named(tmp_path):
    frame = pd.DataFrame({"u": [0, 0, 1, 2, 2], "i": [1, 2, 1, 2, 3], "ts": [1, 2, 3, 4, 5]})
    with pytest.raises(DataError, match="events.csv: the leave-one-out split needs users with"):
        _run(tmp_path, *_write(tmp_path, frame, timestamp=True))


def test_the_report_says_which_protocol_it_used():
    from towers.evaluation.report import markdown_report

    values = {f"{m}@{k}": 0.1 for m in ("precision", "recall", "map", "ndcg", "hit_rate")
              for k in (5, 10, 20)}  # fmt: skip
    report = {"dataset": "beauty", "n_test_users": 3, "feedback": "implicit",
              "models": {"popularity": values}}  # fmt: skip
    assert "full catalog" in markdown_report({**report, "split": "leave-one-out"})
    assert "Protocol: leave-one-out" not in markdown_report({**report, "split": "temporal"})
