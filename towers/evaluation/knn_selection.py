"""Choosing UserKNN's settings on the validation split (never the test split).

:func:`tune_user_knn` grid-searches mode, neighbours and minimum similarity with the same protocol
the final comparison uses (``towers.evaluation.protocol``); neighbours are computed once per mode
for the largest ``n_neighbors`` and sliced for the others.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from towers.data.interactions import Interactions
from towers.evaluation.protocol import evaluate_model
from towers.progress import progress
from towers.recommenders.neighbor_search import top_neighbors
from towers.recommenders.user_knn import MODES, UserKNN, unit_rows

DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "mode": MODES,
    "n_neighbors": (10, 20, 40, 80, 160),
    "min_sim": (0.0, 0.01, 0.1),
    "min_nbrs": (1,),
}
_LOWER_IS_BETTER = ("mse", "rmse", "mae")


def tune_user_knn(
    train: Interactions,
    valid: Interactions,
    grid: dict[str, Sequence[Any]] | None = None,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (5, 10, 20),
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Grid search of :class:`UserKNN` on a validation split (never the test split).

    Neighbours are computed once per mode for the largest ``n_neighbors`` and sliced for the
    others, which gives exactly what ``UserKNN(**params).fit(train)`` gives; grid points with the
    same neighbour matrix are evaluated once. Rating metrics are computed only when ``metric`` is
    one (they cost as much again as the ranking).

    Args:
        train: interactions the models are fitted on.
        valid: held-out interactions the grid points are scored on with ``evaluate_model``.
        grid: values per parameter (``mode, n_neighbors, min_sim, min_nbrs``); missing keys take
            :data:`DEFAULT_GRID`'s.
        metric: an ``evaluate_model`` key to maximise (``mse``/``rmse``/``mae`` are minimised).
        ks: cut-offs evaluated; the metric's own ``k`` is added.

    Returns:
        ``(best_params, results)``: the best grid point (first in grid order on ties) and one row
        per grid point with its parameters, every metric and timings (``neighbor_seconds`` is
        shared by all points of a mode).
    """
    unknown = set(grid or {}) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; known: {sorted(DEFAULT_GRID)}")
    grid = {**DEFAULT_GRID, **(grid or {})}
    cutoffs = set(ks)
    if "@" in metric:
        cutoffs.add(int(metric.split("@")[1]))
    elif metric not in (*_LOWER_IS_BETTER, "r2", "map"):
        raise ValueError(f"unknown metric {metric!r}")
    with_rating = metric in (*_LOWER_IS_BETTER, "r2")
    rows: list[dict[str, Any]] = []
    for mode in grid["mode"]:
        started = time.perf_counter()
        neighbors, sims = top_neighbors(unit_rows(train, mode), max(grid["n_neighbors"]))
        shared_seconds = time.perf_counter() - started
        # Grid points whose neighbour matrices coincide (a min_sim below every kept similarity)
        # score the same: evaluate each distinct matrix once.
        scored: dict[tuple[int, bytes], dict[str, float]] = {}
        points = list(itertools.product(grid["n_neighbors"], grid["min_sim"], grid["min_nbrs"]))
        for n_neighbors, min_sim, min_nbrs in progress(points, f"UserKNN grid ({mode})"):
            started = time.perf_counter()
            model = UserKNN(n_neighbors, min_sim, min_nbrs, mode)
            model.fit_from_neighbors(train, neighbors, sims)
            fitted = time.perf_counter()
            weights = model.neighbors_
            assert weights is not None
            digest = hashlib.sha1(weights.indptr.tobytes() + weights.indices.tobytes()).digest()
            key = (min_nbrs, digest)
            if key not in scored:
                scored[key] = evaluate_model(
                    model, train, valid, ks=sorted(cutoffs), with_ratings=with_rating
                )
            rows.append(
                {
                    **model.params,
                    **scored[key],
                    "neighbor_seconds": shared_seconds,  # once per mode, shared by its points
                    "fit_seconds": fitted - started,
                    "eval_seconds": time.perf_counter() - fitted,
                }
            )
    results = pd.DataFrame(rows)
    if metric not in results.columns:
        raise ValueError(f"metric {metric!r} not among {sorted(results.columns)}")
    values = results[metric].to_numpy(np.float64)
    best = int(np.nanargmin(values) if metric in _LOWER_IS_BETTER else np.nanargmax(values))
    best_params = {
        key: results.loc[best, key] for key in ("mode", "n_neighbors", "min_sim", "min_nbrs")
    }
    best_params = {k: v.item() if isinstance(v, np.generic) else v for k, v in best_params.items()}
    return best_params, results
