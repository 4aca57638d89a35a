"""What a training step needs besides its batch: :class:`TrainingContext`, built once per worker.

The feature tables, the training history as CSR (items, centred ratings, recency ranks), item
popularity (for logQ), the config and the rating scale, as tensors on the worker's device. It
turns a batch's ``user_idx``/``item_idx`` into the model's user and item inputs (history pools
with the target item left out, dropout of history entries, cold-start users from features and
liked items). ``towers.training`` runs the loop around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.training.tables import (
    Batch,
    TableTensors,
    csr_gather,
    csr_recency,
    newest_sequence,
    recent_entries,
    two_hop_bags,
    unknown_row,
)


def infer_rating_scale(train: Interactions) -> tuple[float, float]:
    """``(min, max)`` of the training ratings, widened to include [0, 1] when all equal (prefer
    the data set's own scale, ``PreparedData.rating_scale``, where it is known)."""
    if len(train) == 0:
        return (0.0, 1.0)
    lo, hi = float(train.rating.min()), float(train.rating.max())
    return (lo, hi) if hi > lo else (min(0.0, lo), max(hi, 1.0))


@dataclass
class TrainingContext:
    """Tensors shared by every step of one worker, built once from features and training data.

    Attributes:
        config: the model/loss config.
        rating_scale: ``(lo, hi)`` raw rating range, mapped to [0, 1] for the losses.
        user_inputs: the users' encoded features.
        item_inputs: the items' encoded features.
        item_profiles: ``name -> (n_items, V)`` multi-hot of each profiled item feature.
        item_id_row: ``(n_items,)`` int64 the item-id embedding row: the item's own, or
            ``n_items`` ("unknown item") for items with no training pairs.
        history_indptr, history_items: the training history as CSR (``(n_users + 1,)`` row
            pointers, ``(nnz,)`` items), int64.
        history_ratings: ``(nnz,)`` float32 their ratings scaled to [0, 1].
        recent_indptr: ``(n_users + 1,)`` int64 CSR row pointers of each user's
            ``config.recent_history`` most recent entries (ties broken by item; empty rows when
            the config pools no recent items).
        recent_positions: their positions in ``history_items``.
        history_recency: ``(nnz,)`` float32 each entry's recency rank among its user's entries
            (0 = the newest), for ``config.history_decay < 1``; zeros otherwise (not sorted).
        item_log_q: ``(n_items,)`` float32 log of each item's share of training pairs.
        item_user_indptr, item_users: each item's training users as CSR, row ``n_items``
            (unknown) empty (with ``config.item_two_hop``; one empty row otherwise), int64.
        two_hop_cache: the catalog's two-hop bags and the steps' table (:meth:`item_batch`).
    """

    config: TwoTowerConfig
    rating_scale: tuple[float, float]
    user_inputs: TableTensors
    item_inputs: TableTensors
    item_profiles: dict[str, torch.Tensor]
    item_id_row: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor
    history_ratings: torch.Tensor
    recent_indptr: torch.Tensor
    recent_positions: torch.Tensor
    history_recency: torch.Tensor
    item_log_q: torch.Tensor
    item_user_indptr: torch.Tensor
    item_users: torch.Tensor
    two_hop_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        features: FeatureTables,
        train: Interactions,
        config: TwoTowerConfig,
        rating_scale: tuple[float, float] | None = None,
        device: str | torch.device = "cpu",
    ) -> TrainingContext:
        if (features.n_users, features.n_items) != (train.n_users, train.n_items):
            raise ValueError(
                f"features cover ({features.n_users}, {features.n_items}) users/items, training "
                f"data ({train.n_users}, {train.n_items})"
            )
        rating_scale = rating_scale or infer_rating_scale(train)
        csr = train.to_csr()  # sorted by user, then item; values are raw ratings
        # Recency ranks (one sort) only where something reads them: nothing by default.
        needed = (
            config.recent_history > 0
            or (config.history_decay or 1.0) < 1.0
            or bool(config.causal_folds)
            or config.sequential
        )
        recency = csr_recency(train) if needed else None
        recent_indptr, recent = recent_entries(csr, recency, config.recent_history)
        lo, hi = rating_scale
        counts = np.bincount(train.item_idx, minlength=train.n_items).astype(np.float64)
        log_q = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))
        t = torch.tensor  # copies: the inputs may be read-only views
        item_inputs = TableTensors.build(features.items)
        pooled = config.use_profiles and not config.sequential  # the sequence tower reads none
        profiles = {n: item_inputs.profile_matrix(n) for n, _ in config.item_profiles if pooled}
        id_row = np.where(counts > 0, np.arange(train.n_items), train.n_items)
        by_item = csr.T.tocsr() if config.item_two_hop else sp.csr_matrix((0, 0))
        return cls(
            config=config,
            rating_scale=(float(lo), float(hi)),
            user_inputs=TableTensors.build(features.users),
            item_inputs=item_inputs,
            item_profiles=profiles,
            item_id_row=t(id_row, dtype=torch.int64),
            history_indptr=t(csr.indptr, dtype=torch.int64),
            history_items=t(csr.indices, dtype=torch.int64),
            history_ratings=t((csr.data - lo) / (hi - lo), dtype=torch.float32),
            recent_indptr=t(recent_indptr, dtype=torch.int64),
            recent_positions=t(recent, dtype=torch.int64),
            history_recency=t(
                np.zeros(csr.nnz) if recency is None else recency, dtype=torch.float32
            ),
            item_log_q=t(log_q, dtype=torch.float32),
            item_user_indptr=t(np.append(by_item.indptr, by_item.nnz), dtype=torch.int64),
            item_users=t(by_item.indices, dtype=torch.int64),
        ).to(device)

    @property
    def device(self) -> torch.device:
        return self.history_items.device

    def to(self, device: str | torch.device) -> TrainingContext:
        moved = {
            k: v.to(device) if isinstance(v, (torch.Tensor, TableTensors)) else v
            for k, v in vars(self).items()
        }
        moved["item_profiles"] = {k: v.to(device) for k, v in self.item_profiles.items()}
        moved["two_hop_cache"] = {}
        return TrainingContext(**moved)

    def scale_rating(self, rating: torch.Tensor) -> torch.Tensor:
        """Raw ratings → [0, 1]."""
        lo, hi = self.rating_scale
        return (rating.float() - lo) / (hi - lo)

    def user_batch(
        self,
        user_idx: torch.Tensor,
        exclude_items: torch.Tensor | None = None,
        history_dropout: float = 0.0,
        max_history: int = 0,
        positives: bool = True,
    ) -> Batch:
        """The user tower's input for ``(B,)`` users, their history pooled as a weighted bag.

        Args:
            user_idx: ``(B,)`` user indices.
            exclude_items: ``(B,)`` the target item of each row, removed from that row's history
                (training pair ``(u, i)`` must not see ``i`` in ``u``'s pool), or None.
            history_dropout: chance of dropping each remaining history item (training only).
            max_history: when > 0, a row whose user has ``n > max_history`` history items pools
                ``max_history`` of them drawn uniformly (with replacement): an unbiased sample
                of the mean whose cost is ``O(B x max_history)``, however long the histories
                (training only; shorter histories are pooled whole).
            positives: also return every training item of every row (``positive_rows``,
                ``positive_items``), which costs ``O(B x history length)``; only the full
                softmax that masks training positives needs them.

        Returns:
            Dict with ``user_idx (B,)``, the user features ``feat:*``, ``history_items (H,)`` (the
            kept entries only), ``history_rows (H,)`` (the row of each entry),
            ``history_offsets (B,)``, ``history_weights (H,)`` (``1/kept``, so each bag is a mean),
            ``profile:<name> (B, V)``, ``history_rating_weights (H,)`` (``weight x (rating - bag
            mean)``), ``history_mean_rating (B,)`` (bag mean, ratings scaled to [0, 1]), and
            ``positive_rows``/``positive_items`` when ``positives``.
        """
        user_idx = user_idx.to(self.device)
        exclude = None if exclude_items is None else exclude_items.to(self.device)
        if max_history > 0:
            position, rows = self._sampled_history(user_idx, max_history)
        else:
            position, rows, _ = csr_gather(self.history_indptr, user_idx)
        items = self.history_items[position]  # (H,)
        keep = torch.ones_like(items, dtype=torch.bool)
        if exclude is not None:
            keep = items != exclude[rows]
        if history_dropout > 0:
            keep = keep & (torch.rand(items.shape, device=self.device) >= history_dropout)
        items, rows, position = items[keep], rows[keep], position[keep]
        counts = torch.bincount(rows, minlength=len(user_idx))  # (B,)
        batch = self.pool_history(
            user_idx,
            self.user_inputs.gather(user_idx),
            items,
            self.history_ratings[position],
            rows,
            torch.cumsum(counts, 0) - counts,
            self.history_recency[position],
        )
        if positives:
            every, every_rows, _ = csr_gather(self.history_indptr, user_idx)
            batch["positive_rows"], batch["positive_items"] = every_rows, self.history_items[every]
        if self.config.recent_history > 0:
            recent, recent_rows, _ = csr_gather(self.recent_indptr, user_idx)
            recent_items = self.history_items[self.recent_positions[recent]]
            if exclude is not None:
                not_target = recent_items != exclude[recent_rows]
                recent_items, recent_rows = recent_items[not_target], recent_rows[not_target]
            batch.update(self.recent_bag(recent_items, recent_rows, len(user_idx)))
        return batch

    def _sampled_history(
        self, user_idx: torch.Tensor, max_history: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History positions ``(H,)`` and their rows ``(H,)``, rows sorted: a row's whole
        history when it has at most ``max_history`` items, else ``max_history`` uniform draws."""
        starts = self.history_indptr[user_idx]  # (B,)
        lengths = self.history_indptr[user_idx + 1] - starts  # (B,)
        take = lengths.clamp(max=max_history)  # (B,)
        rows = torch.repeat_interleave(torch.arange(len(user_idx), device=self.device), take)
        slot = torch.arange(len(rows), device=self.device) - (torch.cumsum(take, 0) - take)[rows]
        n = lengths[rows]  # (H,)
        drawn = (torch.rand(len(rows), device=self.device) * n).long().clamp(max=n - 1)
        return starts[rows] + torch.where(n > max_history, drawn, slot), rows

    def recent_bag(self, items: torch.Tensor, rows: torch.Tensor, n_rows: int) -> Batch:
        """Mean bags of recent items: ``recent_items``, ``recent_offsets``, ``recent_weights``."""
        counts = torch.bincount(rows, minlength=n_rows)  # (B,)
        return {
            "recent_items": items,
            "recent_offsets": torch.cumsum(counts, 0) - counts,
            "recent_weights": 1.0 / counts.clamp(min=1)[rows].float(),
        }

    def cold_user_batch(
        self,
        features: dict[str, np.ndarray] | None,
        liked_items: list[int],
        ratings: np.ndarray | None = None,
    ) -> Batch:
        """A batch of one user who is not in the training data (the "unknown user" id row).

        ``ratings`` (raw scale, one per liked item) feed the rating-pooled history as a training
        user's do. Without them every liked item gets the mid-scale rating 0.5, so the
        rating-centred pool is empty and the mean-rating input is 0, exactly as for the training
        rows whose ratings the model hides (``rating_history_dropout``).
        """
        items = torch.as_tensor(list(liked_items), dtype=torch.int64, device=self.device)
        if ratings is None:
            scaled = torch.full((len(items),), 0.5, device=self.device)
        else:
            if len(ratings) != len(items):
                raise ValueError(f"{len(ratings)} ratings for {len(items)} liked items")
            raw = torch.as_tensor(np.asarray(ratings, np.float32), device=self.device)
            scaled = self.scale_rating(raw).clamp(0.0, 1.0)
        if features is None:  # every feature unknown: the encoders' reserved values
            features = unknown_row(self.user_inputs.inputs)
        row = TableTensors(
            self.user_inputs.inputs,
            {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in features.items()},
        )
        batch = self.pool_history(
            torch.tensor([self.config.n_users], device=self.device),
            row.gather(torch.zeros(1, dtype=torch.int64, device=self.device)),
            items,
            scaled,
            torch.zeros_like(items),
            torch.zeros(1, dtype=torch.int64, device=self.device),
            torch.arange(len(items) - 1, -1, -1, device=self.device).float(),  # last = newest
        )
        if self.config.recent_history > 0:  # the last liked items count as the most recent
            recent = items[-self.config.recent_history :] if len(items) else items
            batch.update(self.recent_bag(recent, torch.zeros_like(recent), 1))
        return batch

    def pool_history(
        self,
        user_idx: torch.Tensor,
        user_features: Batch,
        items: torch.Tensor,
        ratings: torch.Tensor,
        rows: torch.Tensor,
        offsets: torch.Tensor,
        recency: torch.Tensor | None = None,
    ) -> Batch:
        """Pools the history entries ``items (H,)`` (``rows (H,)`` sorted) as per-row means,
        weighted by ``history_decay ** recency (H,)`` when the config decays the history."""
        zeros = torch.zeros(len(user_idx), device=self.device)
        decay = self.config.history_decay
        if decay < 1.0 and recency is not None:
            raw = torch.pow(decay, recency.float())  # (H,)
        else:
            raw = torch.ones_like(ratings)  # (H,)
        kept = zeros.index_add(0, rows, raw)  # (B,)
        weights = raw / kept.clamp(min=1e-12)[rows]  # (H,) each non-empty bag sums to 1
        # The mean over the pooled entries only: the target's own rating must not leak into it.
        mean_rating = zeros.index_add(0, rows, weights * ratings)  # (B,) in [0, 1]
        rating_weights = weights * (ratings - mean_rating[rows])  # (H,)
        sequence = {}
        if self.config.sequential and recency is not None:
            length = self.config.sequence_length
            sequence["sequence_items"] = newest_sequence(
                items, rows, recency, len(user_idx), length, self.n_items
            )  # (B, L)
        profiles = {
            f"profile:{name}": F.embedding_bag(
                items, matrix, offsets, mode="sum", per_sample_weights=weights
            )  # (B, V)
            for name, matrix in self.item_profiles.items()
        }
        return {
            "user_idx": user_idx,
            **user_features,
            **profiles,
            **sequence,
            "history_items": items,
            "history_rows": rows,
            "history_offsets": offsets,
            "history_weights": weights,
            "history_rating_weights": rating_weights,
            "history_mean_rating": mean_rating,
        }

    @property
    def n_items(self) -> int:
        return len(self.item_id_row)

    def candidate_log_q(
        self, candidate_idx: torch.Tensor, n_batch: int, n_drawn: int
    ) -> torch.Tensor:
        """``(C,)`` log probability that each candidate is in a step's candidate set.

        A step's candidates are its ``n_batch`` positives (drawn, like all training pairs, in
        proportion to popularity ``p``) and ``n_drawn`` items drawn uniformly from the catalog,
        so item ``j`` is among them with probability about ``n_batch p_j + n_drawn / n_items``
        (Yang et al., WWW 2020). Without drawn items that is ``log p_j`` up to a constant, which
        the softmax ignores: ``log p_j`` is returned, as the in-batch loss always used.
        """
        log_p = self.item_log_q[candidate_idx]  # (C,)
        if n_drawn == 0:
            return log_p
        return torch.log(n_batch * log_p.exp() + n_drawn / self.n_items)

    def item_batch(self, item_idx: torch.Tensor | None = None, training: bool = False) -> Batch:
        """The item tower's input for ``(N,)`` items, or for the whole catalog when None.

        With ``config.item_two_hop``, each item's two-hop neighbourhood: exact bags (the whole
        catalog's, :meth:`catalog_two_hop`, read at ``hop_rows``), or in a training step the
        rows of the table ``towers.training.two_hop.refresh_two_hop`` caches.
        """
        whole_catalog = item_idx is None
        if whole_catalog:
            item_idx = torch.arange(self.n_items, device=self.device)
        item_idx = item_idx.to(self.device)
        batch = {
            "item_idx": item_idx,
            "item_id_row": self.item_id_row[item_idx],
            **self.item_inputs.gather(item_idx),
        }
        if self.config.item_two_hop:
            if not training and whole_catalog:  # the catalog's bags, built once (~1 s on Gowalla)
                bags = {k: v for k, v in self.catalog_two_hop().items() if k != "item_id_row"}
                batch.update(bags, hop_rows=batch["item_id_row"])
            elif not training:
                batch.update(self.two_hop_exact(batch["item_id_row"]))
            elif "table" in self.two_hop_cache:
                batch["hop_table"] = self.two_hop_cache["table"]  # (n_items + 1, E)
                batch["hop_rows"] = batch["item_id_row"]
            else:
                raise RuntimeError("item_batch(training=True): refresh_two_hop has not run")
        return batch

    def two_hop_exact(self, item_rows: torch.Tensor) -> Batch:
        """The two-hop bags of ``(N,)`` item rows (``n_items``: none) over the training graph
        (``towers.training.tables.two_hop_bags``)."""
        graph = (self.item_user_indptr, self.item_users, self.history_indptr, self.history_items)
        return two_hop_bags(item_rows, *graph, self.config.two_hop_debias)

    def catalog_two_hop(self) -> Batch:
        """:meth:`two_hop_exact` of every item row, the unknown's last; built once, read by
        whole-catalog :meth:`item_batch` and ``towers.training.two_hop.refresh_two_hop``."""
        if "catalog" not in self.two_hop_cache:
            rows = torch.arange(self.n_items + 1, device=self.device)
            self.two_hop_cache["catalog"] = self.two_hop_exact(rows)
        return self.two_hop_cache["catalog"]
