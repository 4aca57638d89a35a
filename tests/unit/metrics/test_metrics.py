"""Metrics against hand-computed values and a slow per-user reference."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp

from tests.unit.recommenders.contract import contract_interactions
from towers.data.interactions import Interactions
from towers.evaluation import protocol
from towers.evaluation.protocol import evaluate_model
from towers.metrics.ranking import ranking_metrics
from towers.metrics.rating import rating_metrics
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.user_knn import UserKNN


def relevance(sets: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, items in enumerate(sets) for _ in items]
    cols = [i for items in sets for i in sorted(items)]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n_items))


L3, L6 = np.log2(3), np.log2(6)  # discounts of ranks 2 and 5


def test_hand_computed_ranking_metrics() -> None:
    recommended = np.array(
        [
            [1, 2, 3, 4, 5],  # hits at ranks 2 and 5 of 3 relevant
            [7, -1, -1, -1, -1],  # a short, padded list; its one relevant item first
            [0, 1, 2, 3, 4],  # no relevant item: skipped
            [3, 4, 6, 8, 0],  # 8 relevant > k: hits at ranks 1, 2, 3, 5
        ]
    )
    relevant = relevance([{2, 5, 9}, {7}, set(), {0, 1, 2, 3, 4, 5, 6, 7}], n_items=10)
    got = ranking_metrics(recommended, relevant, ks=(2, 5))
    idcg5 = 1 + 1 / L3 + 1 / 2 + 1 / np.log2(5) + 1 / L6
    expected = {
        "precision@2": (1 / 2 + 1 / 2 + 1) / 3,
        "recall@2": (1 / 3 + 1 + 2 / 8) / 3,
        "map@2": ((1 / 2) / 2 + 1 + (1 + 1) / 2) / 3,
        "ndcg@2": ((1 / L3) / (1 + 1 / L3) + 1 + 1) / 3,
        "hit_rate@2": 1.0,
        "coverage@2": len({1, 2, 7, -1, 3, 4} - {-1}) / 10,
        "precision@5": (2 / 5 + 1 / 5 + 4 / 5) / 3,
        "recall@5": (2 / 3 + 1 + 4 / 8) / 3,
        "map@5": ((1 / 2 + 2 / 5) / 3 + 1 + (1 + 1 + 1 + 4 / 5) / 5) / 3,
        "ndcg@5": (
            (1 / L3 + 1 / L6) / (1 + 1 / L3 + 1 / 2) + 1 + (1 + 1 / L3 + 1 / 2 + 1 / L6) / idcg5
        )
        / 3,
        "hit_rate@5": 1.0,
        "coverage@5": 9 / 10,  # items 0..8 (the skipped user's list does not count)
        # Recommenders' map divides by all relevant items: 3, 1 and 8.
        "map": ((1 / 2 + 2 / 5) / 3 + 1 + (1 + 1 + 1 + 4 / 5) / 8) / 3,
        "n_users": 3.0,
        "n_users_skipped": 1.0,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_cutoff_beyond_the_list_counts_missing_ranks_as_misses() -> None:
    got = ranking_metrics(np.array([[4, 2]]), relevance([{2, 9}], 10), ks=(4,))
    assert got["precision@4"] == pytest.approx(1 / 4)
    assert got["recall@4"] == pytest.approx(1 / 2)
    assert got["map@4"] == pytest.approx((1 / 2) / 2)
    assert got["ndcg@4"] == pytest.approx((1 / L3) / (1 + 1 / L3))


def test_explicit_zeros_are_not_relevant_and_int32_lists_work() -> None:
    relevant = sp.csr_matrix((np.array([0.0, 1.0]), ([0, 0], [1, 2])), shape=(1, 3))
    got = ranking_metrics(np.array([[1, 2]], np.int32), relevant, ks=(1,))
    assert got["precision@1"] == 0.0 and got["recall@1"] == 0.0


def test_all_users_skipped_gives_nan_means() -> None:
    got = ranking_metrics(np.array([[0, 1]]), relevance([set()], 3), ks=(1,))
    assert np.isnan(got["precision@1"]) and got["n_users_skipped"] == 1.0


@pytest.mark.parametrize(
    ("recommended", "message"),
    [
        (np.array([[1, 1]]), "repeat"),
        (np.array([[1, 5]]), "outside"),
        (np.array([[1, -2]]), "padding"),
        (np.array([[1, 2], [0, 1]]), "rows"),
        (np.array([1, 2]), r"\(U, K\)"),
    ],
)
def test_malformed_lists_are_rejected(recommended: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ranking_metrics(recommended, relevance([{1}], 5), ks=(1,))


def brute_force(recommended: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
    """One user at a time, in plain Python, straight from the textbook definitions."""
    per_user: dict[str, list[float]] = {m: [] for m in ("p", "r", "ap", "ndcg", "hr", "map")}
    covered: set[int] = set()
    for u in range(relevant.shape[0]):
        rel = set(relevant[u].indices.tolist())
        if not rel:
            continue
        ranked = [int(i) for i in recommended[u][:k]] + [-1] * max(0, k - recommended.shape[1])
        covered |= {i for i in ranked if i >= 0}
        hits = [1 if i in rel else 0 for i in ranked]
        precisions = [sum(hits[: j + 1]) / (j + 1) for j in range(k)]
        per_user["p"].append(sum(hits) / k)
        per_user["r"].append(sum(hits) / len(rel))
        per_user["ap"].append(
            sum(h * p for h, p in zip(hits, precisions, strict=True)) / min(len(rel), k)
        )
        dcg = sum(h / np.log2(j + 2) for j, h in enumerate(hits))
        idcg = sum(1 / np.log2(j + 2) for j in range(min(len(rel), k)))
        per_user["ndcg"].append(dcg / idcg)
        per_user["hr"].append(float(any(hits)))
        ranked10 = [int(i) for i in recommended[u][:10]]
        found, total = 0, 0.0
        for j, item in enumerate(ranked10):
            if item in rel:
                found += 1
                total += found / (j + 1)
        per_user["map"].append(total / len(rel))
    means = {m: float(np.mean(v)) for m, v in per_user.items()}
    means["coverage"] = len(covered) / relevant.shape[1]
    return means


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 60, 40, 12
    recommended = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    lengths = rng.integers(0, width + 1, n_users)  # padded tails of random length
    recommended[np.arange(width) >= lengths[:, None]] = -1
    dense = rng.random((n_users, n_items)) < rng.uniform(0.0, 0.3, (n_users, 1))
    relevant = sp.csr_matrix(dense.astype(np.float32))
    ks = (1, 3, 10, 15)
    got = ranking_metrics(recommended, relevant, ks=ks)
    for k in ks:
        ref = brute_force(recommended, relevant, k)
        names = ("precision", "p"), ("recall", "r"), ("map", "ap"), ("ndcg", "ndcg")
        for name, short in (*names, ("hit_rate", "hr"), ("coverage", "coverage")):
            assert got[f"{name}@{k}"] == pytest.approx(ref[short], abs=1e-12), (name, k)
        assert got["map"] == pytest.approx(ref["map"], abs=1e-12)
    assert got["n_users"] + got["n_users_skipped"] == n_users


def test_all_users_at_ml100k_scale_take_well_under_a_second() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 943, 1682
    recommended = np.stack([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    relevant = sp.random(n_users, n_items, density=25_000 / (n_users * n_items), rng=rng).tocsr()
    started = time.perf_counter()
    ranking_metrics(recommended, relevant, ks=(5, 10, 20))
    assert time.perf_counter() - started < 0.5


def test_rating_metrics_hand_computed() -> None:
    got = rating_metrics(np.array([1, 2, 3, 4]), np.array([1, 3, 3, 2]))
    # residuals 0, -1, 0, 2: SSE 5; SST around 2.5 is 2.25 + .25 + .25 + 2.25 = 5
    assert got == pytest.approx({"mse": 1.25, "rmse": np.sqrt(1.25), "mae": 0.75, "r2": 0.0})
    assert np.isnan(rating_metrics(np.array([3.0, 3.0]), np.array([3.0, 2.0]))["r2"])


@pytest.mark.parametrize(
    ("y_true", "y_pred"), [([1.0], [1.0, 2.0]), ([], []), ([1.0, 2.0], [np.nan, 1.0])]
)
def test_rating_metrics_reject_bad_input(y_true: list, y_pred: list) -> None:
    with pytest.raises(ValueError):
        rating_metrics(np.array(y_true), np.array(y_pred))


def triples(rows: list[tuple[int, int, float]], n_users: int, n_items: int) -> Interactions:
    users, items, ratings = (np.array(c) for c in zip(*rows, strict=True))
    return Interactions(
        users.astype(np.int64), items.astype(np.int64), ratings.astype(np.float32),
        np.zeros(len(rows), np.int64), n_users, n_items,
    )  # fmt: skip


def test_evaluate_popularity_by_hand_with_tied_scores() -> None:
    # counts: item 0 → 2, items 1 and 2 → 1 (a tie, broken by the lower index), items 3, 4 → 0
    train = triples([(0, 0, 4), (1, 0, 3), (1, 1, 5), (2, 2, 1)], 4, 5)
    test = triples([(0, 2, 4), (1, 4, 2), (2, 1, 5)], 4, 5)
    got = evaluate_model(PopularityRecommender().fit(train), train, test, ks=(1, 2))
    # user 0 gets [1, 2]: hit at rank 2; user 1 gets [2, 3]: miss; user 2 gets [0, 1]: rank 2.
    assert got["precision@1"] == 0.0
    assert got["precision@2"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert got["map@2"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    assert got["coverage@2"] == pytest.approx(4 / 5)
    assert got["n_users"] == 3.0 and got["n_users_skipped"] == 1.0  # user 3 has no test item
    assert "rmse" not in got


def test_evaluate_excludes_train_items_the_model_did_not_see() -> None:
    train = triples([(0, 0, 4), (1, 0, 3), (1, 1, 5), (2, 2, 1), (0, 1, 2), (2, 1, 4)], 3, 4)
    test = triples([(0, 2, 4), (1, 3, 2), (2, 3, 5)], 3, 4)
    partial = train.subset(np.arange(len(train)) < 4)  # the model never saw (0, 1) and (2, 1)
    model = PopularityRecommender().fit(partial)
    # counts 2, 1, 1, 0: user 0 gets [2] (its train item 1 is dropped): a hit; user 1 gets [2]
    # and user 2 gets [0]: misses. Judged against the model's own training data, user 0's list
    # would start with its train item 1 and miss.
    assert evaluate_model(model, train, test, ks=(1,))["precision@1"] == pytest.approx(1 / 3)
    assert evaluate_model(model, partial, test, ks=(1,))["precision@1"] == 0.0


def test_evaluate_reports_rating_metrics_for_rating_models() -> None:
    train = triples([(0, 0, 4), (0, 1, 2), (1, 0, 5), (1, 1, 1), (1, 2, 4)], 2, 3)
    test = triples([(0, 2, 3)], 2, 3)
    got = evaluate_model(UserKNN(mode="explicit").fit(train), train, test, ks=(1,))
    # user 0 (mean 3) has one neighbour (user 1, centred rating 4 - 10/3 on item 2)
    assert got["rmse"] == pytest.approx(abs(3 - (3 + 2 / 3)), rel=1e-5)


def test_evaluate_rejects_mismatched_vocabularies() -> None:
    train = triples([(0, 0, 4)], 2, 3)
    with pytest.raises(ValueError, match="vocabularies"):
        evaluate_model(PopularityRecommender().fit(train), train, triples([(0, 1, 4)], 2, 4))


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_blocked_evaluation_equals_one_block(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = contract_interactions(n_users=60, n_items=45, seed=7)
    held_out = np.random.default_rng(2).random(len(data)) < 0.25
    train, test = data.subset(~held_out), data.subset(held_out)
    model = UserKNN(n_neighbors=8, mode=mode).fit(train)
    whole = evaluate_model(model, train, test, block_cells=60 * 45)  # every user in one call
    calls: dict[str, list[int]] = {"recommend": [], "predict_ratings": []}
    for name, calls_of in calls.items():
        method = getattr(model, name)

        def counted(users, *args, _method=method, _calls=calls_of, **kwargs):
            _calls.append(len(np.unique(users)))
            return _method(users, *args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    monkeypatch.setattr(protocol, "RATING_BLOCK_PAIRS", 7)
    blocked = evaluate_model(model, train, test, block_cells=2 * 45 + 1)  # two users a call
    assert max(calls["recommend"]) == 2
    assert len(calls["recommend"]) == -(-int(whole["n_users"]) // 2)
    assert len(calls["predict_ratings"]) > 5  # the test pairs went in blocks of whole users
    assert sum(calls["predict_ratings"]) == len(np.unique(test.user_idx))
    assert blocked == whole and "rmse" in blocked
