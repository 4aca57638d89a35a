"""User rows for the ``user_full`` softmax: each epoch, each user's training items in folds.

The pair-wise losses take one training pair ``(u, i)`` per row: ``u``'s other items are pooled,
and ``i`` is scored against the catalog, one catalog pass per pair. With
``negatives="user_full"`` an epoch splits every user's items at random into
``r_u = min(n_u, history_folds)`` folds; a row ``(u, f)`` pools the items outside fold ``f`` and
scores each item of fold ``f`` against the catalog (``u``'s training items masked), so one
catalog pass serves ``n_u / r_u`` targets. A user with at most ``history_folds`` items gets one
row per item: exactly the pair-wise leave-one-out. Every item is a target once per epoch, as in
the pair-wise loss, so an epoch means the same thing; on data whose users have tens of items the
catalog passes fall by ``history_folds``x (Gowalla: 810k pairs in ~150k rows).

A row's folds are a pure function of ``(fold_seed, history position)`` (a small integer hash),
so the rows of one user in different batches of an epoch agree without any epoch-wide table:
entries are ranked within the row by their hash, and entry of rank ``k`` is in fold
``k mod r_u``.
"""

from __future__ import annotations

import numpy as np
import torch

from towers.training.inputs import TrainingContext
from towers.training.tables import Batch, checked_shard, csr_gather

_MASK31 = 0x7FFFFFFF


def folds_per_user(history_lengths: np.ndarray, history_folds: int) -> np.ndarray:
    """``(U,)`` rows of each user in an epoch: ``min(n_u, history_folds)`` (0 without items)."""
    return np.minimum(history_lengths, history_folds)


def fold_seed(seed: int, epoch: int) -> int:
    """The per-epoch seed of the fold hash (31 bits)."""
    return (seed * 1_000_003 + epoch * 7_919 + 1) & _MASK31


