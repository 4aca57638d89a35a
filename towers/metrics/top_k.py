"""Top-k selection with exclusions: the one ranking step every model and metric shares.

Ties go to the lower item index and excluded items are never returned, so two models with equal
scores give equal lists and a metric never sees an item the user already had.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Score cells (users x items) of one ranking block: float32 scores plus the tie checks' keys make
# ~8 bytes a cell at most, so 2**24 cells bound a block at ~130 MB whatever the data size.
BLOCK_CELLS = 2**24
# Blocks of at least this many cells are ranked by torch.topk (both threads, on the block's own
# memory: 0.18x argpartition's time on Gowalla's validation, bench/bench_top_k.py); smaller ones
# (a request's one row) by numpy, so that a process with no other use for torch (Serve's ingress
# and event-log replicas) never imports it. Both give the same lists.
TORCH_FROM_CELLS = 2**20


def users_per_block(n_items: int, block_cells: int = BLOCK_CELLS) -> int:
    """Users ranked per block so that a block holds at most ``block_cells`` score cells."""
    return max(1, block_cells // max(n_items, 1))


def top_k_excluding(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of ``scores``, skipping the nonzeros of ``exclude``.

    Args:
        scores: ``(U, I)`` float scores; higher is better. Modified in place where excluded
            (and where NaN: NaN ranks as ``-inf``).
        k: number of items per row.
        exclude: ``(U, I)`` sparse mask of items never to return (e.g. already seen), or None.

    Returns:
        ``(item_idx, scores)``, both ``(U, min(k, I))``, sorted by descending score; of equal
        scores the lower item index comes first, also where the tie straddles the k-th place.
        Where fewer than ``k`` items are allowed, the tail is padded with item ``-1`` and score
        ``-inf``.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (U, I), got shape {scores.shape}")
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if exclude is not None and exclude.nnz:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude shape {exclude.shape} != scores shape {scores.shape}")
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if k == 0:  # an empty catalog
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), np.float32)
    if not scores.flags.writeable or not scores.flags.c_contiguous:
        scores = np.ascontiguousarray(scores).copy()
    # One more than k shows where the k-th place is tied.
    top, items = _largest(scores, min(k + 1, n_items))
    nan = np.isnan(top).any(axis=1)  # NaN may be selected: rank those rows again as -inf
    if nan.any():
        rows = np.flatnonzero(nan)
        block = scores[rows]
        block[np.isnan(block)] = -np.inf
        scores[rows] = block
        top[rows], items[rows] = _largest(block, top.shape[1])
    if k < n_items:
        tied = top[:, k - 1] == top[:, k]  # the selection may hold any of the tied items
        if tied.any():
            rows = np.flatnonzero(tied)
            block, bound = scores[rows], top[rows, k - 1 : k]
            # Above the tie first, then the tied items by index (a larger key for a lower
            # index; exact in float32 below 2**24 items).
            key = np.where(block == bound, np.arange(n_items, 0, -1, dtype=np.float32), 0)
            key[block > bound] = n_items + 1
            items[rows, :k] = _largest(key, k)[1]
            top[rows, :k] = np.take_along_axis(block, items[rows, :k], axis=1)
        top, items = top[:, :k], items[:, :k]
    # By score descending, then item index ascending (lexsort's last key is primary).
    order = np.lexsort((items, -top), axis=1)
    items = np.take_along_axis(items, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    items[~np.isfinite(top)] = -1
    return items, top


def _largest(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, columns)`` of the ``m`` largest scores of each row (``m <= I``), descending;
    which of several equal values is taken is unspecified."""
    if scores.size >= TORCH_FROM_CELLS:
        import torch

        top, items = torch.topk(torch.from_numpy(scores), m, dim=1)
        return top.numpy(), items.numpy().astype(np.int64, copy=False)
    n_rows, n_items = scores.shape
    if m < n_items:
        part = np.argpartition(-scores, m - 1, axis=1)[:, :m]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items)).copy()
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)
