"""bench/cold_start.py: new users from a few of their items, side by side with popularity."""

from __future__ import annotations

import pytest

from bench import cold_start
from towers.model.config import TwoTowerConfig
from towers.recommenders.two_tower import TwoTowerRecommender

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_model_and_count_gets_a_row(tiny_storage, tiny_data, tmp_path, capsys):
    config = TwoTowerConfig.from_preset("default", embedding_dim=8, id_dim=8, epochs=1)
    rec = TwoTowerRecommender(config, tiny_data.features).fit(tiny_data.train)
    rec.save(tmp_path / "model")
    argv = ["--storage", tiny_storage.uri, "--split", "random", "--model", str(tmp_path / "model")]
    cold_start.main([*argv, "--liked", "1", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 * 2  # header, rule; (popularity, the model) x (1, 3)
    assert lines[2].startswith("| popularity | 1 |") and lines[3].startswith("| model (")
    table = cold_start.rows(tiny_storage, "random", [tmp_path / "model"], [3], seed=0)
    assert all(0 <= r["ndcg@10"] <= 1 and r["top10_popularity"] > 0 for r in table)
    with pytest.raises(SystemExit):
        cold_start.main([*argv, "--liked", "0"])


def test_liked_items_are_the_users_own_and_at_most_n(tiny_data):
    train = tiny_data.full_train.to_csr(binary=True)
    draws = cold_start.liked_items(train, [0, 1], 2, seed=0)
    assert all(
        set(d) <= set(train[u].indices) and len(d) <= 2 for u, d in zip([0, 1], draws, strict=True)
    )


def test_help_runs():
    with pytest.raises(SystemExit):
        cold_start.main(["--help"])
