"""Choosing the item-item reference and its setting on the validation split (never the test split).

:func:`select_item_item` fits EASE where the catalog has at most
:data:`~towers.recommenders.item_item.EASE_MAX_ITEMS` items and ItemKNN above, scoring every
candidate setting with the protocol the final comparison uses (``evaluate_model`` on ``valid``
with ``train``'s items excluded), as ``tune_user_knn`` does for UserKNN. The caller refits the
choice on train ∪ valid (:meth:`ItemItemChoice.build`).

EASE's λ is searched on a 1-2-5 ladder (…, 10, 20, 50, 100, 200, …) scaled by the data: λ is
added to the Gram matrix's diagonal, whose entries are the items' training counts, so the
useful λ grows with the mean item count ``d``. The validation optimum measured at 2.3·d
(ML-100K temporal), 7.5–25·d (ML-100K random) and 2.5–8.5·d (Amazon Beauty temporal): the
search starts at the ladder value nearest 4·d, tries the next one up, and climbs in the
better direction until validation NDCG@10 falls (or the ladder's ends, ``d/100`` and
``1000·d``, or the point or time budget). Each point is one ``O(n³)`` inverse (~25 s of one core
at 12k items), so the climb (3 points on Beauty and ML-100K) is what keeps the search affordable.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from towers.data.interactions import Interactions
from towers.evaluation.protocol import evaluate_model
from towers.progress import progress
from towers.recommenders.base import Recommender
from towers.recommenders.item_item import (
    EASE,
    EASE_MAX_ITEMS,
    ItemKNN,
    binary_matrix,
    item_neighbors,
)

log = logging.getLogger(__name__)
ItemItemModel = Literal["auto", "ease", "item_knn"]
L2_START = 4.0  # the climb starts at this many mean item counts (measured optima: 2.3–25)
L2_RANGE = (0.01, 1000.0)  # the ladder's ends, in mean item counts
MAX_L2_POINTS = 8  # EASE fits at most (each an n × n inverse)
# ItemKNN: neighbours are computed once per shrink for the largest count and sliced for the
# others. Shrink is in co-occurrence units; Beauty's best was 100, ML-style data prefer less.
KNN_GRID: dict[str, tuple[float, ...]] = {
    "n_neighbors": (20, 50, 100, 200, 500),
    "shrink": (0.0, 10.0, 100.0, 1000.0),
}
BUDGET_S = 1800.0  # no new grid point is started after this many seconds of search


def l2_ladder(mean_count: float) -> list[float]:
    """λ candidates: the 1-2-5 values in ``[L2_RANGE[0]·d, L2_RANGE[1]·d]``, ascending."""
    low, high = (max(mean_count, 1e-3) * r for r in L2_RANGE)
    values = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        values += [m * 10.0**exponent for m in (1, 2, 5)]
    return [float(f"{v:.3g}") for v in values if low <= v <= high]


def climb(
    n_points: int,
    start: int,
    evaluate: Callable[[int], float],
    max_points: int = MAX_L2_POINTS,
    budget_s: float = BUDGET_S,
) -> dict[int, float]:
    """Hill-climbs a validation metric over grid positions ``0..n_points-1`` (higher is better).

    Evaluates ``start`` and ``start + 1``, then walks in the better direction until the metric
    falls, the grid ends, ``max_points`` were evaluated or ``budget_s`` has passed. On a
    unimodal curve it finds the grid's best point.

    Returns:
        ``{position: metric}`` of every evaluated position.
    """
    started = time.perf_counter()
    seen: dict[int, float] = {}

    def affordable() -> bool:
        return len(seen) < max_points and time.perf_counter() - started < budget_s

    def visit(position: int) -> float:
        if position not in seen:
            seen[position] = evaluate(position)
        return seen[position]

    start = min(max(start, 0), n_points - 1)
    best = start
    visit(start)
    for step in (1, -1):
        position = best + step
        while 0 <= position < n_points and affordable():
            if visit(position) <= seen[best]:
                break
            best, position = position, position + step
        if best != start:  # it climbed up: the way down only falls
            break
    if not affordable():
        log.warning("item-item search stopped at its budget (%d points)", len(seen))
    return seen


def _cutoffs(metric: str, ks: Sequence[int]) -> list[int]:
    if "@" not in metric and metric != "map":
        raise ValueError(f"item-item models rank only: {metric!r} is not a ranking metric")
    extra = {int(metric.split("@")[1])} if "@" in metric else set()
    return sorted(set(ks) | extra)


def tune_ease(
    train: Interactions,
    valid: Interactions,
    l2_grid: Sequence[float] | None = None,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (5, 10, 20),
    exhaustive: bool = False,
    budget_s: float = BUDGET_S,
) -> tuple[dict[str, float], pd.DataFrame]:
    """EASE's λ chosen on ``valid`` (see the module docstring for the ladder and the climb).

    Args:
        train: interactions the models are fitted on.
        valid: held-out interactions each λ is scored on with ``evaluate_model``.
        l2_grid: ascending λ values; default :func:`l2_ladder` of the mean item count.
        metric: ranking metric to maximise.
        ks: cut-offs evaluated; the metric's own ``k`` is added.
        exhaustive: evaluate every grid value instead of climbing.
        budget_s: no new λ is fitted after this many seconds.

    Returns:
        ``(best_params, results)``: ``{"l2": λ}`` and one row per evaluated λ (ascending) with
        every metric and its fit and evaluation seconds.
    """
    cutoffs = _cutoffs(metric, ks)
    # Each λ rebuilds the Gram matrix and inverts it in place: one (I, I) array at a time, not
    # two (the sparse product costs seconds where the inverse costs minutes).
    mean_count = binary_matrix(train).nnz / max(train.n_items, 1)  # the Gram's mean diagonal
    grid = sorted(l2_grid) if l2_grid is not None else l2_ladder(mean_count)
    rows: dict[int, dict[str, Any]] = {}

    def evaluate(position: int) -> float:
        started = time.perf_counter()
        log.info("EASE λ=%g (%d of at most %d)", grid[position], len(rows) + 1, MAX_L2_POINTS)
        model = EASE(grid[position]).fit(train)
        fitted = time.perf_counter()
        values = evaluate_model(model, train, valid, ks=cutoffs, with_ratings=False)
        rows[position] = {
            "l2": grid[position],
            **values,
            "fit_seconds": fitted - started,
            "eval_seconds": time.perf_counter() - fitted,
        }
        log.info("EASE λ=%g: valid %s %.4f", grid[position], metric, values[metric])
        return values[metric]  # the model and its (I, I) weights are freed here

    if exhaustive:
        for position in progress(range(len(grid)), "EASE λ grid"):
            evaluate(position)
    else:
        start = int(np.argmin(np.abs(np.log(grid) - np.log(L2_START * mean_count))))
        climb(len(grid), start, evaluate, budget_s=budget_s)
    results = pd.DataFrame([rows[p] for p in sorted(rows)])
    best = int(np.nanargmax(results[metric].to_numpy(np.float64)))
    return {"l2": float(results.loc[best, "l2"])}, results


def tune_item_knn(
    train: Interactions,
    valid: Interactions,
    grid: dict[str, Sequence[float]] | None = None,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (5, 10, 20),
    budget_s: float = BUDGET_S,
) -> tuple[dict[str, float], pd.DataFrame]:
    """ItemKNN's neighbours and shrinkage chosen on ``valid`` over a grid (:data:`KNN_GRID`).

    Neighbours are computed once per shrink for the largest ``n_neighbors`` and sliced for the
    others, which gives exactly what ``ItemKNN(n, shrink).fit(train)`` gives.

    Returns:
        ``(best_params, results)``: the best point (first in grid order on ties) and one row per
        evaluated point with every metric and timings.
    """
    unknown = set(grid or {}) - set(KNN_GRID)
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; known: {sorted(KNN_GRID)}")
    grid = {**KNN_GRID, **(grid or {})}
    cutoffs = _cutoffs(metric, ks)
    x = binary_matrix(train)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    points = list(itertools.product(grid["shrink"], grid["n_neighbors"]))
    neighbors: tuple[float, np.ndarray, np.ndarray] | None = None
    for shrink, n_neighbors in progress(points, "ItemKNN grid"):
        if rows and time.perf_counter() - started >= budget_s:
            log.warning("ItemKNN search stopped at its budget (%d points)", len(rows))
            break
        point_start = time.perf_counter()
        if neighbors is None or neighbors[0] != shrink:
            neighbors = (shrink, *item_neighbors(x, int(max(grid["n_neighbors"])), shrink))
        model = ItemKNN(int(n_neighbors), shrink).fit_from_neighbors(train, *neighbors[1:])
        fitted = time.perf_counter()
        values = evaluate_model(model, train, valid, ks=cutoffs, with_ratings=False)
        rows.append(
            {
                **model.params,
                **values,
                "fit_seconds": fitted - point_start,
                "eval_seconds": time.perf_counter() - fitted,
            }
        )
    results = pd.DataFrame(rows)
    best = int(np.nanargmax(results[metric].to_numpy(np.float64)))
    return {
        "n_neighbors": int(results.loc[best, "n_neighbors"]),
        "shrink": float(results.loc[best, "shrink"]),
    }, results


@dataclass
class ItemItemChoice:
    """The item-item reference chosen on validation: which model, its setting, the search.

    Attributes:
        model: ``"ease"`` or ``"item_knn"``.
        params: the chosen setting (``EASE``'s or ``ItemKNN``'s keyword arguments).
        metric: the validation metric it was chosen by.
        valid_value: that metric of the chosen setting on validation.
        results: one row per evaluated setting (metrics and timings).
        seconds: the whole search's wall time.
        ease_max_items: the catalog size up to which ``"auto"`` takes EASE.
    """

    model: str
    params: dict[str, float]
    metric: str
    valid_value: float
    results: pd.DataFrame
    seconds: float
    ease_max_items: int = EASE_MAX_ITEMS

    @property
    def label(self) -> str:
        """``"EASE, λ=50"`` or ``"ItemKNN, 200 neighbours, shrink 100"`` for the report."""
        if self.model == "ease":
            return f"EASE, λ={self.params['l2']:g}"
        return f"ItemKNN, {self.params['n_neighbors']} neighbours, shrink {self.params['shrink']:g}"

    def build(self) -> Recommender:
        """An unfitted model with the chosen setting (to refit on train ∪ valid)."""
        return EASE(**self.params) if self.model == "ease" else ItemKNN(**self.params)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the choice and every evaluated setting's validation metric."""
        keys = ["l2"] if self.model == "ease" else ["n_neighbors", "shrink"]
        return {
            "model": self.model,
            "params": self.params,
            "label": self.label,
            "metric": self.metric,
            "valid": self.valid_value,
            "seconds": self.seconds,
            "ease_max_items": self.ease_max_items,
            "grid": [
                {k: row[k] for k in (*keys, self.metric, "fit_seconds")}
                for row in self.results.to_dict("records")
            ],
        }


