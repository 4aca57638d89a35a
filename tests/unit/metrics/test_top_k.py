"""``top_k_excluding`` against a brute-force stable sort of every row: ties (also across the
k-th place), exclusions, ``-inf`` and NaN scores, rows with fewer allowed items than k; both
ways of selecting (numpy for small blocks, torch.topk for large ones) give the same lists."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from towers.metrics import top_k
from towers.metrics.top_k import top_k_excluding


@pytest.fixture(autouse=True, params=["numpy", "torch"])
def way(request, monkeypatch) -> str:
    """Every test once with numpy's selection, once with torch.topk's (blocks of any size)."""
    monkeypatch.setattr(top_k, "TORCH_FROM_CELLS", 0 if request.param == "torch" else 2**62)
    return request.param


def brute_force(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None):
    """Every row fully sorted by (score descending, item ascending), excluded and NaN scores
    as -inf, the first k kept, items of -inf scores as -1."""
    scores = np.where(np.isnan(scores), -np.inf, scores).astype(np.float32)
    if exclude is not None:
        scores[exclude.toarray() != 0] = -np.inf
    n_items = scores.shape[1]
    order = [np.lexsort((np.arange(n_items), -row))[:k] for row in scores]
    items = np.array(order, dtype=np.int64).reshape(len(scores), min(k, n_items))
    top = np.take_along_axis(scores, items, axis=1)
    items[~np.isfinite(top)] = -1
    return items, top


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 5, 10, 40])
def test_equals_a_stable_full_sort(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_rows, n_items = 30, 37
    # Few distinct values: most rows tie across the k-th place (popularity-like scores).
    levels = rng.integers(2, 8)
    scores = rng.integers(0, levels, (n_rows, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[3] = 1.0  # one row all tied
    mask = rng.random((n_rows, n_items)) < 0.3
    mask[4] = True  # one row with nothing allowed
    exclude = sp.csr_matrix(mask.astype(np.float32))
    want = brute_force(scores.copy(), k, exclude)
    got = top_k_excluding(scores.copy(), k, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert (got[0][4] == -1).all() and np.isneginf(got[1][4]).all()


def test_continuous_scores_without_exclusions() -> None:
    scores = np.random.default_rng(0).normal(size=(50, 400)).astype(np.float32)
    items, top = top_k_excluding(scores.copy(), 10)
    want_items, want_top = brute_force(scores, 10, None)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(top, want_top)
    assert items.dtype == np.int64 and top.dtype == np.float32


def test_shapes_at_the_edges() -> None:
    items, top = top_k_excluding(np.zeros((3, 0), np.float32), 5)
    assert items.shape == top.shape == (3, 0)
    items, top = top_k_excluding(np.zeros((0, 7), np.float32), 5)
    assert items.shape == top.shape == (0, 5)
    # Read-only and non-contiguous input is ranked from a copy.
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base[:, ::-1]
    view.flags.writeable = False
    items, _ = top_k_excluding(view, 2)
    np.testing.assert_array_equal(items, [[0, 1]] * 3)
    with pytest.raises(ValueError, match="k must be positive"):
        top_k_excluding(base, 0)
    with pytest.raises(ValueError, match="exclude shape"):
        top_k_excluding(base.copy(), 2, sp.csr_matrix(np.ones((2, 4))))
