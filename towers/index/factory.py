"""Choosing an index kind for a catalog, and measuring an index's recall against exact search."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Literal

import numpy as np

from towers.index.base import ItemIndex, index_recall
from towers.index.exact import ExactIndex
from towers.index.scann import ScannIndex, ScannSettings


def make_index(
    kind: Literal["exact", "scann", "auto"],
    n_items: int,
    settings: ScannSettings | None = None,
    model_version: str | None = None,
) -> ItemIndex:
    """An empty index suited to a catalog of ``n_items``.

    ``auto`` picks ``ExactIndex`` below ``settings.brute_force_below`` items (where ScaNN would
    brute-force too, so the optional dependency buys nothing) and ``ScannIndex`` above; without
    ScaNN installed it warns and falls back to exact search.
    """
    if kind == "exact":
        if settings is not None:
            raise ValueError("settings are ScaNN settings; they do not apply to kind='exact'")
        return ExactIndex(model_version)
    if kind == "scann":
        return ScannIndex(settings, model_version)
    if kind != "auto":
        raise ValueError(f"kind must be 'exact', 'scann' or 'auto', got {kind!r}")
    if n_items < (settings or ScannSettings()).brute_force_below:
        return ExactIndex(model_version)
    if importlib.util.find_spec("scann") is None:
        warnings.warn(
            f"scann is not installed; using exact search over {n_items} items", stacklevel=2
        )
        return ExactIndex(model_version)
    return ScannIndex(settings, model_version)


def measure_recall(index: ItemIndex, exact: ExactIndex, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` against ``exact`` on sample ``(Q, D)`` queries; stored on ``index``."""
    recall = index_recall(index.search(queries, k)[1], exact.search(queries, k)[1])
    index.measured_recall = {"k": k, "recall": recall, "n_queries": len(queries)}
    return recall