def make_fold_batches(
    history_lengths: np.ndarray,
    history_folds: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shard: tuple[int, int] = (0, 1),
) -> list[Batch]:
    """Shuffled user-row batches of one epoch of one worker, the same for the same arguments.

    Args:
        history_lengths: ``(U,)`` training items of each user.
        history_folds: the config's ``history_folds``.
        batch_size: training *pairs* per step over all workers, as for the pair-wise losses;
            a batch holds about ``batch_size`` targets (rows x mean targets per row).
        seed: with ``epoch``, fixes the row order and the folds.
        epoch: the epoch.
        shard: ``(rank, world_size)``; every rank takes the same number of rows.

    Returns:
        Batches ``{"user_idx": (R,), "fold": (R,), "fold_seed": (R,), "pairs": ()}`` where
        ``pairs`` is the number of targets in the batch (samples, for throughput).
    """
    rank, world_size = checked_shard(shard)
    lengths = np.asarray(history_lengths, dtype=np.int64)
    folds = folds_per_user(lengths, history_folds)  # (U,)
    users = np.repeat(np.arange(len(lengths)), folds)  # (rows,)
    fold = np.arange(len(users)) - np.repeat(np.cumsum(folds) - folds, folds)  # 0..r_u - 1
    n_rows, n_pairs = len(users), int(lengths.sum())
    # Targets of fold f among n items in r folds (ranks k with k mod r == f): ceil((n - f) / r).
    targets = -((fold - lengths[users]) // folds[users])  # (rows,)
    order = np.random.default_rng([seed, epoch, 7]).permutation(n_rows)
    mine = order[rank::world_size][: n_rows // world_size]
    per_batch = rows_per_batch(n_rows, n_pairs, batch_size, world_size)
    epoch_seed = fold_seed(seed, epoch)
    batches = []
    for start in range(0, len(mine), per_batch):
        idx = mine[start : start + per_batch]
        batches.append(
            {
                "user_idx": torch.as_tensor(users[idx], dtype=torch.int64),
                "fold": torch.as_tensor(fold[idx], dtype=torch.int64),
                "fold_seed": torch.full((len(idx),), epoch_seed, dtype=torch.int64),
                "pairs": torch.tensor(int(targets[idx].sum())),
            }
        )
    return batches


def fold_steps(history_lengths: np.ndarray, history_folds: int, batch_size: int, world: int) -> int:
    """Optimizer steps of one epoch of :func:`make_fold_batches` (the schedule's unit)."""
    lengths = np.asarray(history_lengths, dtype=np.int64)
    n_rows = int(folds_per_user(lengths, history_folds).sum())
    per_batch = rows_per_batch(n_rows, int(lengths.sum()), batch_size, world)
    return max(1, -(-(n_rows // world) // per_batch))


def rows_per_batch(n_rows: int, n_pairs: int, batch_size: int, world: int) -> int:
    """User rows per worker batch so that a step holds about ``batch_size`` targets in all."""
    return max(1, round(batch_size / world * n_rows / max(n_pairs, 1)))


def _hash(seed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash of ``(seed, position)``, elementwise; no int64 overflow."""
    x = (position * 40_503 + seed * 9_973 + 12_345) & _MASK31
    x = ((x ^ (x >> 15)) * 48_271) & _MASK31
    x = ((x ^ (x >> 13)) * 69_621) & _MASK31
    return x ^ (x >> 16)


def fold_entries(
    history_indptr: torch.Tensor,
    user_idx: torch.Tensor,
    fold: torch.Tensor,
    seed: torch.Tensor,
    history_folds: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every history entry of the rows' users, and whether it is a target of its row.

    Args:
        history_indptr: ``(U + 1,)`` CSR row pointers of the training history.
        user_idx: ``(R,)`` the rows' users.
        fold: ``(R,)`` each row's target fold, in ``[0, min(n_u, history_folds))``.
        seed: ``(R,)`` each row's fold seed (:func:`fold_seed`).
        history_folds: the config's ``history_folds``.

    Returns:
        ``positions (H,)`` into the history arrays, ``rows (H,)`` (sorted), ``is_target (H,)``.
    """
    positions, rows, offsets = csr_gather(history_indptr, user_idx)
    key = _hash(seed[rows], positions).double() / (_MASK31 + 1.0)  # (H,) in [0, 1)
    order = torch.argsort(rows.double() + key)  # by row, then by key
    rank = torch.empty_like(positions)
    rank[order] = torch.arange(len(positions), device=positions.device) - offsets[rows[order]]
    lengths = history_indptr[user_idx + 1] - history_indptr[user_idx]  # (R,)
    n_folds = lengths.clamp(max=history_folds).clamp(min=1)[rows]  # (H,)
    return positions, rows, rank % n_folds == fold[rows]


def causal_fold_entries(
    history_indptr: torch.Tensor,
    history_recency: torch.Tensor,
    user_idx: torch.Tensor,
    fold: torch.Tensor,
    history_folds: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows' history entries with folds that are chunks of time (``causal_folds``).

    Fold ``f`` of a user with ``n`` items in ``r`` folds holds the items of chronological index
    ``c`` (0 = the oldest) with ``c * r // n == f``: the folds follow each other in time, so a row
    can pool what came *before* its targets, as the held-out parts of a temporal split come
    after the training history. The first fold has nothing before it; its row pools the items
    after it instead, so every item is still a target once per epoch.

    Args:
        history_indptr: ``(U + 1,)`` CSR row pointers of the training history.
        history_recency: ``(nnz,)`` each entry's recency rank among its user's (0 = newest).
        user_idx: ``(R,)`` the rows' users.
        fold: ``(R,)`` each row's target fold, in ``[0, min(n_u, history_folds))``.
        history_folds: the config's ``history_folds``.

    Returns:
        ``positions (H,)``, ``rows (H,)`` (sorted), ``is_target (H,)``, ``pooled (H,)`` (in the
        row's history bag) and ``recency (H,)``: for pooled entries, their distance in items
        from the target fold (0 = adjacent), what ``history_decay`` weighs.
    """
    positions, rows, _ = csr_gather(history_indptr, user_idx)
    lengths = (history_indptr[user_idx + 1] - history_indptr[user_idx])[rows]  # (H,)
    n_folds = lengths.clamp(max=history_folds).clamp(min=1)  # (H,)
    chrono = lengths - 1 - history_recency[positions].long()  # (H,) 0 = the oldest
    f = fold[rows]  # (H,)
    start = (f * lengths + n_folds - 1) // n_folds  # first chronological index of fold f
    end = ((f + 1) * lengths + n_folds - 1) // n_folds  # one past its last
    is_target = (chrono >= start) & (chrono < end)
    first = f == 0
    pooled = torch.where(first, chrono >= end, chrono < start)
    recency = torch.where(first, chrono - end, start - 1 - chrono).float()
    return positions, rows, is_target, pooled, recency


def fold_user_batch(
    ctx: TrainingContext,
    batch: Batch,
    history_dropout: float = 0.0,
    max_history: int = 0,
) -> Batch:
    """The user tower's input for a batch of user rows, with each row's targets and positives.

    The history bag of row ``(u, f)`` pools ``u``'s items outside fold ``f`` (at most
    ``max_history`` of them, drawn without replacement, when > 0; each dropped with chance
    ``history_dropout``); its recent-items bag, when the config has one, leaves the targets out.

    Returns:
        The :meth:`TrainingContext.pool_history` dict plus ``target_rows (T,)``,
        ``target_items (T,)``, ``target_ratings (T,)`` (raw scale: implicit data's weights),
        ``positive_rows (M,)`` and ``positive_items (M,)`` (every training item of every row).
    """
    user_idx = batch["user_idx"].to(ctx.device)
    fold = batch["fold"].to(ctx.device)
    if ctx.config.causal_folds:
        positions, rows, is_target, keep, recency = causal_fold_entries(
            ctx.history_indptr, ctx.history_recency, user_idx, fold, ctx.config.history_folds
        )
    else:
        positions, rows, is_target = fold_entries(
            ctx.history_indptr,
            user_idx,
            fold,
            batch["fold_seed"].to(ctx.device),
            ctx.config.history_folds,
        )
        keep, recency = ~is_target, ctx.history_recency[positions]
    items = ctx.history_items[positions]  # (H,)
    if history_dropout > 0:
        keep = keep & (torch.rand(items.shape, device=ctx.device) >= history_dropout)
    if max_history > 0:
        # At most max_history pooled entries per row: a uniform subset (ranked by a random key),
        # or with causal folds the ones nearest the targets.
        if ctx.config.causal_folds:
            near = recency.clamp(min=0).double()  # (H,) the non-pooled ones sort last anyway
            key = near / (float(near.max()) + 1.0) if len(near) else near
        else:
            key = torch.rand(items.shape, device=ctx.device, dtype=torch.float64)
        order = torch.argsort(rows.double() * 2.0 + keep.double() * -1.0 + key)
        kept_sorted = keep[order]
        first = torch.searchsorted(rows[order], rows[order])  # row start in the sorted order
        rank = torch.arange(len(order), device=ctx.device) - first
        sampled = torch.zeros_like(keep)
        sampled[order] = kept_sorted & (rank < max_history)
        keep = sampled
    pool_rows, pool_pos, pool_recency = rows[keep], positions[keep], recency[keep]
    counts = torch.bincount(pool_rows, minlength=len(user_idx))  # (R,)
    out = ctx.pool_history(
        user_idx,
        ctx.user_inputs.gather(user_idx),
        ctx.history_items[pool_pos],
        ctx.history_ratings[pool_pos],
        pool_rows,
        torch.cumsum(counts, 0) - counts,
        pool_recency,
    )
    if ctx.config.recent_history > 0:
        recent, recent_rows, _ = csr_gather(ctx.recent_indptr, user_idx)
        recent_pos = ctx.recent_positions[recent]
        target_pos = positions[is_target]
        not_target = ~torch.isin(recent_pos, target_pos)
        recent_items = ctx.history_items[recent_pos[not_target]]
        out.update(ctx.recent_bag(recent_items, recent_rows[not_target], len(user_idx)))
    lo, hi = ctx.rating_scale
    out["target_rows"], out["target_items"] = rows[is_target], items[is_target]
    out["target_ratings"] = ctx.history_ratings[positions[is_target]] * (hi - lo) + lo
    out["positive_rows"], out["positive_items"] = rows, items
    return out
