"""Encoded feature tables as tensors (:class:`TableTensors`), CSR row gathers, and the
recency ranks and two-hop bags built from the training history's CSR.

A batch's ``feat:*`` inputs come from :meth:`TableTensors.gather`: index and dense features by
row, bag features (lists) through :func:`csr_gather` of their offsets. ``towers.training.inputs``
builds the users' and items' tables once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from towers.data.features import EncodedTable
from towers.data.interactions import Interactions

Batch = dict[str, torch.Tensor]


def csr_gather(
    indptr: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries of CSR ``rows (B,)``: ``(positions (H,), row of each (H,), offsets (B,))``."""
    starts = indptr[rows]  # (B,)
    lengths = indptr[rows + 1] - starts  # (B,)
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,)
    entry_rows = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    positions = torch.arange(len(entry_rows), device=rows.device) - offsets[entry_rows]
    return positions + starts[entry_rows], entry_rows, offsets


def recency_ranks(train: Interactions) -> np.ndarray:
    """``(N,)`` rank of each row among its user's rows by timestamp, 0 = the most recent."""
    order = np.lexsort((train.item_idx, -train.timestamp, train.user_idx))  # user, newest first
    first = np.searchsorted(train.user_idx[order], train.user_idx[order], side="left")
    ranks = np.empty(len(train), dtype=np.int64)
    ranks[order] = np.arange(len(train)) - first
    return ranks


def csr_recency(train: Interactions) -> np.ndarray:
    """``(nnz,)`` recency rank of each entry of ``train.to_csr()`` (0 = the user's newest):
    the same (user, item) pattern built the same way as the CSR, so ``.data`` lines up with its
    ``indices``. One O(nnz log nnz) sort."""
    ranks = sp.csr_matrix(
        (recency_ranks(train) + 1, (train.user_idx, train.item_idx)),
        shape=(train.n_users, train.n_items),
    )
    return ranks.data - 1


