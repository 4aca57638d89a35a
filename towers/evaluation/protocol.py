"""The evaluation protocol: every model ranked on the same candidates of the same test split.

:func:`evaluate_model` asks a fitted :class:`~towers.recommenders.base.Recommender` for the top
``max(ks)`` of every test user with seen items excluded, scores the lists with
``towers.metrics.ranking`` and, where the model predicts ratings, the test pairs with
``towers.metrics.rating``. :func:`compare_models` does it for every model of a report.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from towers.data.interactions import Interactions
from towers.data.prepared import PreparedData
from towers.metrics.ranking import hit_matrix, ranking_metrics
from towers.metrics.rating import rating_metrics
from towers.metrics.top_k import BLOCK_CELLS, users_per_block
from towers.progress import progress
from towers.recommenders.base import Recommender

log = logging.getLogger(__name__)
# Test pairs per predict_ratings call (whole users per call; the largest user may exceed it):
# the two-tower rating head's activations are ~2 KB a pair (1M pairs: 3.0 GiB peak at 5M data,
# 2**18: 1.6 GiB).
RATING_BLOCK_PAIRS = 2**18


def blocked_rating_predictions(
    model: Recommender, test: Interactions, block_pairs: int = RATING_BLOCK_PAIRS
) -> np.ndarray:
    """``(N,)`` ``model.predict_ratings`` of every test pair, ``block_pairs`` pairs per call.

    Pairs are grouped by user so that a user's pairs share one call (UserKNN's work is per user).
    """
    order = np.argsort(test.user_idx, kind="stable")
    users = test.user_idx[order]
    # Block edges on user boundaries: the first pair of a user at or after each multiple.
    edges = np.searchsorted(users, users[np.arange(0, len(users), block_pairs)], side="left")
    edges = np.unique(np.concatenate([edges, [len(users)]]))
    out = np.empty(len(users), np.float32)
    spans = list(itertools.pairwise(edges))
    for lo, hi in progress(spans, f"ratings {model.name}"):
        pairs = order[lo:hi]
        out[pairs] = model.predict_ratings(test.user_idx[pairs], test.item_idx[pairs])
    return out


def _drop_masked(items: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Removes ``mask``ed entries of each row, shifting the rest left and padding with ``-1``."""
    order = np.argsort(mask, axis=1, kind="stable")  # unmasked first, rank order kept
    return np.take_along_axis(np.where(mask, -1, items), order, axis=1)


def evaluate_model(
    model: Recommender,
    train: Interactions,
    test: Interactions,
    ks: Sequence[int] = (5, 10, 20),
    block_cells: int = BLOCK_CELLS,
    with_ratings: bool = True,
) -> dict[str, float]:
    """Ranking metrics (and rating metrics where the model predicts ratings) on ``test``.

    Every user with a test item gets ``max(ks)`` recommendations from
    ``model.recommend(exclude_seen=True)``, which excludes the model's own training items; items
    of ``train`` that the model did not see (a model fitted on a subset) are excluded as well. So
    the candidates are the items in neither ``train`` nor the model's training data (a model
    refitted on train + valid is evaluated on test without recommending valid items).

    Args:
        model: a fitted recommender over the same vocabularies.
        train: the interactions whose items must not be recommended.
        test: held-out interactions; each one is relevant.
        ks: cut-offs.
        block_cells: users × items scored per ``recommend`` call: memory is bounded by this, not
            by ``n_users × n_items`` (the metrics do not depend on it).
        with_ratings: also compute rating metrics (when the model predicts ratings), predicted
            :data:`RATING_BLOCK_PAIRS` pairs at a time.

    Returns:
        ``ranking_metrics`` keys, plus ``mse, rmse, mae, r2`` when ``with_ratings`` and
        ``model.predicts_ratings``.
    """
    shapes = {(model.n_users, model.n_items), (train.n_users, train.n_items)}
    shapes.add((test.n_users, test.n_items))
    if len(shapes) != 1:
        raise ValueError(f"model, train and test vocabularies differ: {sorted(shapes)}")
    k = max(ks)
    relevant = test.to_csr(binary=True)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    train_seen = train.to_csr(binary=True)
    unseen_by_model = train_seen - train_seen.multiply(model.seen_matrix())
    unseen_by_model.eliminate_zeros()
    lists = np.full((len(users), k), -1, dtype=np.int64)
    batch_size = users_per_block(model.n_items, block_cells)
    starts = range(0, len(users), batch_size)
    for start in progress(starts, f"evaluate {model.name} (blocks of {batch_size:,} users)"):
        batch = users[start : start + batch_size]
        extra = unseen_by_model[batch]
        extra_k = int(np.diff(extra.indptr).max(initial=0))
        items, _ = model.recommend(batch, k + extra_k, exclude_seen=True)
        if extra_k:
            drop, _ = hit_matrix(items, extra)
            items = _drop_masked(items, drop)
        lists[start : start + len(batch), : min(k, items.shape[1])] = items[:, :k]
    out = ranking_metrics(lists, relevant[users], ks)
    out["n_users_skipped"] = float(test.n_users - len(users))
    if with_ratings and model.predicts_ratings and len(test):
        out.update(
            rating_metrics(test.rating, blocked_rating_predictions(model, test, RATING_BLOCK_PAIRS))
        )
    return out


def compare_models(
    models: dict[str, Recommender], data: PreparedData, ks: Sequence[int] = (5, 10, 20)
) -> dict[str, Any]:
    """Every model on ``data``'s test split with the same candidates: the report's numbers.

    Candidates exclude train ∪ valid (what the final models are fitted on); rating metrics only
    where the data set has ratings (not for implicit feedback). Returns the content
    of ``reports/metrics.json``: data set, split, test users, model versions and per-model
    metrics.
    """
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = evaluate_model(
            model, data.full_train, data.test, ks=ks, with_ratings=data.has_ratings
        )
        log.info("%s evaluated in %.2fs", name, time.perf_counter() - start)
    return {
        "dataset": data.manifest["dataset"],
        "split": data.split,
        "feedback": "explicit" if data.has_ratings else "implicit",  # rating metrics or not
        "n_test_users": int(next(iter(results.values()))["n_users"]),
        "model_versions": {n: m.version for n, m in models.items() if hasattr(m, "version")},
        "models": {name: {k: float(v) for k, v in r.items()} for name, r in results.items()},
    }
