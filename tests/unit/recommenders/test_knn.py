"""UserKNN: known-answer structures, a hand-computed rating, tuning, and the contract."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.recommenders.contract import RecommenderContract, contract_interactions
from towers.data.interactions import Interactions
from towers.evaluation.knn_selection import tune_user_knn
from towers.evaluation.protocol import evaluate_model
from towers.recommenders import neighbor_search as knn
from towers.recommenders.neighbor_search import top_neighbors
from towers.recommenders.user_knn import MODES, UserKNN, unit_rows


def from_triples(triples: list[tuple[int, int, float]], n_users: int, n_items: int) -> Interactions:
    users, items, ratings = zip(*triples, strict=True)
    n = len(triples)
    return Interactions(
        np.array(users, np.int64), np.array(items, np.int64), np.array(ratings, np.float32),
        np.arange(n, dtype=np.int64), n_users, n_items,
    )  # fmt: skip


def held_out_blocks(
    n_groups: int = 4, size: int = 8, noise: int = 0, seed: int = 0
) -> tuple[Interactions, np.ndarray]:
    """User ``j`` of group ``g`` rates every item of block ``g`` but one (item ``g * size + j``).

    Ratings depend on the item only (2..5), so centred vectors are not zero. ``noise`` random
    cross-block interactions rated 1 are added per user. Returns the data and each user's
    held-out item.
    """
    rng = np.random.default_rng(seed)
    triples, held_out = [], []
    n_users = n_items = n_groups * size
    for user in range(n_users):
        block = np.arange(size) + (user // size) * size
        held_out.append(user)
        triples += [(user, int(i), 2.0 + i % 4) for i in block if i != user]
        outside = np.setdiff1d(np.arange(n_items), block)
        triples += [(user, int(i), 1.0) for i in rng.choice(outside, noise, replace=False)]
    return from_triples(triples, n_users, n_items), np.array(held_out)


@pytest.mark.parametrize("mode", MODES)
def test_held_out_block_item_is_the_only_recommendation(mode: str) -> None:
    train, held_out = held_out_blocks()
    model = UserKNN(n_neighbors=5, mode=mode).fit(train)
    items, scores = model.recommend(np.arange(train.n_users), 3)
    np.testing.assert_array_equal(items[:, 0], held_out)
    # Other blocks share no item, so no neighbour reaches them: nothing else is scorable.
    assert (items[:, 1:] == -1).all() and np.isneginf(scores[:, 1:]).all()


@pytest.mark.parametrize("n_neighbors", [3, 7, 40])
def test_implicit_mode_ranks_held_out_item_first_despite_noise(n_neighbors: int) -> None:
    train, held_out = held_out_blocks(noise=2, seed=1)
    items, _ = (
        UserKNN(n_neighbors=n_neighbors, mode="implicit")
        .fit(train)
        .recommend(np.arange(train.n_users), 5)
    )
    np.testing.assert_array_equal(items[:, 0], held_out)


def small_ratings() -> Interactions:
    """Five users, three items; user 4 has no rating. Hand-computed values in the tests below."""
    return from_triples(
        [(0, 0, 4), (0, 1, 2),  # mean 3, centred (1, -1, .)
         (1, 0, 5), (1, 1, 1), (1, 2, 4),  # mean 10/3, centred (5/3, -7/3, 2/3)
         (2, 0, 2), (2, 1, 4), (2, 2, 5),  # mean 11/3, centred (-5/3, 1/3, 4/3)
         (3, 0, 5), (3, 2, 1)],  # mean 3, centred (2, ., -2)
        5, 3,
    )  # fmt: skip


# Cosines of centred vectors, by hand: user 0 is (1, -1, 0) with norm sqrt(2).
SIM_01 = (5 / 3 + 7 / 3) / (np.sqrt(2) * np.sqrt(25 / 9 + 49 / 9 + 4 / 9))  # 0.96077
SIM_02 = (-5 / 3 - 1 / 3) / (np.sqrt(2) * np.sqrt(25 / 9 + 1 / 9 + 16 / 9))  # negative
SIM_03 = 2 / (np.sqrt(2) * np.sqrt(8))  # 0.5


def test_explicit_prediction_matches_hand_computation() -> None:
    train = small_ratings()
    assert SIM_02 < 0
    # user 0, item 2: neighbours 1 and 3 rated it (user 2 has negative similarity).
    expected = 3 + (SIM_01 * (2 / 3) + SIM_03 * (-2)) / (SIM_01 + SIM_03)
    assert expected == pytest.approx(2.75390, abs=1e-5)
    model = UserKNN(n_neighbors=10, mode="explicit").fit(train)
    assert model.predict_ratings(np.array([0]), np.array([2]))[0] == pytest.approx(expected, 1e-5)
    assert model.score(np.array([0]))[0, 2] == pytest.approx(expected, 1e-5)
    assert 2 not in model.neighbors_[0].indices  # negative similarity never makes a neighbour

    # Only the nearest neighbour (user 1): mean + its centred rating.
    top1 = UserKNN(n_neighbors=1, mode="explicit").fit(train)
    assert top1.predict_ratings(np.array([0]), np.array([2]))[0] == pytest.approx(3 + 2 / 3, 1e-5)
    # min_sim above SIM_03 drops user 3 the same way.
    strict = UserKNN(n_neighbors=10, min_sim=0.6, mode="explicit").fit(train)
    assert strict.predict_ratings(np.array([0]), np.array([2]))[0] == pytest.approx(3 + 2 / 3, 1e-5)


def test_fallbacks_to_user_mean_and_global_mean() -> None:
    train = small_ratings()
    model = UserKNN(n_neighbors=10, min_nbrs=3, mode="explicit").fit(train)
    predicted = model.predict_ratings(np.array([0, 4, 4]), np.array([2, 0, 2]))
    global_mean = (4 + 2 + 5 + 1 + 4 + 2 + 4 + 5 + 5 + 1) / 10
    np.testing.assert_allclose(predicted, [3.0, global_mean, global_mean], rtol=1e-6)
    assert np.isneginf(model.score(np.array([0]))[0, 2])  # too few neighbours: not recommended


def test_implicit_scores_sum_similarities_and_predictions_use_them() -> None:
    train = small_ratings()
    model = UserKNN(n_neighbors=10, mode="implicit").fit(train)
    # Binary cosines of user 0 ({0, 1}): users 1 and 2 ({0, 1, 2}) 2/sqrt(6), user 3 ({0, 2}) 1/2.
    s12, s3 = 2 / np.sqrt(6), 0.5
    assert model.score(np.array([0]))[0, 2] == pytest.approx(2 * s12 + s3, 1e-5)
    expected = 3 + (s12 * (2 / 3) + s12 * (4 / 3) + s3 * (-2)) / (2 * s12 + s3)
    assert model.predict_ratings(np.array([0]), np.array([2]))[0] == pytest.approx(expected, 1e-5)


def test_predict_ratings_rejects_unknown_pairs() -> None:
    model = UserKNN().fit(small_ratings())
    with pytest.raises(KeyError):
        model.predict_ratings(np.array([0]), np.array([3]))
    with pytest.raises(KeyError):
        model.predict_ratings(np.array([5]), np.array([0]))
    with pytest.raises(ValueError, match="differ in shape"):
        model.predict_ratings(np.array([0, 1]), np.array([0]))


@pytest.mark.parametrize("kwargs", [{"mode": "item"}, {"n_neighbors": 0}, {"min_nbrs": 0}], ids=str)
def test_invalid_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UserKNN(**kwargs)


def test_top_n_ties_go_to_the_lower_index_and_nest() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 4, size=(50, 30)).astype(np.float32)  # many ties
    for n in (1, 5, 17, 30):
        cols, top = knn._top_n_sorted(values, n)
        columns = np.broadcast_to(np.arange(30), values.shape)
        reference = np.lexsort((columns, -values), axis=1)[:, :n]  # full stable sort
        np.testing.assert_array_equal(cols, reference)
        np.testing.assert_array_equal(top, np.take_along_axis(values, reference, axis=1))


def test_sparse_and_blocked_similarity_match_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = unit_rows(contract_interactions(seed=5), "explicit")
    dense = top_neighbors(rows, 6)
    monkeypatch.setattr(knn, "_DENSE_CELLS", 0)
    monkeypatch.setattr(knn, "_BLOCK_CELLS", 100)  # two users per block
    sparse = top_neighbors(rows, 6)
    np.testing.assert_array_equal(sparse[0], dense[0])
    np.testing.assert_allclose(sparse[1], dense[1], rtol=1e-5)


def test_tune_picks_the_best_grid_point_and_matches_a_fresh_fit() -> None:
    data = contract_interactions(n_users=60, n_items=45, seed=2)
    is_valid = np.random.default_rng(0).random(len(data)) < 0.25
    train, valid = data.subset(~is_valid), data.subset(is_valid)
    grid = {"n_neighbors": (2, 8, 30), "min_sim": (0.0, 0.2)}
    best, results = tune_user_knn(train, valid, grid=grid, metric="ndcg@10")
    assert len(results) == 2 * 3 * 2
    top = results.loc[results["ndcg@10"].idxmax()]
    assert best == {k: top[k] for k in ("mode", "n_neighbors", "min_sim", "min_nbrs")}
    for _, row in results.iloc[[0, 5, 11]].iterrows():  # the shared neighbours are exact
        params = {k: row[k] for k in ("mode", "n_neighbors", "min_sim", "min_nbrs")}
        fresh = evaluate_model(UserKNN(**params).fit(train), train, valid)
        assert fresh["ndcg@10"] == row["ndcg@10"] and fresh["map"] == row["map"]


def test_tune_minimises_error_metrics_and_rejects_unknown_keys() -> None:
    data = contract_interactions(seed=4)
    is_valid = np.random.default_rng(1).random(len(data)) < 0.25
    train, valid = data.subset(~is_valid), data.subset(is_valid)
    best, results = tune_user_knn(train, valid, grid={"n_neighbors": (1, 20)}, metric="rmse")
    assert best["n_neighbors"] == results.loc[results["rmse"].idxmin(), "n_neighbors"]
    params = {k: best[k] for k in ("mode", "n_neighbors", "min_sim", "min_nbrs")}
    fresh = evaluate_model(UserKNN(**params).fit(train), train, valid)
    assert fresh["rmse"] == results["rmse"].min()
    with pytest.raises(ValueError, match="unknown grid keys"):
        tune_user_knn(train, valid, grid={"k": (1,)})


class TestUserKNNExplicitContract(RecommenderContract):
    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: UserKNN(n_neighbors=10, mode="explicit").fit(train)


class TestUserKNNImplicitContract(RecommenderContract):
    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: UserKNN(n_neighbors=10, min_nbrs=2, mode="implicit").fit(train)


def test_pair_count_and_the_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    data = from_triples([(0, 0, 1.0), (1, 0, 1.0), (2, 0, 1.0), (0, 1, 1.0), (2, 2, 1.0)], 3, 3)
    rows = unit_rows(data, "implicit")
    assert knn.pair_count(rows) == 3**2 + 1 + 1  # item degrees 3, 1, 1
    assert knn.resolve_search(rows, "auto") == "exact"
    monkeypatch.setattr(knn, "EXACT_MAX_PAIRS", 10)
    assert knn.resolve_search(rows, "auto") == "projected"
    assert knn.resolve_search(rows, "exact") == "exact"
    with pytest.raises(ValueError, match="neighbour search must be one of"):
        knn.resolve_search(rows, "fast")


@pytest.mark.parametrize("mode", MODES)
def test_projected_search_with_every_user_a_candidate_is_exact(mode: str) -> None:
    """Candidates are rescored exactly: when they cover everyone, the result is the exact one."""
    rows = unit_rows(contract_interactions(n_users=60, n_items=45, seed=5), mode)
    exact = top_neighbors(rows, 6, "exact")
    projected = top_neighbors(rows, 6, "projected", rank=4, candidates=10)  # 60 >= 59 others
    np.testing.assert_array_equal(projected[0], exact[0])
    np.testing.assert_allclose(projected[1], exact[1], rtol=1e-5)
    assert knn.neighbor_recall(rows, projected[0], np.arange(60)) == 1.0


def test_projected_search_finds_most_neighbours_from_few_candidates() -> None:
    """Taste groups are low-rank: a rank-8 projection finds the group-mates (recall measured)."""
    rows = unit_rows(
        contract_interactions(n_users=200, n_items=120, n_groups=4, seed=1), "implicit"
    )
    exact = top_neighbors(rows, 10, "exact")
    projected = top_neighbors(rows, 10, "projected", rank=8, candidates=2)
    recall = knn.neighbor_recall(rows, projected[0], np.arange(0, 200, 3))
    assert 0.7 < recall <= 1.0
    assert knn.neighbor_recall(rows, exact[0], np.arange(0, 200, 3)) == 1.0
    # similarities are the exact ones of the pairs found, sorted descending, self never included
    sims = (rows @ rows.T).toarray()
    valid = projected[0] >= 0
    users = np.nonzero(valid)[0]
    np.testing.assert_allclose(projected[1][valid], sims[users, projected[0][valid]], rtol=1e-5)
    assert (np.diff(projected[1], axis=1) <= 1e-7).all()
    assert not (projected[0] == np.arange(200)[:, None]).any()


def test_search_settings_survive_save_and_load(tmp_path) -> None:
    train = contract_interactions(seed=3)
    model = UserKNN(n_neighbors=5, mode="implicit", search="projected", rank=6, candidates=3)
    model.fit(train).save(tmp_path / "knn")
    loaded = UserKNN.load(tmp_path / "knn")
    assert loaded.params == model.params
    np.testing.assert_array_equal(
        loaded.recommend(np.arange(10), 5)[0], model.recommend(np.arange(10), 5)[0]
    )
    with pytest.raises(ValueError, match="search must be one of"):
        UserKNN(search="fast")


class TestUserKNNProjectedContract(RecommenderContract):
    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: UserKNN(
            n_neighbors=10, mode="implicit", search="projected", rank=8
        ).fit(train)
