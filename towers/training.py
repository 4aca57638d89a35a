"""The plain training loop: framework-free, so the same code runs in a bare process and in every
Ray Train DDP worker (``train_loop_per_worker`` calls :func:`train_epoch` on its shard).

- :class:`TrainingContext` — the per-worker tensors the loop needs besides the batch: feature
  tables, the training history as CSR, item popularity (for logQ), the config and the rating
  scale. It turns ``user_idx``/``item_idx`` into the model's user and item batches.
- :func:`make_batches` — deterministic per-epoch shuffling and sharding for the bare loop.
- :func:`train_epoch` — one pass; works on a plain ``TwoTower`` or one wrapped in DDP.
- :func:`validate` — full-catalog Recall@k / NDCG@k (training items excluded) and RMSE.
- :func:`fit` — epochs with early stopping on the validation metric, for tests and benchmarks.

A training batch is ``{"user_idx": (B,) int64, "item_idx": (B,) int64, "rating": (B,) float32}``
with ratings on the data set's *raw* scale (1-5 for MovieLens); the loop scales them to [0, 1]
with ``ctx.rating_scale``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from towers.features import FeatureTables
from towers.interactions import Interactions
from towers.losses import full_softmax, in_batch_softmax, pointwise_bce, rating_mse
from towers.metrics import ranking_metrics
from towers.model import TwoTower, TwoTowerConfig
from towers.recommender import top_k_excluding

Batch = dict[str, torch.Tensor]


def unwrap(model: nn.Module) -> TwoTower:
    """The ``TwoTower`` inside a DDP (or any ``.module``) wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def infer_rating_scale(train: Interactions) -> tuple[float, float]:
    """``(min, max)`` of the training ratings; widened to include [0, 1] when they are all equal.

    Prefer passing the data set's own scale (``PreparedData.rating_scale``) where it is known.
    """
    if len(train) == 0:
        return (0.0, 1.0)
    lo, hi = float(train.rating.min()), float(train.rating.max())
    return (lo, hi) if hi > lo else (min(0.0, lo), max(hi, 1.0))


def recency_ranks(train: Interactions) -> np.ndarray:
    """``(N,)`` rank of each row among its user's rows by timestamp, 0 = the most recent."""
    order = np.lexsort((train.item_idx, -train.timestamp, train.user_idx))  # user, newest first
    first = np.searchsorted(train.user_idx[order], train.user_idx[order], side="left")
    ranks = np.empty(len(train), dtype=np.int64)
    ranks[order] = np.arange(len(train)) - first
    return ranks


