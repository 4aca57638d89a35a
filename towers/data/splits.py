"""Train/validation/test splits, on NumPy columns so they scale past one pandas frame.

``random`` reproduces the Microsoft Recommenders ML-100K benchmark protocol
(``python_stratified_split(ratio=0.75, filter_by="item", seed=42)``), so its numbers compare:
with rows in file order, ``np.random.seed(seed)`` and one ``np.random.rand(n)`` value per row; rows
sorted by (item, that value) and ranked 1.. within each item; a row is train when its rank is at
most ``round(ratio × item count)`` (NumPy's round-half-to-even), test otherwise.

``temporal`` holds out each user's last ``test_ratio`` of interactions by time (ties: file order).

``leave-one-out`` is the next-item protocol (RecBole's ``LS``, SASRec and S3-Rec): each user's last
interaction by time is test, the one before it validation, the rest train (ties in time: file
order); a user with fewer than :data:`LOO_MIN_INTERACTIONS` interactions stays in train only.

``given`` is the split the data gives (a benchmark's own train/valid/test,
:mod:`towers.data.given`): each row's part is read, not drawn.

The validation split is carved out of train with the same rule (per item for ``random``, each user's
latest for ``temporal``) under ``seed + 1``, so tuning and early stopping never see the test split.
For ``given`` data without a validation part it is carved per user: each user's latest
``valid_ratio`` of training rows when the data has timestamps, else a seeded per-user draw
(:func:`stratified_mask` over users under ``seed + 1``); a validation part the data gives is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("random", "temporal", "leave-one-out", "given")
LEAVE_ONE_OUT = "leave-one-out"
LOO_MIN_INTERACTIONS = 3  # a test, a validation and at least one training interaction
PARTS = ("train", "valid", "test")  # a given split's part codes are positions here (int8)


@dataclass(frozen=True)
class SplitIndices:
    """Row positions (into the interaction arrays) of each part; disjoint, together all rows."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _group_ranks(groups: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each row within its group by ``order_key``, and the group's size."""
    order = np.lexsort((order_key, groups))  # primary: group, then the key
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    sizes = np.diff(np.r_[starts, len(groups)])
    rank_sorted = np.arange(len(groups)) - np.repeat(starts, sizes) + 1
    rank = np.empty(len(groups), np.int64)
    rank[order] = rank_sorted
    size = np.empty(len(groups), np.int64)
    size[order] = np.repeat(sizes, sizes)
    return rank, size