def recent_entries(
    csr: sp.csr_matrix, recency: np.ndarray | None, n_recent: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr (U + 1,), positions in csr.indices)`` of each user's ``n_recent`` newest
    entries (``recency`` from :func:`csr_recency`), found once so that a step gathers
    ``O(batch x n_recent)`` of them; empty rows when ``n_recent`` is 0."""
    n_users = csr.shape[0]
    if n_recent <= 0 or recency is None:
        return np.zeros(n_users + 1, np.int64), np.zeros(0, np.int64)
    recent = np.flatnonzero(recency < n_recent)  # (R,) positions
    entry_user = np.repeat(np.arange(n_users), np.diff(csr.indptr))  # (nnz,)
    per_user = np.bincount(entry_user[recent], minlength=n_users)
    return np.concatenate([[0], np.cumsum(per_user)]), recent


@dataclass
class TableTensors:
    """One side's encoded features as tensors; :meth:`gather` gives a batch's ``feat:*`` inputs.

    ``index``/``dense`` features are ``(n, ...)`` tensors; ``bag`` features CSR ``values`` and
    ``offsets (n + 1,)`` (the encoded layout of ``towers.data.features``).
    """

    inputs: tuple[tuple[str, str, int], ...]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def build(cls, table: EncodedTable, device: str | torch.device = "cpu") -> TableTensors:
        tensors = {k: torch.tensor(v).to(device) for k, v in table.arrays.items()}  # copies
        return cls(table.inputs(), tensors)

    def to(self, device: str | torch.device) -> TableTensors:
        return TableTensors(self.inputs, {k: v.to(device) for k, v in self.tensors.items()})

    def gather(self, rows: torch.Tensor) -> Batch:
        out: Batch = {}
        for name, kind, _ in self.inputs:
            values = self.tensors[name]
            if kind == "bag":
                positions, _, offsets = csr_gather(self.tensors[f"{name}:offsets"], rows)
                out[f"feat:{name}"], out[f"feat:{name}:offsets"] = values[positions], offsets
            else:
                out[f"feat:{name}"] = values[rows]
        return out

    def profile_matrix(self, name: str) -> torch.Tensor:
        """``(n, size - 1)`` multi-hot of an index or bag feature (the unknown 0 left out)."""
        kind, size = next((k, s) for n, k, s in self.inputs if n == name)
        values = self.tensors[name]
        n = len(self.tensors[f"{name}:offsets"]) - 1 if kind == "bag" else len(values)
        if kind == "bag":
            counts = self.tensors[f"{name}:offsets"].diff()
            rows = torch.repeat_interleave(torch.arange(n, device=values.device), counts)
        else:
            rows = torch.arange(n, device=values.device)
        dense = torch.zeros(n, size, device=values.device)
        dense[rows, values] = 1.0
        return dense[:, 1:]


def two_hop_bags(
    item_rows: torch.Tensor,
    item_user_indptr: torch.Tensor,
    item_users: torch.Tensor,
    history_indptr: torch.Tensor,
    history_items: torch.Tensor,
    debias: float = 0.0,
) -> Batch:
    """The training users of ``(N,)`` item rows (CSR ``item_user_indptr``/``item_users``) and
    their whole histories (CSR ``history_indptr``/``history_items``) as two bags, for each
    item's mean over its users of their mean item row: ``hop_user_items (H,)``,
    ``hop_user_offsets (U,)``, ``hop_user_weights (H,)`` (the ``U`` distinct users' means,
    :func:`user_mean_weights`), then ``hop_item_users (P,)`` (indices into those ``U``),
    ``hop_item_offsets (N,)``, ``hop_item_weights (P,)``. An item row without users gets an
    empty bag."""
    positions, rows, offsets = csr_gather(item_user_indptr, item_rows)  # (P,), (P,), (N,)
    users, local = torch.unique(item_users[positions], return_inverse=True)  # (U,), (P,)
    degree = torch.bincount(rows, minlength=len(item_rows)).clamp(min=1)  # (N,)
    entries, entry_users, user_offsets = csr_gather(history_indptr, users)  # (H,)
    items = history_items[entries]  # (H,)
    return {
        "item_id_row": item_rows,
        "hop_user_items": items,
        "hop_user_offsets": user_offsets,
        "hop_user_weights": user_mean_weights(
            items, entry_users, len(users), item_user_indptr, debias
        ),
        "hop_item_users": local,
        "hop_item_offsets": offsets,
        "hop_item_weights": 1.0 / degree[rows].float(),
    }


def user_mean_weights(
    items: torch.Tensor,
    users: torch.Tensor,
    n_users: int,
    item_user_indptr: torch.Tensor,
    debias: float,
) -> torch.Tensor:
    """``(H,)`` weights of history entries ``items`` (H,) of users ``users`` (H,), each below
    ``n_users``, which sum to 1 per user: item ``j`` weighs ``deg_j ** -debias`` (``deg_j`` its
    training users), so that with ``debias`` > 0 a popular item says less about a user than a
    rare one (LightGCN's symmetric normalisation: 0.5); 0 is the plain mean."""
    if debias == 0:
        weights = torch.ones(len(items), device=items.device)
    else:
        degree = item_user_indptr.diff().clamp(min=1).float()  # (n_items + 1,)
        weights = degree[items] ** -debias  # (H,)
    total = weights.new_zeros(n_users).index_add_(0, users, weights)  # (U,)
    return weights / total[users]


def unknown_row(inputs: tuple[tuple[str, str, int], ...]) -> dict[str, np.ndarray]:
    """One row of a table with every feature unknown: index 0, empty bags, zeros plus missing
    flags (the encoders' reserved values), for ``inputs`` (``EncodedTable.inputs``)."""
    out: dict[str, np.ndarray] = {}
    for name, kind, size in inputs:
        if kind == "index":
            out[name] = np.zeros(1, np.int64)
        elif kind == "bag":
            out[name], out[f"{name}:offsets"] = np.zeros(0, np.int64), np.zeros(2, np.int64)
        else:
            out[name] = np.zeros((1, size), np.float32)
            out[name][0, -1] = 1.0  # the missing flag (numeric: [z, missing]; vectors: last)
    return out


def newest_sequence(
    items: torch.Tensor,
    rows: torch.Tensor,
    recency: torch.Tensor,
    n_rows: int,
    length: int,
    pad: int,
) -> torch.Tensor:
    """``(B, L)`` each row's ``length`` newest entries in time order, the newest at slot
    ``L - 1``, left-padded with ``pad`` (the sequence user tower's input).

    Args:
        items: ``(H,)`` history entries; ``rows (H,)`` their rows; ``recency (H,)`` their
            recency (0 = the newest; ranks need not be consecutive).
        n_rows: ``B``.
        length: ``L``.
        pad: the padding item (the item table's "unknown" row).
    """
    sequence = torch.full((n_rows, length), pad, dtype=torch.int64, device=items.device)
    if len(items) == 0:
        return sequence
    key = rows.double() * (float(recency.max()) + 1.0) + recency.double()
    order = torch.argsort(key)  # by row, newest first
    sorted_rows = rows[order]
    rank = torch.arange(len(order), device=items.device) - torch.searchsorted(
        sorted_rows, sorted_rows
    )  # (H,) 0 = the row's newest
    keep = rank < length
    sequence[sorted_rows[keep], length - 1 - rank[keep]] = items[order][keep]
    return sequence


def checked_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(rank, world_size)`` of a worker's share of an epoch, or ValueError when the rank is
    outside ``[0, world_size)`` (every batch maker takes its share this way)."""
    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard rank {rank} outside [0, {world_size})")
    return rank, world_size
