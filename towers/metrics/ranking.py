"""Ranking and rating metrics, vectorised over all users at once.

Conventions (the Microsoft Recommenders ones, so that published ML-100K numbers are comparable):

* ``recommended`` is a ``(U, K)`` matrix of item indices in rank order, padded with ``-1``. A pad is
  never a hit; Precision@k still divides by ``k``.
* ``relevant`` is a ``(U, n_items)`` sparse matrix whose nonzeros are the relevant items (every test
  interaction is relevant; there is no rating threshold).
* Users with no relevant item are skipped and counted (``n_users_skipped``); every mean is over the
  remaining ``n_users``.
* Notation below: ``hit_j`` is 1 if the item at rank ``j`` (1-based) is relevant, ``R_u`` the
  relevant set of user ``u``, ``|R_u|`` its size.

Per-metric functions return one value per user so that tests can compare user by user;
``ranking_metrics`` averages them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def hit_matrix(recommended: np.ndarray, relevant: sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Marks which recommended items are relevant.

    Args:
        recommended: ``(U, K)`` int item indices in rank order, padded with ``-1``; no item twice in
            a row.
        relevant: ``(U, n_items)`` sparse; nonzeros are relevant items. Rows align with
            ``recommended``.

    Returns:
        ``(hits, n_relevant)``: ``(U, K)`` bool and ``(U,)`` int64 ``|R_u|``.
    """
    recommended = np.asarray(recommended)
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be (U, K), got shape {recommended.shape}")
    if not np.issubdtype(recommended.dtype, np.integer):
        raise ValueError(f"recommended must hold integer item indices, got {recommended.dtype}")
    relevant = sp.csr_matrix(relevant, copy=True)
    relevant.eliminate_zeros()
    relevant.sum_duplicates()  # also sorts the column indices of each row
    n_rows, n_items = relevant.shape
    if recommended.shape[0] != n_rows:
        raise ValueError(
            f"recommended has {recommended.shape[0]} rows, relevant has {n_rows} "
            f"(shapes {recommended.shape} and {relevant.shape})"
        )
    if recommended.size and recommended.max() >= n_items:
        raise ValueError(f"recommended item {recommended.max()} outside [0, {n_items})")
    if recommended.size and recommended.min() < -1:
        raise ValueError(f"recommended item {recommended.min()} is neither an item nor -1 padding")
    ordered = np.sort(recommended, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        raise ValueError("recommended lists must not repeat an item within a row")

    n_relevant = np.diff(relevant.indptr).astype(np.int64)
    # One sorted key per relevant (row, item); CSR order is already row-major and column-sorted.
    rel_keys = np.repeat(np.arange(n_rows, dtype=np.int64), n_relevant) * n_items + relevant.indices
    rec_keys = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + recommended
    pos = np.searchsorted(rel_keys, rec_keys).clip(max=max(len(rel_keys) - 1, 0))
    hits = (recommended >= 0) & (len(rel_keys) > 0)
    if len(rel_keys):
        hits &= rel_keys[pos] == rec_keys
    return hits, n_relevant


def _first_k(hits: np.ndarray, k: int) -> np.ndarray:
    """``(U, k)`` float hits of the first ``k`` ranks; ranks past a short list count as misses."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    top = hits[:, :k].astype(np.float64)
    if top.shape[1] < k:
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])))
    return top


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user Precision@k = ``sum_{j<=k} hit_j / k``. Returns ``(U,)``."""
    return _first_k(hits, k).sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@k = ``sum_{j<=k} hit_j / |R_u|`` (0 where ``|R_u| = 0``); ``(U,)``."""
    return _first_k(hits, k).sum(axis=1) / np.maximum(n_relevant, 1)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user HitRate@k = ``1 if any(hit_j for j <= k) else 0``. Returns ``(U,)``."""
    return (_first_k(hits, k).sum(axis=1) > 0).astype(np.float64)


def _precision_at_hits(top: np.ndarray) -> np.ndarray:
    """``(U, k)`` ``hit_j * (sum_{i<=j} hit_i) / j``: precision at each rank that is a hit."""
    ranks = np.arange(1, top.shape[1] + 1, dtype=np.float64)
    return top * np.cumsum(top, axis=1) / ranks


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user AP@k; its mean over users is MAP@k.

    ``AP@k = sum_{j<=k} hit_j * P@j / min(|R_u|, k)`` with ``P@j = sum_{i<=j} hit_i / j``.

    Returns:
        ``(U,)``; 0 where ``|R_u| = 0``.
    """
    top = _first_k(hits, k)
    return _precision_at_hits(top).sum(axis=1) / np.maximum(np.minimum(n_relevant, k), 1)


def recommenders_average_precision(
    hits: np.ndarray, n_relevant: np.ndarray, k: int = 10
) -> np.ndarray:
    """Per-user AP as in Microsoft Recommenders' ``map()`` (``map_at_k`` before v1.2).

    ``AP = sum_{j<=k} hit_j * P@j / |R_u|``: like AP@k but divided by *all* relevant items of the
    user, not by ``min(|R_u|, k)``; with ``|R_u| > k`` it cannot reach 1.

    Returns:
        ``(U,)``; 0 where ``|R_u| = 0``.
    """
    top = _first_k(hits, k)
    return _precision_at_hits(top).sum(axis=1) / np.maximum(n_relevant, 1)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary relevance.

    ``DCG@k = sum_{j<=k} hit_j / log2(j + 1)``, ``IDCG@k = sum_{j<=min(|R_u|, k)} 1 / log2(j + 1)``,
    ``NDCG@k = DCG@k / IDCG@k``.

    Returns:
        ``(U,)``; 0 where ``|R_u| = 0``.
    """
    top = _first_k(hits, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # (k,)
    dcg = top @ discounts
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])  # IDCG by min(|R_u|, k)
    idcg = ideal_cumulative[np.minimum(n_relevant, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def catalog_coverage_at_k(recommended: np.ndarray, k: int, n_items: int) -> float:
    """Coverage@k = ``|union_u top_k(u)| / n_items``: the share of the catalogue recommended."""
    top = np.asarray(recommended)[:, :k]
    return float(np.unique(top[top >= 0]).size / n_items) if n_items else 0.0


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.spmatrix,
    ks: Sequence[int] = (5, 10, 20),
    map_k: int = 10,
) -> dict[str, float]:
    """All ranking metrics, averaged over users with at least one relevant item.

    Args:
        recommended: ``(U, K)`` int item indices in rank order, padded with ``-1``.
        relevant: ``(U, n_items)`` sparse, nonzeros relevant; rows align with ``recommended``.
        ks: cut-offs; ``K`` shorter than a cut-off counts the missing ranks as misses.
        map_k: list length of the Recommenders-style ``"map"``.

    Returns:
        ``precision@k, recall@k, map@k, ndcg@k, hit_rate@k, coverage@k`` for each ``k``, ``map``
        (Recommenders' ``map()`` on the top-``map_k`` list), ``n_users`` (evaluated) and
        ``n_users_skipped`` (no relevant item). Coverage counts evaluated users' lists only.
    """
    hits, n_relevant = hit_matrix(recommended, relevant)
    keep = n_relevant > 0
    hits, n_relevant = hits[keep], n_relevant[keep]
    kept_lists = np.asarray(recommended)[keep]
    n_items = relevant.shape[1]

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    out: dict[str, float] = {}
    for k in ks:
        out[f"precision@{k}"] = mean(precision_at_k(hits, k))
        out[f"recall@{k}"] = mean(recall_at_k(hits, n_relevant, k))
        out[f"map@{k}"] = mean(average_precision_at_k(hits, n_relevant, k))
        out[f"ndcg@{k}"] = mean(ndcg_at_k(hits, n_relevant, k))
        out[f"hit_rate@{k}"] = mean(hit_rate_at_k(hits, k))
        out[f"coverage@{k}"] = catalog_coverage_at_k(kept_lists, k, n_items)
    out["map"] = mean(recommenders_average_precision(hits, n_relevant, map_k))
    out["n_users"] = float(keep.sum())
    out["n_users_skipped"] = float((~keep).sum())
    return out
