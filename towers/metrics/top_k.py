"""Top-k selection with exclusions: the one ranking step every model and metric shares.

Ties go to the lower item index and excluded items are never returned, so two models with equal
scores give equal lists and a metric never sees an item the user already had.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

# Score cells (users x items) of one ranking block: float32 scores plus the tie checks' boolean
# masks make ~6 bytes a cell, so 2**24 cells bound a block at ~100 MB whatever the data size.
BLOCK_CELLS = 2**24


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
    table = torch.from_numpy(scores)  # the same memory: no copy of the block
    # torch.topk: multi-threaded, without argpartition's negated copy and int64 indices
    # (bench/bench_top_k.py). One more than k shows where the k-th place is tied.
    top, items = torch.topk(table, min(k + 1, n_items), dim=1)
    nan = torch.isnan(top).any(dim=1)  # topk ranks NaN first: rank those rows again as -inf
    if nan.any():
        rows = nan.nonzero().squeeze(1)
        block = table[rows]
        table[rows] = block.masked_fill_(torch.isnan(block), -math.inf)
        top[rows], items[rows] = torch.topk(table[rows], top.shape[1], dim=1)
    if k < n_items:
        tied = top[:, k - 1] == top[:, k]  # topk may have taken any of the tied items
        if tied.any():
            rows = tied.nonzero().squeeze(1)
            block, bound = table[rows], top[rows, k - 1 : k]
            # Above the tie first, then the tied items by index (a larger key for a lower index).
            by_index = torch.arange(n_items, 0, -1, dtype=torch.int32)
            key = torch.where(block == bound, by_index, 0).masked_fill_(block > bound, n_items + 1)
            items[rows, :k] = torch.topk(key, k, dim=1).indices
            top[rows, :k] = torch.gather(block, 1, items[rows, :k])
        top, items = top[:, :k], items[:, :k]
    items, top = items.numpy().astype(np.int64), top.numpy()
    # By score descending, then item index ascending (lexsort's last key is primary).
    order = np.lexsort((items, -top), axis=1)
    items = np.take_along_axis(items, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    items[~np.isfinite(top)] = -1
    return items, top
