"""PopularityRecommender and the baseline directory format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.unit.recommenders.contract import RecommenderContract
from towers.data.interactions import Interactions
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.formats import read_model_dir, write_model_dir


def interactions(pairs: list[tuple[int, int]], n_users: int, n_items: int) -> Interactions:
    users, items = (np.array(column, np.int64) for column in zip(*pairs, strict=True))
    n = len(pairs)
    return Interactions(
        users, items, np.full(n, 4.0, np.float32), np.arange(n), n_users, n_items
    )  # fmt: skip


class TestPopularityContract(RecommenderContract):
    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: PopularityRecommender().fit(train)


def test_items_are_ranked_by_training_count_with_ties_to_the_lower_index() -> None:
    # item counts: 0 → 1, 1 → 3, 2 → 2, 3 → 2, 4 → 0
    train = interactions([(0, 1), (1, 1), (2, 1), (1, 2), (2, 2), (0, 3), (2, 3), (1, 0)], 4, 5)
    model = PopularityRecommender().fit(train)
    np.testing.assert_array_equal(model.item_counts_, [1, 3, 2, 2, 0])
    items, scores = model.recommend(np.array([3]), 5)  # user 3 has seen nothing
    np.testing.assert_array_equal(items, [[1, 2, 3, 0, 4]])
    np.testing.assert_array_equal(scores, [[3, 2, 2, 1, 0]])


def test_seen_items_are_skipped_and_the_list_moves_up() -> None:
    train = interactions([(0, 1), (1, 1), (2, 1), (1, 2), (2, 2), (0, 3), (2, 3), (1, 0)], 4, 5)
    model = PopularityRecommender().fit(train)
    items, _ = model.recommend(np.array([0, 2]), 3)
    np.testing.assert_array_equal(items, [[2, 0, 4], [0, 4, -1]])


def test_the_same_list_for_every_user_without_filtering() -> None:
    train = interactions([(0, 0), (1, 0), (1, 1), (2, 2)], 3, 3)
    items, _ = PopularityRecommender().fit(train).recommend(np.arange(3), 3, exclude_seen=False)
    assert (items == items[0]).all()


def test_unfitted_model_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        PopularityRecommender().recommend(np.array([0]), 1)


def test_load_rejects_a_missing_or_incomplete_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        PopularityRecommender.load(tmp_path / "nothing")
    write_model_dir(tmp_path / "m", "popularity", {"n_users": 1, "n_items": 1}, {})
    (tmp_path / "m" / "arrays.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"arrays\.npz"):
        read_model_dir(tmp_path / "m", "popularity")


def test_load_rejects_another_models_directory(tmp_path: Path) -> None:
    train = interactions([(0, 0), (1, 0), (1, 1)], 2, 2)
    PopularityRecommender().fit(train).save(tmp_path / "pop")
    with pytest.raises(ValueError, match="'popularity', expected 'user_knn'"):
        UserKNN.load(tmp_path / "pop")


def test_saved_directory_is_json_and_npz_only(tmp_path: Path) -> None:
    train = interactions([(0, 0), (1, 0), (1, 1)], 2, 2)
    PopularityRecommender().fit(train).save(tmp_path / "pop")
    assert sorted(p.name for p in (tmp_path / "pop").iterdir()) == ["arrays.npz", "config.json"]
    config = json.loads((tmp_path / "pop" / "config.json").read_text())
    assert config == {"format_version": 1, "n_items": 2, "n_users": 2, "name": "popularity"}
