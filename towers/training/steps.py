"""One optimisation step and what it needs: batches, optimizer, schedule, loss, metrics.

Framework-free, so the same code runs in a bare process and in every Ray Train DDP worker; the
epoch loop around it is ``towers.training.loop``.

- :func:`make_batches` — deterministic per-epoch shuffling and sharding for the local loader.
- :func:`make_optimizer`, :func:`make_scheduler` — Adam(W) and the per-step cosine schedule.
- :func:`batch_loss`, :func:`train_epoch` — the configured loss; one pass over a worker's batches
  (on a plain ``TwoTower`` or one wrapped in DDP).
- :func:`embed_items`, :func:`embed_users` — retrieval embeddings in eval mode.
- :func:`validation_metrics` — full-catalog Recall@k / NDCG@k (training items excluded), RMSE.

A training batch is ``{"user_idx": (B,) int64, "item_idx": (B,) int64, "rating": (B,) float32}``
with ratings on the data set's *raw* scale (1-5 for MovieLens); the loss scales them to [0, 1]
with ``ctx.rating_scale`` (``towers.training.inputs.TrainingContext``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from towers.data.interactions import Interactions
from towers.metrics.ranking import ranking_metrics
from towers.metrics.top_k import BLOCK_CELLS, top_k_excluding, users_per_block
from towers.model.config import TwoTowerConfig
from towers.model.losses import (
    full_softmax,
    full_softmax_rows,
    full_squared_rows,
    pointwise_bce,
    rating_mse,
    sampled_softmax,
    sampled_softmax_rows,
)
from towers.model.network import TwoTower
from towers.training.folds import fold_user_batch
from towers.training.inputs import Batch, TrainingContext
from towers.training.lazy_adam import LazyAdam
from towers.training.sequences import sequence_user_batch
from towers.training.tables import checked_shard
from towers.training.two_hop import leave_out_own_users, refresh_two_hop


def unwrap(model: nn.Module) -> TwoTower:
    """The ``TwoTower`` inside a DDP (or any ``.module``) wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


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
    rank, world_size = checked_shard(shard)
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
    """Adam as in the paper; AdamW (decoupled decay) when ``weight_decay > 0``; with sparse
    embeddings, Adam whose sparse rows update lazily (``LazyAdam``). With ``sequence_lr`` the
    sequence tower's attention stack is a group of its own at that rate."""
    params: list = list(model.parameters())
    if config.sequential and config.sequence_lr is not None:
        named = list(unwrap(model).named_parameters())
        stack = [p for n, p in named if n.startswith("user_tower.sequence.")]
        rest = [p for n, p in named if not n.startswith("user_tower.sequence.")]
        params = [{"params": rest}, {"params": stack, "lr": config.sequence_lr}]
    if config.sparse_embeddings:
        return LazyAdam(params, lr=config.lr)
    if config.weight_decay > 0:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr)


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
    targets = int(batch["pairs"]) if "pairs" in batch else len(batch["user_idx"])
    refresh_two_hop(core, ctx, targets)
    if "fold" in batch or "window" in batch:  # user rows of the user_full softmax
        return user_rows_loss(model, batch, ctx)  # (towers/training/folds.py, sequences.py)
    user_idx, item_idx = batch["user_idx"], batch["item_idx"]  # (B,), (B,)
    target = ctx.scale_rating(batch["rating"])  # (B,) in [0, 1]
    full = cfg.loss != "pointwise" and cfg.negatives == "full"
    user_batch = ctx.user_batch(
        user_idx,
        exclude_items=item_idx,
        history_dropout=cfg.history_dropout,
        max_history=cfg.max_history,
        positives=full and cfg.mask_train_positives,
    )
    # Implicit feedback carries each row's weight (1 unless the data set has a weight column)
    # where explicit data has its rating: the softmax counts a row of weight w as w positives.
    weights = None if cfg.has_ratings else batch["rating"]
    candidates, n_drawn = item_idx, 0  # (B,): the batch's items, each row's positive first
    if cfg.loss != "pointwise" and cfg.negatives == "mixed":
        # Mixed negatives: plus items drawn uniformly from the catalog, shared by every row.
        n_drawn = cfg.sampled_negatives
        drawn = torch.randint(ctx.n_items, (n_drawn,), device=item_idx.device)  # (M,)
        candidates = torch.cat([item_idx, drawn])  # (B + M,)
    item_batch = ctx.item_batch(None if full else candidates, training=True)
    user_emb, item_emb = model(user_batch, item_batch)  # (B, D), (N or B [+ M], D)
    pos_emb = item_emb[item_idx] if full else item_emb[: len(item_idx)]  # (B, D)
    if cfg.loss == "pointwise":
        return pointwise_bce((user_emb * pos_emb).sum(-1), target)
    if full:
        rows = cols = None
        if cfg.mask_train_positives:
            rows, cols = user_batch["positive_rows"], user_batch["positive_items"]
        loss = full_softmax(user_emb, item_emb, item_idx, rows, cols, weights)
    else:
        log_q = None
        if cfg.logq_correction:
            log_q = ctx.candidate_log_q(candidates, len(item_idx), n_drawn)
        loss = sampled_softmax(user_emb, item_emb, candidates, log_q, weights=weights)
    if cfg.loss == "hybrid":
        predicted = core.predict_rating(user_emb, pos_emb, user_idx, item_idx)  # (B,)
        loss = loss + cfg.rating_weight * rating_mse(predicted, target)
    return loss


