"""Training rows of the sequence user tower: each user's history in time order, in windows.

A user with ``n`` training items has ``n - 1`` next-item targets (every item but the first, each
predicted from the items before it). An epoch cuts them into windows of at most ``L =
sequence_length`` targets, newest first: window ``w`` holds the targets of chronological index
``t`` (0 = the oldest) in ``[max(1, e - L), e)`` with ``e = n - w L``, and its sequence the items
just before them, left-padded, so that slot ``s`` of the window reads the item at ``e - L - 1 +
s`` and is scored against the one at ``e - L + s``. One causal pass over a window trains every
one of its targets; every target is trained once per epoch, as in the pair-wise losses, so an
epoch means the same thing (SASRec trains only each user's last ``L``).

A window's targets are scored as the ``user_full`` rows are (``towers.training.steps``): against
the whole catalog up to ``row_negatives`` items, against ``row_negatives`` shared draws above,
every training item of the user masked out of the negatives (the evaluation excludes them too).
"""

from __future__ import annotations

import numpy as np
import torch

from towers.training.inputs import TrainingContext
from towers.training.tables import Batch, checked_shard, csr_gather


def windows_per_user(history_lengths: np.ndarray, length: int) -> np.ndarray:
    """``(U,)`` windows of each user in an epoch: ``ceil((n - 1) / length)`` (0 below 2 items)."""
    targets = np.maximum(np.asarray(history_lengths, np.int64) - 1, 0)
    return -(-targets // length)


def _windows(history_lengths: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """``(users, window, targets)`` of every window of an epoch, one entry each."""
    lengths = np.asarray(history_lengths, dtype=np.int64)
    windows = windows_per_user(lengths, length)  # (U,)
    users = np.repeat(np.arange(len(lengths)), windows)  # (rows,)
    window = np.arange(len(users)) - np.repeat(np.cumsum(windows) - windows, windows)
    end = lengths[users] - window * length  # one past the window's newest target
    return users, window, np.minimum(length, end - 1)


def _batch_ids(targets: np.ndarray, batch_size: int) -> np.ndarray:
    """``(rows,)`` the batch of each window, windows in order, about ``batch_size`` targets a
    batch (a batch closes once its targets reach it)."""
    return (np.cumsum(targets) - 1) // max(batch_size, 1)


def make_sequence_batches(
    history_lengths: np.ndarray,
    length: int,
    batch_size: int,
    seed: int,
    epoch: int,
    shard: tuple[int, int] = (0, 1),
) -> list[Batch]:
    """Window batches of one epoch of one worker, the same for the same arguments.

    Windows of about the same length share a batch (sorted by their targets, ties in a seeded
    random order), so a batch's sequences are trimmed to its longest (the encoder drops slots
    that are padding in every row: most users are far shorter than ``length``); the batches then
    go in a seeded random order. Each batch holds about ``batch_size`` targets over all workers,
    whatever its windows' length (at least ``world x length``, so that every batch has a window
    for every worker); every rank takes the same share of every batch, so all ranks take the
    same number of steps (the windows left over by the share, and a last batch with fewer
    windows than workers, wait for the next epoch's draw).

    Args:
        history_lengths: ``(U,)`` training items of each user.
        length: the config's ``sequence_length``.
        batch_size: targets per step over all workers, as for the pair-wise losses.
        seed: with ``epoch``, fixes the ties' order and the batch order.
        epoch: the epoch.
        shard: ``(rank, world_size)``.

    Returns:
        Batches ``{"user_idx": (R,), "window": (R,), "pairs": ()}``, ``pairs`` this worker's
        targets in the batch (samples, for throughput).
    """
    rank, world_size = checked_shard(shard)
    users, window, targets = _windows(history_lengths, length)
    rng = np.random.default_rng([seed, epoch, 11])
    order = np.lexsort((rng.random(len(users)), targets))  # by targets, ties at random
    batch_of = _batch_ids(targets[order], max(batch_size, world_size * length))
    starts = np.flatnonzero(np.r_[True, np.diff(batch_of) > 0])
    spans = list(zip(starts, np.r_[starts[1:], len(order)], strict=True))
    batches = []
    for b in rng.permutation(len(spans)):
        lo, hi = spans[b]
        if hi - lo < world_size:
            continue
        idx = order[lo:hi][rank::world_size][: (hi - lo) // world_size]
        batches.append(
            {
                "user_idx": torch.as_tensor(users[idx], dtype=torch.int64),
                "window": torch.as_tensor(window[idx], dtype=torch.int64),
                "pairs": torch.tensor(int(targets[idx].sum())),
            }
        )
    return batches


def sequence_steps(history_lengths: np.ndarray, length: int, batch_size: int, world: int) -> int:
    """Optimizer steps of one epoch of :func:`make_sequence_batches` (the schedule's unit): the
    same every epoch, the batches' sizes depending on the windows' lengths alone."""
    _, _, targets = _windows(history_lengths, length)
    batch_of = _batch_ids(np.sort(targets), max(batch_size, world * length))
    return max(1, int((np.bincount(batch_of) >= world).sum())) if len(batch_of) else 1


def sequence_user_batch(ctx: TrainingContext, batch: Batch) -> Batch:
    """The user tower's input for a batch of windows, with each slot's target and positives.

    Returns:
        ``user_idx (R,)``, the user features ``feat:*`` (per window), ``sequence_items (R, L)``
        (left-padded with ``n_items``), ``sequence_slots (T,)`` (``window * L + slot`` of every
        slot with a target), and per target ``t`` (the loss's rows): ``target_rows (T,)``
        (``arange(T)``), ``target_items (T,)``, ``target_ratings (T,)`` (raw scale: implicit
        data's weights), ``row_users (T,)``; and ``positive_rows (M,)``, ``positive_items (M,)``:
        every training item of each target's user.
    """
    length, pad = ctx.config.sequence_length, ctx.n_items
    user_idx = batch["user_idx"].to(ctx.device)  # (R,)
    window = batch["window"].to(ctx.device)  # (R,)
    positions, rows, offsets = csr_gather(ctx.history_indptr, user_idx)  # (H,), (H,), (R,)
    n = (ctx.history_indptr[user_idx + 1] - ctx.history_indptr[user_idx])[rows]  # (H,)
    chrono = n - 1 - ctx.history_recency[positions].long()  # (H,) 0 = the oldest
    items = ctx.history_items[positions]  # (H,)
    first_target = n - window[rows] * length - length  # (H,) chronological index at slot 0
    slot_in = chrono - first_target + 1  # (H,) the slot that reads this item
    is_input = (slot_in >= 0) & (slot_in < length)
    sequence = torch.full((len(user_idx), length), pad, dtype=torch.int64, device=ctx.device)
    sequence[rows[is_input], slot_in[is_input]] = items[is_input]
    slot_target = chrono - first_target  # (H,) the slot scored against this item
    is_target = (slot_target >= 0) & (slot_target < length) & (chrono >= 1)
    slots = rows[is_target] * length + slot_target[is_target]  # (T,)
    order = torch.argsort(slots)
    slots, target_pos = slots[order], positions[is_target][order]
    target_window = slots // length  # (T,)
    # Every training item of each target's user: the window's entries, once per target.
    window_indptr = torch.cat([offsets, offsets.new_tensor([len(positions)])])
    every, every_target, _ = csr_gather(window_indptr, target_window)  # (M,), (M,)
    lo, hi = ctx.rating_scale
    return {
        "user_idx": user_idx,
        **ctx.user_inputs.gather(user_idx),
        "sequence_items": sequence,
        "sequence_slots": slots,
        "target_rows": torch.arange(len(slots), device=ctx.device),
        "target_items": ctx.history_items[target_pos],
        "target_ratings": ctx.history_ratings[target_pos] * (hi - lo) + lo,
        "row_users": user_idx[target_window],
        "positive_rows": every_target,
        "positive_items": items[every],
    }