@dataclass
class TrainingContext:
    """Tensors shared by every step of one worker, built once from features and training data.

    Attributes:
        config: the model/loss config.
        rating_scale: ``(lo, hi)`` raw rating range, mapped to [0, 1] for the losses.
        user_features: ``(n_users, 3)`` int64 age bucket, gender, occupation.
        item_genres: ``(n_items, G)`` float32 genre multi-hot.
        item_year_bucket: ``(n_items,)`` int64.
        history_indptr: ``(n_users + 1,)`` int64 CSR row pointers of the training history.
        history_items: ``(nnz,)`` int64 CSR column indices (the items of each user).
        history_ratings: ``(nnz,)`` float32 their ratings scaled to [0, 1].
        history_recency: ``(nnz,)`` int64 rank of each entry among its user's items by time,
            0 = the most recent (ties broken by item).
        item_log_q: ``(n_items,)`` float32 log of each item's share of training pairs.
    """

    config: TwoTowerConfig
    rating_scale: tuple[float, float]
    user_features: torch.Tensor
    item_genres: torch.Tensor
    item_year_bucket: torch.Tensor
    history_indptr: torch.Tensor
    history_items: torch.Tensor
    history_ratings: torch.Tensor
    history_recency: torch.Tensor
    item_log_q: torch.Tensor

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
        recency = recency_ranks(train)  # (nnz,) per row of train
        # Same (user, item) pattern built the same way: .data lines up with csr.indices.
        recency_csr = sp.csr_matrix(
            (recency + 1, (train.user_idx, train.item_idx)), shape=(train.n_users, train.n_items)
        )
        lo, hi = rating_scale
        counts = np.bincount(train.item_idx, minlength=train.n_items).astype(np.float64)
        log_q = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0))
        t = torch.tensor  # copies: the inputs may be read-only views
        return cls(
            config=config,
            rating_scale=(float(lo), float(hi)),
            user_features=t(features.user_features, dtype=torch.int64),
            item_genres=t(features.item_genres, dtype=torch.float32),
            item_year_bucket=t(features.item_year_bucket, dtype=torch.int64),
            history_indptr=t(csr.indptr, dtype=torch.int64),
            history_items=t(csr.indices, dtype=torch.int64),
            history_ratings=t((csr.data - lo) / (hi - lo), dtype=torch.float32),
            history_recency=t(recency_csr.data - 1, dtype=torch.int64),
            item_log_q=t(log_q, dtype=torch.float32),
        ).to(device)

    @property
    def device(self) -> torch.device:
        return self.history_items.device

    def to(self, device: str | torch.device) -> TrainingContext:
        moved = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
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
    ) -> Batch:
        """The user tower's input for ``(B,)`` users, their history pooled as a weighted bag.

        Args:
            user_idx: ``(B,)`` user indices.
            exclude_items: ``(B,)`` the target item of each row, removed from that row's history
                (training pair ``(u, i)`` must not see ``i`` in ``u``'s pool), or None.
            history_dropout: chance of dropping each remaining history item (training only).
            max_history: when > 0, a row with ``n`` history items keeps each with chance
                ``max_history / n`` (so about ``max_history`` of them): an unbiased sample of the
                mean that bounds the cost of long histories (training only).

        Returns:
            Dict with ``user_idx (B,)``, ``user_features (B, 3)``, ``history_items (H,)`` (the
            kept entries only), ``history_rows (H,)`` (the row of each entry),
            ``history_offsets (B,)``, ``history_weights (H,)`` (``1/kept``, so each bag is a mean),
            ``genre_profile (B, G)``, ``history_rating_weights (H,)`` (``weight x (rating - bag
            mean)``), ``history_mean_rating (B,)`` (bag mean, ratings scaled to [0, 1]), and
            ``positive_rows``/``positive_items`` — every training item of every row, for losses
            that must not treat them as negatives.
        """
        user_idx = user_idx.to(self.device)
        starts = self.history_indptr[user_idx]  # (B,)
        lengths = self.history_indptr[user_idx + 1] - starts  # (B,)
        offsets = torch.cumsum(lengths, 0) - lengths  # (B,)
        rows = torch.repeat_interleave(torch.arange(len(user_idx), device=self.device), lengths)
        position_all = torch.arange(len(rows), device=self.device) - offsets[rows] + starts[rows]
        all_items = self.history_items[position_all]  # (H,)
        not_target = torch.ones_like(all_items, dtype=torch.bool)
        if exclude_items is not None:
            not_target = all_items != exclude_items.to(self.device)[rows]
        keep = not_target
        chance = torch.ones(len(user_idx), device=self.device) * (1.0 - history_dropout)  # (B,)
        if max_history > 0:
            chance = chance * (max_history / lengths.clamp(min=1)).clamp(max=1.0)
        if history_dropout > 0 or max_history > 0:
            keep = keep & (torch.rand(all_items.shape, device=self.device) < chance[rows])
        items, kept_rows, position = all_items[keep], rows[keep], position_all[keep]
        counts = torch.bincount(kept_rows, minlength=len(user_idx))  # (B,)
        feats = self.user_features[user_idx]  # (B, 3)
        batch = self._user_batch(
            user_idx,
            feats,
            items,
            self.history_ratings[position],
            kept_rows,
            torch.cumsum(counts, 0) - counts,
        )
        batch["positive_rows"], batch["positive_items"] = rows, all_items
        if self.config.recent_history > 0:
            recent = not_target & (self.history_recency[position_all] < self.config.recent_history)
            batch.update(self._recent_bag(all_items[recent], rows[recent], len(user_idx)))
        return batch

    def _recent_bag(self, items: torch.Tensor, rows: torch.Tensor, n_rows: int) -> Batch:
        """Mean bags of recent items: ``recent_items``, ``recent_offsets``, ``recent_weights``."""
        counts = torch.bincount(rows, minlength=n_rows)  # (B,)
        return {
            "recent_items": items,
            "recent_offsets": torch.cumsum(counts, 0) - counts,
            "recent_weights": 1.0 / counts.clamp(min=1)[rows].float(),
        }

    def cold_user_batch(self, features_row: np.ndarray, liked_items: list[int]) -> Batch:
        """A batch of one user who is not in the training data (the "unknown user" id row).

        Their ratings are unknown: every liked item gets the mid-scale rating 0.5, so the
        rating-centred pool is empty and the mean-rating input is 0, exactly as for the training
        rows whose ratings the model hides (``rating_history_dropout``).
        """
        items = torch.as_tensor(list(liked_items), dtype=torch.int64, device=self.device)
        feats = torch.as_tensor(np.asarray(features_row), dtype=torch.int64, device=self.device)
        batch = self._user_batch(
            torch.tensor([self.config.n_users], device=self.device),
            feats.reshape(1, -1),
            items,
            torch.full((len(items),), 0.5, device=self.device),
            torch.zeros_like(items),
            torch.zeros(1, dtype=torch.int64, device=self.device),
        )
        if self.config.recent_history > 0:  # the last liked items count as the most recent
            recent = items[-self.config.recent_history :] if len(items) else items
            batch.update(self._recent_bag(recent, torch.zeros_like(recent), 1))
        return batch

    def _user_batch(
        self,
        user_idx: torch.Tensor,
        user_features: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        rows: torch.Tensor,
        offsets: torch.Tensor,
    ) -> Batch:
        """Pools the history entries ``items (H,)`` (``rows (H,)`` sorted) as per-row means."""
        zeros = torch.zeros(len(user_idx), device=self.device)
        kept = zeros.index_add(0, rows, torch.ones_like(ratings))  # (B,)
        weights = 1.0 / kept.clamp(min=1.0)[rows]  # (H,) each non-empty bag sums to 1
        # The mean over the pooled entries only: the target's own rating must not leak into it.
        mean_rating = zeros.index_add(0, rows, weights * ratings)  # (B,) in [0, 1]
        rating_weights = weights * (ratings - mean_rating[rows])  # (H,)
        genre_profile = F.embedding_bag(
            items, self.item_genres, offsets, mode="sum", per_sample_weights=weights
        )  # (B, G)
        return {
            "user_idx": user_idx,
            "user_features": user_features,
            "history_items": items,
            "history_rows": rows,
            "history_offsets": offsets,
            "history_weights": weights,
            "genre_profile": genre_profile,
            "history_rating_weights": rating_weights,
            "history_mean_rating": mean_rating,
        }

    def item_batch(self, item_idx: torch.Tensor | None = None) -> Batch:
        """The item tower's input for ``(N,)`` items, or for the whole catalog when None."""
        if item_idx is None:
            item_idx = torch.arange(len(self.item_year_bucket), device=self.device)
        item_idx = item_idx.to(self.device)
        return {
            "item_idx": item_idx,
            "item_genres": self.item_genres[item_idx],
            "item_year_bucket": self.item_year_bucket[item_idx],
        }


