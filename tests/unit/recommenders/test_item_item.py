"""EASE and ItemKNN: closed forms and known answers, the λ / neighbour search, and the contract."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.recommenders.contract import RecommenderContract, contract_interactions
from tests.unit.recommenders.test_knn import from_triples, held_out_blocks
from towers.data.interactions import Interactions
from towers.evaluation.item_item_selection import (
    climb,
    l2_ladder,
    resolve_model,
    select_item_item,
    tune_ease,
    tune_item_knn,
)
from towers.evaluation.protocol import evaluate_model
from towers.recommenders import item_item
from towers.recommenders.item_item import EASE, ItemKNN, binary_matrix, item_neighbors


def closed_form_ease(train: Interactions, l2: float) -> np.ndarray:
    """Steck's formula in float64 with a plain inverse: ``I - P diag(1/diag(P))``."""
    x = binary_matrix(train).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(train.n_items))
    return np.eye(train.n_items) - p / np.diag(p)[None, :]


def split(data: Interactions, seed: int = 0) -> tuple[Interactions, Interactions]:
    is_valid = np.random.default_rng(seed).random(len(data)) < 0.25
    return data.subset(~is_valid), data.subset(is_valid)


@pytest.mark.parametrize("l2", [0.5, 10.0, 300.0])
def test_ease_matches_the_closed_form(l2: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(item_item, "BLOCK_CELLS", 100)  # several Gram and mirror blocks
    train = contract_interactions(seed=1)
    model = EASE(l2).fit(train)
    expected = closed_form_ease(train, l2)
    np.testing.assert_allclose(model.weights_, expected, atol=2e-6)
    assert np.all(np.diag(model.weights_) == 0)
    users = np.arange(5)
    history = binary_matrix(train).toarray()[users]
    np.testing.assert_allclose(model.score(users), history @ expected, atol=1e-5)


def test_ease_by_hand_on_two_items() -> None:
    """Both items seen by the same 3 users: G = [[3, 3], [3, 3]], so with λ = 1
    P = [[4, -3], [-3, 4]] / 7 and B = [[0, 3/4], [3/4, 0]]."""
    train = from_triples([(u, i, 1.0) for u in range(3) for i in range(2)], 4, 2)
    np.testing.assert_allclose(EASE(1.0).fit(train).weights_, [[0, 0.75], [0.75, 0]], atol=1e-6)


def test_ease_does_not_overwrite_a_shared_gram() -> None:
    train = contract_interactions(seed=2)
    gram = item_item.gram_matrix(binary_matrix(train))
    before = gram.copy()
    EASE(5.0).fit_from_gram(train, gram)
    np.testing.assert_array_equal(gram, before)


@pytest.mark.parametrize("make", [lambda: EASE(1.0), lambda: ItemKNN(8)], ids=["ease", "knn"])
def test_held_out_block_item_is_recommended_first(make) -> None:
    """User j of block g has every item of g but one: that item is the only sensible answer.

    ItemKNN keeps all 7 block-mates: they tie, and ties go to the lower index, so with fewer the
    block's last items would be nobody's neighbour."""
    train, held_out = held_out_blocks(noise=0)
    items, scores = make().fit(train).recommend(np.arange(train.n_users), 3)
    np.testing.assert_array_equal(items[:, 0], held_out)
    assert np.all(scores[:, 0] > 0)


def test_item_knn_ranks_other_blocks_unreachable() -> None:
    train, _ = held_out_blocks()
    items, scores = ItemKNN(20).fit(train).recommend(np.arange(train.n_users), 3)
    assert (items[:, 1:] == -1).all() and np.isneginf(scores[:, 1:]).all()


@pytest.mark.parametrize("shrink", [0.0, 3.0])
def test_item_neighbors_match_a_dense_computation(shrink: float) -> None:
    x = binary_matrix(contract_interactions(n_users=60, n_items=45, seed=5))
    dense = x.toarray().astype(np.float64)
    counts = dense.T @ dense
    norms = np.sqrt(np.diag(counts))
    sims = counts / (norms[:, None] * norms[None, :] + shrink)
    np.fill_diagonal(sims, -np.inf)
    neighbors, values = item_neighbors(x, 7, shrink, block_cells=90)  # two items per block
    columns = np.broadcast_to(np.arange(45), sims.shape)
    reference = np.lexsort((columns, -sims), axis=1)[:, :7]  # ties to the lower index
    np.testing.assert_array_equal(neighbors, reference)
    np.testing.assert_allclose(values, np.take_along_axis(sims, reference, 1), rtol=1e-5)


def test_item_knn_similarity_and_score_by_hand() -> None:
    """Item 0: users {0, 1, 2}; item 1: {0, 1}; item 2: {2}. cos(0, 1) = 2 / sqrt(6),
    cos(0, 2) = 1 / sqrt(3), items 1 and 2 share no user."""
    train = from_triples([(0, 0, 1), (1, 0, 1), (2, 0, 1), (0, 1, 1), (1, 1, 1), (2, 2, 1)], 4, 3)
    neighbors, sims = item_neighbors(binary_matrix(train), 2, shrink=1.0)
    np.testing.assert_array_equal(neighbors, [[1, 2], [0, -1], [0, -1]])
    np.testing.assert_allclose(sims[0], [2 / (np.sqrt(6) + 1), 1 / (np.sqrt(3) + 1)], rtol=1e-6)
    # user 2 has items 0 and 2: item 1 is reached from item 0 only (item 2 is not its neighbour)
    scores = ItemKNN(2, shrink=1.0).fit(train).score(np.array([2, 3]))
    assert scores[0, 1] == pytest.approx(2 / (np.sqrt(6) + 1), rel=1e-6)
    assert np.isneginf(scores[1]).all()  # user 3 has no history


def test_fewer_neighbours_are_a_prefix_of_more() -> None:
    train = contract_interactions(seed=3)
    neighbors, sims = item_neighbors(binary_matrix(train), 12, shrink=2.0)
    sliced = ItemKNN(4, 2.0).fit_from_neighbors(train, neighbors, sims)
    fresh = ItemKNN(4, 2.0).fit(train)
    assert (sliced.weights_ != fresh.weights_).nnz == 0


@pytest.mark.parametrize("kwargs", [{"n_neighbors": 0}, {"shrink": -1.0}], ids=str)
def test_invalid_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ItemKNN(**kwargs)
    with pytest.raises(ValueError, match="l2 > 0"):
        EASE(0.0)


def test_ease_lambda_selection_picks_the_validation_best() -> None:
    train, valid = split(contract_interactions(n_users=60, n_items=45, seed=2))
    grid = (0.3, 3.0, 30.0, 300.0, 3000.0)
    best, results = tune_ease(train, valid, l2_grid=grid, exhaustive=True)
    assert results["l2"].tolist() == list(grid)
    assert best["l2"] == results.loc[results["ndcg@10"].idxmax(), "l2"]
    fresh = evaluate_model(EASE(best["l2"]).fit(train), train, valid, with_ratings=False)
    assert fresh["ndcg@10"] == pytest.approx(results["ndcg@10"].max(), abs=1e-6)
    climbed, rows = tune_ease(train, valid, l2_grid=grid)  # a subset, its own best
    assert set(rows["l2"]) <= set(grid)
    assert climbed["l2"] == rows.loc[rows["ndcg@10"].idxmax(), "l2"]


def test_climb_finds_the_peak_of_a_unimodal_curve_with_few_points() -> None:
    curve = -((np.arange(20) - 13.0) ** 2)
    for start in (0, 5, 13, 19):
        seen = climb(20, start, lambda p: float(curve[p]), max_points=20)
        assert max(seen, key=seen.get) == 13
        assert len(seen) <= abs(start - 13) + 3
    seen = climb(20, 5, lambda p: float(curve[p]), max_points=3)
    assert len(seen) == 3 and max(seen, key=seen.get) == 7


def test_l2_ladder_is_1_2_5_within_its_range() -> None:
    assert l2_ladder(10.0) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
                               10000]  # fmt: skip


