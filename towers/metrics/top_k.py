"""Top-k selection with exclusions: the one ranking step every model and metric shares.

Ties go to the lower item index and excluded items are never returned, so two models with equal
scores give equal lists and a metric never sees an item the user already had.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Score cells (users x items) of one ranking block: float32 scores plus top-k's int64 partition
# indices make ~12 bytes a cell, so 2**24 cells bound a block at ~200 MB whatever the data size.
BLOCK_CELLS = 2**24


def users_per_block(n_items: int, block_cells: int = BLOCK_CELLS) -> int:
    """Users ranked per block so that a block holds at most ``block_cells`` score cells."""
    return max(1, block_cells // max(n_items, 1))


def top_k_excluding(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of ``scores``, skipping the nonzeros of ``exclude``.

    Args:
        scores: ``(U, I)`` float scores; higher is better. Modified in place where excluded.
        k: number of items per row.
        exclude: ``(U, I)`` sparse mask of items never to return (e.g. already seen), or None.

    Returns:
        ``(item_idx, scores)``, both ``(U, min(k, I))``, sorted by descending score (ties broken by
        lower item index). Where fewer than ``k`` items are allowed, the tail is padded with
        item ``-1`` and score ``-inf``.
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
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Stable order: by score descending, then item index ascending (lexsort's last key is primary).
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1)
    items[~np.isfinite(top)] = -1
    return items, top
