"""Contract tests that every ``towers.recommenders.base.Recommender`` must pass.

How to use it for a new recommender::

    import pytest
    from tests.unit.recommenders.contract import RecommenderContract

    class TestMyModelContract(RecommenderContract):
        @pytest.fixture(scope="class")
        def make_model(self):
            # Returns a factory: training Interactions -> a *fitted* recommender.
            return lambda train: MyModel(dim=8, seed=0).fit(train)

That is all: the class inherits every ``test_*`` method below and runs them against
``make_model(contract_train)``. Notes:

* ``make_model`` must be class- (or module-/session-) scoped, because the fitted model is shared by
  all tests of the class (a two-tower model trains once, not once per test).
* ``contract_train`` is :func:`contract_interactions` (48 users in three taste groups, 36 items,
  varied ratings, the last user without any training interaction). Override the fixture (also
  class-scoped) to use other data.
* Class attributes to override: ``k`` (list length) and ``score_atol`` (how far a single-user
  call's scores may drift from the batch call's; float models on other batch shapes may differ in
  the last bits, and then tied items may swap places: the test accepts a swap of equally scored
  items only).

The checks: shapes and dtypes of ``recommend``; a scalar user is a batch of one; ``k`` larger
than the catalogue; batch == single-user calls; scores sorted descending with ``-1``/``-inf``
padding only at the tail; seen-item filtering (none returned with ``exclude_seen=True``, some can
be returned with ``False``, and filtering removes nothing else); unknown users raise ``KeyError``;
an empty user list gives ``(0, k)`` arrays; ``recommend`` agrees with ``score``; save/load round
trip gives identical recommendations (and rating predictions where the model has them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from towers.data.interactions import Interactions
from towers.metrics.ranking import hit_matrix
from towers.recommenders.base import Recommender


def contract_interactions(
    n_users: int = 48, n_items: int = 36, n_groups: int = 3, seed: int = 0
) -> Interactions:
    """Seeded taste-group data: user ``u`` and item ``i`` share a group when ``u % G == i % G``.

    Each user rates about 60% of its group's items 3–5 (the rating depends on the item, so centred
    rating vectors are not zero) and two other items 1–2. The last user has no interaction (a user
    in the vocabulary but not in training).
    """
    rng = np.random.default_rng(seed)
    item_quality = rng.integers(3, 6, n_items)
    users, items, ratings = [], [], []
    for user in range(n_users - 1):
        own = np.flatnonzero(np.arange(n_items) % n_groups == user % n_groups)
        other = np.flatnonzero(np.arange(n_items) % n_groups != user % n_groups)
        liked = rng.choice(own, int(0.6 * len(own)), replace=False)
        disliked = rng.choice(other, 2, replace=False)
        users += [user] * (len(liked) + len(disliked))
        items += [*liked, *disliked]
        noise = rng.integers(-1, 1, len(liked))
        ratings += [*np.clip(item_quality[liked] + noise, 1, 5), *rng.integers(1, 3, 2)]
    n = len(users)
    return Interactions(
        user_idx=np.asarray(users, np.int64),
        item_idx=np.asarray(items, np.int64),
        rating=np.asarray(ratings, np.float32),
        timestamp=np.arange(n, dtype=np.int64),
        n_users=n_users,
        n_items=n_items,
    )


class RecommenderContract:
    """Mixin of contract tests; subclasses provide a class-scoped ``make_model`` fixture."""

    k: int = 5
    score_atol: float = 1e-6

    @pytest.fixture(scope="class")
    def contract_train(self) -> Interactions:
        return contract_interactions()

    @pytest.fixture(scope="class")
    def model(
        self, make_model: Callable[[Interactions], Recommender], contract_train: Interactions
    ) -> Recommender:
        return make_model(contract_train)

    @staticmethod
    def all_users(model: Recommender) -> np.ndarray:
        return np.arange(model.n_users, dtype=np.int64)

    def test_name_is_a_short_identifier(self, model: Recommender) -> None:
        assert isinstance(model.name, str) and model.name.isidentifier()
        assert model.name != Recommender.name

    def test_recommend_shapes_and_dtypes(self, model: Recommender) -> None:
        users = np.array([0, 3, 3, model.n_users - 1])  # a repeated user gets the same row twice
        items, scores = model.recommend(users, self.k)
        assert items.shape == scores.shape == (4, self.k)
        assert items.dtype == np.int64 and scores.dtype == np.float32
        assert np.all((items >= -1) & (items < model.n_items))
        np.testing.assert_array_equal(items[1], items[2])

    def test_scalar_user_is_a_batch_of_one(self, model: Recommender) -> None:
        items, scores = model.recommend(2, self.k)
        batch_items, batch_scores = model.recommend(np.array([2]), self.k)
        assert items.shape == (1, self.k)
        np.testing.assert_array_equal(items, batch_items)
        np.testing.assert_array_equal(scores, batch_scores)

    def test_k_larger_than_catalogue_returns_every_item_once(self, model: Recommender) -> None:
        items, _ = model.recommend(self.all_users(model), model.n_items + 7, exclude_seen=False)
        assert items.shape == (model.n_users, model.n_items)
        for row in items:
            returned = row[row >= 0]
            assert len(np.unique(returned)) == len(returned)

    def test_batch_matches_single_user_calls(self, model: Recommender) -> None:
        users = self.all_users(model)
        items, scores = model.recommend(users, self.k)
        for row, user in enumerate(users):
            one_items, one_scores = model.recommend(np.array([user]), self.k)
            np.testing.assert_allclose(one_scores[0], scores[row], rtol=0, atol=self.score_atol)
            swapped = one_items[0] != items[row]
            if swapped.any():  # only equally scored items may trade places
                full = model.score(np.array([user]))[0]
                for slot_items in (items[row][swapped], one_items[0][swapped]):
                    np.testing.assert_allclose(
                        full[slot_items], scores[row][swapped], rtol=0, atol=self.score_atol
                    )

    def test_scores_sorted_descending_with_padding_at_tail(self, model: Recommender) -> None:
        items, scores = model.recommend(self.all_users(model), model.n_items, exclude_seen=True)
        assert not np.isnan(scores).any()
        finite_floor = np.where(np.isneginf(scores), np.finfo(np.float64).min, scores)
        assert np.all(np.diff(finite_floor.astype(np.float64), axis=1) <= 0)
        padded = items == -1
        np.testing.assert_array_equal(padded, np.isneginf(scores))
        assert np.all(np.diff(padded.astype(np.int8), axis=1) >= 0), "padding must be a tail"

    def test_exclude_seen_never_returns_training_items(self, model: Recommender) -> None:
        users = self.all_users(model)
        items, _ = model.recommend(users, model.n_items, exclude_seen=True)
        hits, _ = hit_matrix(items, model.seen_matrix()[users])
        assert not hits.any()

    def test_exclude_seen_false_can_return_training_items(self, model: Recommender) -> None:
        users = self.all_users(model)
        items, _ = model.recommend(users, model.n_items, exclude_seen=False)
        hits, _ = hit_matrix(items, model.seen_matrix()[users])
        assert hits.any()

    def test_exclude_seen_removes_only_seen_items(self, model: Recommender) -> None:
        users = self.all_users(model)
        seen = model.seen_matrix()
        every, _ = model.recommend(users, model.n_items, exclude_seen=False)
        unseen, _ = model.recommend(users, model.n_items, exclude_seen=True)
        for row, user in enumerate(users):
            user_seen = set(seen[user].indices.tolist())
            expected = [i for i in every[row] if i >= 0 and i not in user_seen]
            assert unseen[row][unseen[row] >= 0].tolist() == expected

    def test_recommend_agrees_with_score(self, model: Recommender) -> None:
        users = self.all_users(model)[:10]
        full = model.score(users)
        assert full.shape == (len(users), model.n_items) and full.dtype == np.float32
        items, scores = model.recommend(users, self.k, exclude_seen=False)
        found = items >= 0
        rows = np.broadcast_to(np.arange(len(users))[:, None], items.shape)
        np.testing.assert_allclose(scores[found], full[rows[found], items[found]], rtol=1e-6)

    @pytest.mark.parametrize("bad", ["too_large", "negative", "mixed"])
    def test_unknown_user_raises_key_error(self, model: Recommender, bad: str) -> None:
        users = {"too_large": [model.n_users], "negative": [-1], "mixed": [0, model.n_users + 5]}
        with pytest.raises(KeyError):
            model.recommend(np.array(users[bad]), self.k)

    def test_empty_user_list_gives_empty_arrays(self, model: Recommender) -> None:
        for empty in (np.array([], dtype=np.int64), []):
            items, scores = model.recommend(empty, self.k)
            assert items.shape == scores.shape == (0, self.k)
            assert items.dtype == np.int64 and scores.dtype == np.float32

    def test_non_positive_k_raises(self, model: Recommender) -> None:
        with pytest.raises(ValueError):
            model.recommend(np.array([0]), 0)

    def test_save_load_round_trip(self, model: Recommender, tmp_path: Path) -> None:
        model.save(tmp_path / "model")
        loaded = type(model).load(tmp_path / "model")
        assert (loaded.name, loaded.n_users, loaded.n_items) == (
            model.name,
            model.n_users,
            model.n_items,
        )
        users = self.all_users(model)
        for exclude_seen in (True, False):
            expected = model.recommend(users, self.k, exclude_seen=exclude_seen)
            actual = loaded.recommend(users, self.k, exclude_seen=exclude_seen)
            np.testing.assert_array_equal(actual[0], expected[0])
            np.testing.assert_array_equal(actual[1], expected[1])
        if model.predicts_ratings:
            pairs = model.seen_matrix().tocoo()
            np.testing.assert_array_equal(
                loaded.predict_ratings(pairs.row, pairs.col),
                model.predict_ratings(pairs.row, pairs.col),
            )

    def test_predict_ratings_shape_where_supported(self, model: Recommender) -> None:
        if not model.predicts_ratings:
            with pytest.raises(NotImplementedError):
                model.predict_ratings(np.array([0]), np.array([0]))
            return
        users = np.array([0, 1, model.n_users - 1])
        predicted = model.predict_ratings(users, np.array([0, 1, 2]))
        assert predicted.shape == (3,) and np.all(np.isfinite(predicted))