def test_item_knn_selection_picks_the_validation_best_and_is_exact() -> None:
    train, valid = split(contract_interactions(n_users=60, n_items=45, seed=4), seed=1)
    grid = {"n_neighbors": (2, 8, 30), "shrink": (0.0, 5.0)}
    best, results = tune_item_knn(train, valid, grid=grid)
    assert len(results) == 6
    top = results.loc[results["ndcg@10"].idxmax()]
    assert best == {"n_neighbors": top["n_neighbors"], "shrink": top["shrink"]}
    for _, row in results.iloc[[0, 4]].iterrows():  # sliced neighbours equal a fresh fit
        fresh = evaluate_model(ItemKNN(int(row["n_neighbors"]), row["shrink"]).fit(train), train,
                               valid, with_ratings=False)  # fmt: skip
        assert fresh["ndcg@10"] == row["ndcg@10"]
    with pytest.raises(ValueError, match="unknown grid keys"):
        tune_item_knn(train, valid, grid={"k": (1,)})
    with pytest.raises(ValueError, match="ranking metric"):
        tune_item_knn(train, valid, grid=grid, metric="rmse")


def test_auto_takes_ease_up_to_the_item_limit() -> None:
    assert resolve_model("auto", 20_000) == "ease"
    assert resolve_model("auto", 20_001) == "item_knn"
    assert resolve_model("auto", 50, ease_max_items=10) == "item_knn"
    assert resolve_model("ease", 10**6) == "ease"
    with pytest.raises(ValueError):
        resolve_model("svd", 10)  # type: ignore[arg-type]
    train, valid = split(contract_interactions(seed=6))
    choice = select_item_item(train, valid, ease_max_items=10)
    assert choice.model == "item_knn" and choice.label.startswith("ItemKNN, ")
    assert isinstance(choice.build(), ItemKNN)
    choice = select_item_item(train, valid)
    assert choice.model == "ease" and choice.label == f"EASE, λ={choice.params['l2']:g}"
    summary = choice.summary()
    assert summary["valid"] == max(row["ndcg@10"] for row in summary["grid"])


class TestEASEContract(RecommenderContract):
    score_atol = 1e-5

    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: EASE(l2=20.0).fit(train)


class TestItemKNNContract(RecommenderContract):
    @pytest.fixture(scope="class")
    def make_model(self):
        return lambda train: ItemKNN(n_neighbors=8, shrink=2.0).fit(train)