def resolve_model(model: ItemItemModel, n_items: int, ease_max_items: int = EASE_MAX_ITEMS) -> str:
    """``"ease"`` or ``"item_knn"``: ``"auto"`` takes EASE up to ``ease_max_items`` items."""
    if model not in ("auto", "ease", "item_knn"):
        raise ValueError(f"item-item model must be auto, ease or item_knn, got {model!r}")
    if model != "auto":
        return model
    return "ease" if n_items <= ease_max_items else "item_knn"


def select_item_item(
    train: Interactions,
    valid: Interactions,
    model: ItemItemModel = "auto",
    metric: str = "ndcg@10",
    ease_max_items: int = EASE_MAX_ITEMS,
    budget_s: float = BUDGET_S,
) -> ItemItemChoice:
    """Chooses the item-item reference (EASE or ItemKNN by catalog size) and its setting.

    Args:
        train: interactions the candidates are fitted on.
        valid: held-out interactions they are scored on (never the test split).
        model: ``"auto"`` (by ``ease_max_items``), ``"ease"`` or ``"item_knn"``.
        metric: the ranking metric maximised on ``valid``.
        ease_max_items: largest catalog ``"auto"`` fits EASE for (memory and ``O(n³)`` time).
        budget_s: seconds after which no new setting is tried.
    """
    started = time.perf_counter()
    chosen = resolve_model(model, train.n_items, ease_max_items)
    tune = tune_ease if chosen == "ease" else tune_item_knn
    params, results = tune(train, valid, metric=metric, budget_s=budget_s)
    valid_value = float(results[metric].max())
    seconds = time.perf_counter() - started
    return ItemItemChoice(chosen, params, metric, valid_value, results, seconds, ease_max_items)