def stratified_mask(groups: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Boolean mask of the ``ratio`` part of each group, rows ranked by a seeded uniform draw.

    Matches Recommenders' stratified splitter: the draw is ``np.random.seed(seed)`` followed by one
    ``np.random.rand(len(groups))`` (the legacy global generator, as the benchmark used).
    """
    np.random.seed(seed)  # the benchmark's exact generator state; legacy API on purpose
    draw = np.random.rand(len(groups))
    rank, size = _group_ranks(groups, draw)
    return rank <= np.round(ratio * size)


def _time_ranks(groups: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_group_ranks` by time, file order breaking ties (1 = a group's oldest row)."""
    position = np.arange(len(groups))
    key = np.asarray(timestamps, np.float64) + position / (len(groups) + 1)
    return _group_ranks(groups, key)


def chronological_mask(groups: np.ndarray, timestamps: np.ndarray, ratio: float) -> np.ndarray:
    """Mask of each group's earliest ``ratio`` of rows (stable: file order breaks time ties)."""
    rank, size = _time_ranks(groups, timestamps)
    return rank <= np.round(ratio * size)


def leave_one_out(
    user_id: np.ndarray, timestamp: np.ndarray, with_valid: bool = True
) -> tuple[SplitIndices, int]:
    """Each user's last interaction by time is test, the one before validation (``with_valid``;
    else it stays in train), the rest train; ties in time keep file order.

    Returns:
        The parts, and how many users have fewer than :data:`LOO_MIN_INTERACTIONS` interactions
        (all their rows stay in train).

    Raises:
        ValueError: no user has :data:`LOO_MIN_INTERACTIONS` interactions.
    """
    users = np.asarray(user_id)
    rank, size = _time_ranks(users, timestamp)
    eligible = size >= LOO_MIN_INTERACTIONS
    short_users = len(np.unique(users[~eligible])) if (~eligible).any() else 0
    if not eligible.any():
        raise ValueError(
            f"the leave-one-out split needs users with at least {LOO_MIN_INTERACTIONS} "
            f"interactions (a test, a validation and a training one); none of the "
            f"{len(np.unique(users)):,} users has (most has {int(size.max(initial=0))})"
        )
    test = eligible & (rank == size)
    valid = eligible & (rank == size - 1) if with_valid else np.zeros(len(users), bool)
    parts = SplitIndices(
        np.flatnonzero(~(test | valid)), np.flatnonzero(valid), np.flatnonzero(test)
    )
    return parts, short_users


def split_interactions(
    user_id: np.ndarray,
    item_id: np.ndarray,
    timestamp: np.ndarray,
    kind: str = "random",
    test_ratio: float = 0.25,
    valid_ratio: float = 0.1,
    seed: int = 42,
) -> SplitIndices:
    """Splits interaction rows into train, validation and test positions.

    Args:
        user_id, item_id, timestamp: ``(N,)`` columns in file order.
        kind: ``"random"`` (per-item stratified, the benchmark protocol) or ``"temporal"``
            (:func:`leave_one_out` for the next-item split, :func:`split_given` for given parts).
        test_ratio: share held out for test (0.25 for ``random`` as in the benchmark; the CLI uses
            0.2 for ``temporal``, "each user's last 20%").
        valid_ratio: share of the *training* rows carved out for validation (0 for none).
        seed: seed of the random split; validation uses ``seed + 1``.
    """
    if kind not in SPLITS[:2]:
        raise ValueError(f"unknown split {kind!r}; choose one of {SPLITS[:2]} (given: split_given)")
    if not 0 < test_ratio < 1 or not 0 <= valid_ratio < 1:
        raise ValueError(f"ratios must be in (0, 1): test={test_ratio}, valid={valid_ratio}")
    n = len(user_id)
    if kind == "random":
        train_mask = stratified_mask(np.asarray(item_id), 1 - test_ratio, seed)
    else:
        train_mask = chronological_mask(np.asarray(user_id), np.asarray(timestamp), 1 - test_ratio)
    train_pos = np.flatnonzero(train_mask)
    test_pos = np.flatnonzero(~train_mask)
    if valid_ratio == 0:
        return SplitIndices(train_pos, np.empty(0, np.int64), test_pos)
    if kind == "random":
        keep = stratified_mask(np.asarray(item_id)[train_pos], 1 - valid_ratio, seed + 1)
    else:
        keep = chronological_mask(
            np.asarray(user_id)[train_pos], np.asarray(timestamp)[train_pos], 1 - valid_ratio
        )
    assert len(train_pos) + len(test_pos) == n
    return SplitIndices(train_pos[keep], train_pos[~keep], test_pos)


def split_given(
    user_id: np.ndarray,
    timestamp: np.ndarray,
    part: np.ndarray,
    valid_ratio: float = 0.1,
    seed: int = 42,
    timed: bool = False,
) -> SplitIndices:
    """Row positions of each part of a split the data gives, carving validation if none is given.

    Args:
        user_id, timestamp: ``(N,)`` columns in file order.
        part: ``(N,)`` int8 codes, positions in :data:`PARTS` (0 train, 1 valid, 2 test).
        valid_ratio: share of each user's training rows carved out for validation when the data
            gives no validation part (0 for none).
        seed: validation draws use ``seed + 1``, as the other splits' carve-outs do.
        timed: the data has timestamps: carve each user's latest rows instead of a random draw.
    """
    if not 0 <= valid_ratio < 1:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    part = np.asarray(part)
    train_pos, valid_pos, test_pos = (np.flatnonzero(part == code) for code in range(3))
    if len(valid_pos) or valid_ratio == 0:
        return SplitIndices(train_pos, valid_pos, test_pos)
    users = np.asarray(user_id)[train_pos]
    if timed:
        keep = chronological_mask(users, np.asarray(timestamp)[train_pos], 1 - valid_ratio)
    else:
        keep = stratified_mask(users, 1 - valid_ratio, seed + 1)
    return SplitIndices(train_pos[keep], train_pos[~keep], test_pos)
