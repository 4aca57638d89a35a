"""Splits: the Recommenders benchmark protocol exactly, temporal hold-out, validation carve-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers.data.movielens import read_folder
from towers.data.splits import split_interactions


def recommenders_reference(frame: pd.DataFrame, ratio: float, seed: int) -> set[int]:
    """The benchmark's splitter written out in pandas, row by row as the issue states it."""
    data = frame.copy()
    np.random.seed(seed)
    data["random"] = np.random.rand(len(data))
    data = data.sort_values(["item_id", "random"])
    groups = data.groupby("item_id")
    data["count"] = groups["item_id"].transform("count")
    data["rank"] = groups.cumcount() + 1
    return set(data.index[data["rank"] <= np.round(ratio * data["count"])])


def test_random_split_matches_reference_on_ml100k(ml100k_dir):
    inter = read_folder(ml100k_dir, "ml-100k").interactions
    cols = inter["user_id"].to_numpy(), inter["item_id"].to_numpy(), inter["timestamp"].to_numpy()
    parts = split_interactions(*cols, kind="random", test_ratio=0.25, valid_ratio=0.0, seed=42)
    assert set(parts.train.tolist()) == recommenders_reference(inter, 0.75, 42)
    assert len(parts.train) + len(parts.test) == 100_000
    # ~75/25 per item: every item with 4+ ratings has between 60% and 90% of them in train.
    counts = np.bincount(inter["item_id"].to_numpy())
    in_train = np.bincount(inter["item_id"].to_numpy()[parts.train], minlength=len(counts))
    many = counts >= 4
    share = in_train[many] / counts[many]
    assert share.min() >= 0.6 and share.max() <= 0.9
    assert abs(len(parts.train) / 100_000 - 0.75) < 0.01


def test_same_seed_same_split_other_seed_differs():
    rng = np.random.default_rng(0)
    users, items, ts = (
        rng.integers(0, 50, 2000),
        rng.integers(0, 80, 2000),
        rng.integers(0, 10**6, 2000),
    )
    a = split_interactions(users, items, ts, "random", seed=42)
    b = split_interactions(users, items, ts, "random", seed=42)
    c = split_interactions(users, items, ts, "random", seed=43)
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_parts_are_disjoint_and_cover_everything():
    rng = np.random.default_rng(1)
    users, items, ts = (
        rng.integers(0, 30, 1000),
        rng.integers(0, 40, 1000),
        rng.integers(0, 99, 1000),
    )
    for kind in ("random", "temporal"):
        p = split_interactions(users, items, ts, kind, test_ratio=0.2, valid_ratio=0.1)
        allrows = np.concatenate([p.train, p.valid, p.test])
        assert len(allrows) == len(set(allrows.tolist())) == 1000
        assert len(p.valid) > 0


def test_temporal_holds_out_each_users_latest():
    users = np.repeat(np.arange(3), 10)
    ts = np.tile(np.arange(10)[::-1], 3) * 100  # file order is newest first
    items = np.arange(30)
    p = split_interactions(users, items, ts, "temporal", test_ratio=0.2, valid_ratio=0.0)
    assert len(p.test) == 6
    for u in range(3):
        rows = p.test[users[p.test] == u]
        assert sorted(ts[rows].tolist()) == [800, 900]  # the two latest of ten
        train_rows = p.train[users[p.train] == u]
        assert ts[train_rows].max() < ts[rows].min()


def test_temporal_validation_comes_before_test():
    users = np.repeat(np.arange(2), 20)
    ts = np.tile(np.arange(20), 2)
    p = split_interactions(users, np.arange(40), ts, "temporal", test_ratio=0.2, valid_ratio=0.25)
    for u in range(2):
        tr, va, te = (ts[x[users[x] == u]] for x in (p.train, p.valid, p.test))
        assert tr.max() < va.min() and va.max() < te.min()


def test_bad_arguments():
    z = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="unknown split 'weird'"):
        split_interactions(z, z, z, "weird")
    with pytest.raises(ValueError, match="ratios must be in"):
        split_interactions(z, z, z, "random", test_ratio=1.5)