def make_batches(
    train: Interactions,
    batch_size: int,
    seed: int,
    epoch: int,
    shard: tuple[int, int] = (0, 1),
) -> list[Batch]:
    """Shuffled training batches for one epoch of one worker, the same for the same arguments.

    Every worker gets ``len(train) // world_size`` pairs (the remainder is skipped this epoch) so
    that all DDP ranks take the same number of steps.
    """
    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard rank {rank} outside [0, {world_size})")
    order = np.random.default_rng([seed, epoch]).permutation(len(train))
    mine = order[rank::world_size][: len(train) // world_size]
    user = torch.tensor(train.user_idx, dtype=torch.int64)  # copies: inputs may be read-only
    item = torch.tensor(train.item_idx, dtype=torch.int64)
    rating = torch.tensor(train.rating, dtype=torch.float32)
    batches = []
    for start in range(0, len(mine), batch_size):
        idx = torch.as_tensor(mine[start : start + batch_size])
        batches.append({"user_idx": user[idx], "item_idx": item[idx], "rating": rating[idx]})
    return batches


def make_optimizer(model: nn.Module, config: TwoTowerConfig) -> torch.optim.Optimizer:
    """Adam as in the paper; AdamW (decoupled decay) when ``weight_decay > 0``."""
    if config.weight_decay > 0:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TwoTowerConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate multiplier: cosine from 1 to 0 over ``config.epochs``, or 1.

    The schedule is fixed by ``config.epochs`` (not by when early stopping fires), so a refit for
    the best epoch count retraces the same learning rates.
    """
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if config.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_loss(model: nn.Module, batch: Batch, ctx: TrainingContext) -> torch.Tensor:
    """The configured loss of one training batch.

    The towers run through ``model`` itself (maybe DDP, so gradients are all-reduced); the rating
    head runs on the unwrapped module afterwards. DDP still syncs its gradients (its hooks are per
    parameter) and every parameter gets a gradient each step, so ``find_unused_parameters`` is
    not needed.
    """
    core = unwrap(model)
    cfg = core.config
    user_idx, item_idx = batch["user_idx"], batch["item_idx"]  # (B,), (B,)
    target = ctx.scale_rating(batch["rating"])  # (B,) in [0, 1]
    user_batch = ctx.user_batch(
        user_idx,
        exclude_items=item_idx,
        history_dropout=cfg.history_dropout,
        max_history=cfg.max_history,
    )
    full = cfg.loss != "pointwise" and cfg.negatives == "full"
    item_batch = ctx.item_batch(None if full else item_idx)
    user_emb, item_emb = model(user_batch, item_batch)  # (B, D), (N or B, D)
    pos_emb = item_emb[item_idx] if full else item_emb  # (B, D)
    if cfg.loss == "pointwise":
        return pointwise_bce((user_emb * pos_emb).sum(-1), target)
    if full:
        rows = cols = None
        if cfg.mask_train_positives:
            rows, cols = user_batch["positive_rows"], user_batch["positive_items"]
        loss = full_softmax(user_emb, item_emb, item_idx, rows, cols)
    else:
        log_q = ctx.item_log_q[item_idx] if cfg.logq_correction else None
        loss = in_batch_softmax(user_emb, item_emb, item_idx, log_q)
    if cfg.loss == "hybrid":
        predicted = core.predict_rating(user_emb, pos_emb, user_idx, item_idx)  # (B,)
        loss = loss + cfg.rating_weight * rating_mse(predicted, target)
    return loss


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    ctx: TrainingContext,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """One pass over ``batches``, one optimizer step per batch.

    Args:
        model: a ``TwoTower``, or a DDP wrapper around one (forward goes through the wrapper so
            that gradients are all-reduced).
        optimizer: e.g. from :func:`make_optimizer`.
        batches: dicts with ``user_idx (B,)``, ``item_idx (B,)`` and raw-scale ``rating (B,)``.
        ctx: this worker's :class:`TrainingContext` (its device is where the batches go).
        scheduler: stepped after every optimizer step (e.g. :func:`make_scheduler`), or None.
        max_grad_norm: clip the gradient norm to this, or None.

    Returns:
        ``loss`` (mean per pair), ``samples``, ``seconds``, ``samples_per_s``, ``lr`` (at the end).
    """
    cfg = unwrap(model).config
    use_bf16 = cfg.bf16 and ctx.device.type == "cuda"
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    model.train()
    total_loss, samples, start = 0.0, 0, time.perf_counter()
    for batch in batches:
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = batch_loss(model, batch, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(batch["user_idx"])
        total_loss += float(loss.detach()) * n
        samples += n
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / max(samples, 1),
        "samples": float(samples),
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "lr": float(optimizer.param_groups[0]["lr"]),
    }


@torch.no_grad()
def embed_items(model: nn.Module, ctx: TrainingContext) -> torch.Tensor:
    """``(n_items, D)`` retrieval embeddings of the whole catalog, in eval mode."""
    core = unwrap(model).eval()
    return core.item_embeddings(ctx.item_batch()).float()


@torch.no_grad()
def embed_users(
    model: nn.Module, ctx: TrainingContext, user_idx: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """``(U, D)`` retrieval embeddings of known users with their full training history."""
    core = unwrap(model).eval()
    parts = [
        core.user_embeddings(ctx.user_batch(user_idx[s : s + chunk])).float()
        for s in range(0, len(user_idx), chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, core.config.embedding_dim)


@torch.no_grad()
def validate(
    model: nn.Module,
    ctx: TrainingContext,
    train: Interactions,
    valid: Interactions,
    k: int = 10,
) -> dict[str, float]:
    """Full-catalog ranking of every user with validation items, training items excluded.

    Returns ``recall@k``, ``ndcg@k``, ``precision@k`` and ``map@k`` (``towers.metrics``), plus
    ``rmse`` on the raw rating scale for models that predict ratings (hybrid, pointwise).
    """
    core = unwrap(model).eval()
    users, inverse = np.unique(valid.user_idx, return_inverse=True)
    user_t = torch.as_tensor(users, device=ctx.device)
    user_emb = embed_users(core, ctx, user_t)  # (U, D)
    item_emb = embed_items(core, ctx)  # (N, D)
    scores = (user_emb @ item_emb.T).cpu().numpy()  # (U, N)
    top, _ = top_k_excluding(scores, k, train.to_csr(binary=True)[users])  # (U, k)
    ranked = ranking_metrics(top, valid.to_csr(binary=True)[users], ks=(k,))
    metrics = {m: ranked[f"{m}@{k}"] for m in ("recall", "ndcg", "precision", "map")}
    metrics = {f"{m}@{k}": v for m, v in metrics.items()}
    if core.rating_head is not None or core.config.loss == "pointwise":
        item_t = torch.tensor(valid.item_idx, device=ctx.device)
        pairs_user = user_emb[torch.as_tensor(inverse, device=ctx.device)]  # (P, D)
        scaled = core.predict_rating(pairs_user, item_emb[item_t], user_t[inverse], item_t)
        lo, hi = ctx.rating_scale
        predicted = scaled.clamp(0, 1).cpu().numpy() * (hi - lo) + lo
        metrics["rmse"] = float(np.sqrt(np.mean((predicted - valid.rating) ** 2)))
    return metrics


def fit(
    config: TwoTowerConfig,
    train: Interactions,
    valid: Interactions | None,
    features: FeatureTables,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    rating_scale: tuple[float, float] | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[TwoTower, list[dict[str, float]]]:
    """Trains a fresh model, early-stopping on ``config.early_stopping_metric`` over ``valid``.

    Returns:
        ``(model, history)``: the model in eval mode holding the best epoch's weights (the last
        epoch's without ``valid``), and one dict per epoch of ``train_epoch`` stats and validation
        metrics (plus ``epoch``).
    """
    config = config.sized_for(features)
    torch.manual_seed(config.seed)
    model = TwoTower(config).to(device)
    ctx = TrainingContext.build(features, train, config, rating_scale, device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    history: list[dict[str, float]] = []
    best, best_state, stale = -np.inf, None, 0
    for epoch in range(config.epochs if epochs is None else epochs):
        batches = make_batches(train, config.batch_size, config.seed, epoch)
        row = {"epoch": float(epoch), **train_epoch(model, optimizer, batches, ctx, scheduler)}
        if valid is not None and len(valid):
            row.update(validate(model, ctx, train, valid))
        history.append(row)
        if log is not None:
            log(row)
        if valid is None or not len(valid):
            continue
        metric = row[config.early_stopping_metric]
        metric = -metric if config.early_stopping_metric == "rmse" else metric
        if metric > best:
            best, best_state, stale = metric, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history