def user_rows_loss(
    model: nn.Module, batch: Batch, ctx: TrainingContext, distinct: bool = True
) -> torch.Tensor:
    """The ``user_full`` loss of one batch of user rows: each row's fold of targets against the
    whole catalog (the user's training items masked), its other folds pooled as the history; or,
    with the sequence tower, every slot of a window of a user's sequence against the item that
    came next (``towers.training.sequences``: one row per slot).
    ``distinct``: sampled candidates go through the item tower once per distinct item where its
    output depends on the item alone (the same loss and gradients, less work)."""
    core = unwrap(model)
    cfg = core.config
    if cfg.sequential:
        user_batch = sequence_user_batch(ctx, batch)
    else:
        user_batch = fold_user_batch(ctx, batch, cfg.history_dropout, cfg.max_history)
    row_users = user_batch.get("row_users", user_batch["user_idx"])  # (R,) each row's user
    rows, items = user_batch["target_rows"], user_batch["target_items"]  # (T,), (T,)
    raw = user_batch["target_ratings"]  # (T,)
    weights = None if cfg.has_ratings else raw  # implicit data: each target counts its weight
    positives = user_batch["positive_rows"], user_batch["positive_items"]
    if ctx.n_items <= cfg.row_negatives:  # the whole catalog, exactly
        user_emb, item_emb = model(user_batch, ctx.item_batch(training=True))  # (R, D), (N, D)
        target_emb = item_emb[items]  # (T, D)
        if cfg.ranking_loss == "squared":
            loss = full_squared_rows(
                user_emb, item_emb, rows, items, *positives, cfg.unobserved_weight, weights
            )
        else:
            loss = full_softmax_rows(user_emb, item_emb, rows, items, *positives, weights)
    else:  # row_negatives uniform draws shared by the batch, the catalog sum rescaled
        drawn = torch.randint(ctx.n_items, (cfg.row_negatives,), device=items.device)  # (M,)
        candidates = torch.cat([items, drawn])  # (T + M,)
        embedded, inverse = candidates, None
        if distinct and not cfg.two_hop_leave_out and cfg.dropout == cfg.item_id_dropout == 0:
            # Each distinct candidate through the item tower once (its output depends on the
            # item alone here): a step's targets and draws repeat items (Beauty 20%, Gowalla 7%).
            embedded, inverse = torch.unique(candidates, return_inverse=True)  # (K,), (T + M,)
        item_batch = ctx.item_batch(embedded, training=True)
        if cfg.two_hop_leave_out:
            item_batch = leave_out_own_users(ctx, item_batch, row_users[rows])
        user_emb, item_emb = model(user_batch, item_batch)  # (R, D), (K, D)
        if inverse is not None:
            item_emb = item_emb[inverse]  # (T + M, D)
        target_emb = item_emb[: len(items)]  # (T, D)
        if cfg.row_batch_negatives:  # the batch's targets too, each term divided by its count
            negatives, negative_emb = candidates, item_emb  # (T + M,), (T + M, D)
            log_expected = ctx.candidate_log_q(candidates, len(items), len(drawn))
        else:
            negatives, negative_emb, log_expected = drawn, item_emb[len(items) :], None
        loss = sampled_softmax_rows(
            user_emb, rows, target_emb, negative_emb, negatives, ctx.n_items, *positives,
            weights, log_expected,
        )  # fmt: skip
    if cfg.loss == "hybrid":
        user_idx = row_users[rows]  # (T,)
        predicted = core.predict_rating(user_emb[rows], target_emb, user_idx, items)
        loss = loss + cfg.rating_weight * rating_mse(predicted, ctx.scale_rating(raw))
    return loss


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    ctx: TrainingContext,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
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
        on_step: called after every step with ``(steps done, samples done)`` (progress).

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
    for step, batch in enumerate(batches):
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
        n = int(batch["pairs"]) if "pairs" in batch else len(batch["user_idx"])
        total_loss += float(loss.detach()) * n
        samples += n
        if on_step is not None:
            on_step(step + 1, samples)
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
        core.user_embeddings(ctx.user_batch(user_idx[s : s + chunk], positives=False)).float()
        for s in range(0, len(user_idx), chunk)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, core.config.retrieval_dim)


@torch.no_grad()
def validation_metrics(
    model: nn.Module,
    ctx: TrainingContext,
    train: Interactions,
    valid: Interactions,
    k: int = 10,
    block_cells: int = BLOCK_CELLS,
    max_users: int = 0,
) -> dict[str, float]:
    """Full-catalog ranking of every user with validation items, training items excluded;
    with ``max_users > 0``, of a fixed random sample of at most that many of them (the same
    users every call, so epochs compare).

    Users are ranked in blocks of at most ``block_cells`` scores (``users_per_block``): one
    (users x catalog) matrix would hold ~12 bytes a cell at its peak, ~15 GB for Gowalla.

    Returns ``recall@k``, ``ndcg@k``, ``precision@k`` and ``map@k`` (``towers.metrics``), plus
    ``rmse`` on the raw rating scale for models that predict ratings (hybrid, pointwise).
    """
    core = unwrap(model).eval()
    users = np.unique(valid.user_idx)
    if 0 < max_users < len(users):
        sample = np.random.default_rng(0).choice(users, max_users, replace=False)
        valid = valid.subset(np.isin(valid.user_idx, sample))
    users, inverse = np.unique(valid.user_idx, return_inverse=True)
    user_t = torch.as_tensor(users, device=ctx.device)
    user_emb = embed_users(core, ctx, user_t)  # (U, D)
    item_emb = embed_items(core, ctx)  # (N, D)
    seen = train.to_csr(binary=True)[users]
    block = users_per_block(len(item_emb), block_cells)
    tops = []
    for start in range(0, len(users), block):
        scores = (user_emb[start : start + block] @ item_emb.T).cpu().numpy()  # (block, N)
        tops.append(top_k_excluding(scores, k, seen[start : start + block])[0])
    top = np.concatenate(tops) if tops else np.empty((0, k), np.int64)  # (U, k)
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
