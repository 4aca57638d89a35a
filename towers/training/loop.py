"""The one epoch loop: train, validate, stop early, refit — for every way the model is trained.

Ray Train workers (``ray_jobs.train``), Tune trials (``tuning.tune``), the quality benchmark and
:class:`~towers.recommenders.two_tower.TwoTowerRecommender` all call :func:`train_loop`; what
differs between them is passed in, not copied:

- ``source`` — where a phase's batches come from (:class:`LocalBatches`, or a Ray Data shard);
- ``prepare_model`` — wraps the model after a restore (DDP via ``ray.train.torch.prepare_model``);
- ``resume`` — tensors and :class:`LoopState` of a checkpoint to continue from;
- ``on_epoch`` — called after every epoch with an :class:`EpochEnd` (report, checkpoint, log).

Two phases: ``search`` trains on ``train`` with early stopping on ``valid``
(``config.early_stopping_metric``, ``config.patience``; an epoch improves on the best only by
more than ``config.min_improvement`` of it); with ``refit``, ``refit`` then trains a
fresh model (same seed, same schedule) on train ∪ valid for the best epoch count. Loss and
samples/s are summed over all DDP ranks when a process group is up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.folds import fold_steps, make_fold_batches
from towers.training.inputs import Batch, TrainingContext
from towers.training.sequences import make_sequence_batches, sequence_steps
from towers.training.steps import (
    make_batches,
    make_optimizer,
    make_scheduler,
    train_epoch,
    unwrap,
    validation_metrics,
)

SEARCH, REFIT = "search", "refit"


@dataclass
class LoopState:
    """Where the training loop is: enough to resume at the next epoch."""

    epoch: int = -1  # last finished epoch of the current phase (-1: none yet)
    phase: str = SEARCH  # "search": train with early stopping; "refit": train ∪ valid
    best_metric: float = float("-inf")  # best validation metric seen in the search phase
    best_epoch: int = -1  # epoch that reached it
    stale: int = 0  # epochs since the last improvement
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    resumed_at: list[int] = field(default_factory=list)  # epochs a restarted run resumed after


@dataclass
class TrainingData:
    """What the loop trains and validates on (a ``PreparedData`` split, or test data)."""

    features: FeatureTables
    train: Interactions
    valid: Interactions | None = None
    rating_scale: tuple[float, float] | None = None  # None: inferred from ``train``

    @property
    def has_valid(self) -> bool:
        return self.valid is not None and len(self.valid) > 0

    @cached_property
    def full_train(self) -> Interactions:
        """Train ∪ valid, what the refit phase trains on (built once)."""
        return self.train.concat(self.valid) if self.has_valid else self.train  # type: ignore[arg-type]


class BatchSource(Protocol):
    """Where one worker's batches come from, per phase and epoch."""

    def steps_per_epoch(self, phase: str) -> int:
        """Optimizer steps one epoch of ``phase`` takes (the cosine schedule's unit)."""
        ...

    def batches(self, phase: str, epoch: int) -> Iterable[Batch]:
        """This worker's batches of ``phase`` for ``epoch``."""
        ...


class LocalBatches:
    """Batches computed in this process: ``make_batches`` over the phase's interactions.

    Args:
        data: the interactions (``train`` for search, ``full_train`` for refit).
        batch_size: pairs per batch of this worker (the global batch / world size).
        seed: with the epoch, fixes the shuffle; every rank draws the same global order.
        shard: ``(rank, world_size)``; each rank takes its interleaved share.
        config: the model's config (data sizes resolved); with ``negatives="user_full"`` the
            batches are user rows (``towers.training.folds``), else training pairs.
    """

    def __init__(
        self,
        data: TrainingData,
        batch_size: int,
        seed: int,
        shard: tuple[int, int] = (0, 1),
        config: TwoTowerConfig | None = None,
    ) -> None:
        self.data, self.batch_size, self.seed, self.shard = data, batch_size, seed, shard
        self.config = config

    def _interactions(self, phase: str) -> Interactions:
        return self.data.full_train if phase == REFIT else self.data.train

    def _user_rows(self) -> bool:
        cfg = self.config
        return cfg is not None and cfg.negatives == "user_full" and cfg.loss != "pointwise"

    def _history_lengths(self, phase: str) -> np.ndarray:
        train = self._interactions(phase)
        return np.bincount(train.user_idx, minlength=train.n_users)

    def steps_per_epoch(self, phase: str) -> int:
        if self._user_rows():
            cfg = self.config
            assert cfg is not None
            # batch_size is this worker's share: the row batches divide the global one by world.
            global_batch, world = self.batch_size * self.shard[1], self.shard[1]
            lengths = self._history_lengths(phase)
            if cfg.sequential:
                return sequence_steps(lengths, cfg.sequence_length, global_batch, world)
            return fold_steps(lengths, cfg.history_folds, global_batch, world)
        per_rank = len(self._interactions(phase)) // self.shard[1]
        return max(1, math.ceil(per_rank / self.batch_size))

    def batches(self, phase: str, epoch: int) -> list[Batch]:
        if self._user_rows():
            cfg = self.config
            assert cfg is not None
            global_batch, lengths = self.batch_size * self.shard[1], self._history_lengths(phase)
            if cfg.sequential:
                length = cfg.sequence_length
                return make_sequence_batches(
                    lengths, length, global_batch, self.seed, epoch, self.shard
                )
            return make_fold_batches(
                lengths, cfg.history_folds, global_batch, self.seed, epoch, self.shard
            )
        return make_batches(
            self._interactions(phase), self.batch_size, self.seed, epoch, self.shard
        )


@dataclass
class EpochEnd:
    """What ``on_epoch`` sees after each epoch (the phase may have just switched to refit)."""

    row: dict[str, Any]  # epoch, phase, loss, samples, seconds, samples_per_s, lr, metrics
    state: LoopState
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    best_model: dict[str, torch.Tensor] | None  # CPU weights of the best search epoch


@dataclass
class LoopResult:
    model: nn.Module  # as trained last (maybe DDP-wrapped), in train mode
    state: LoopState
    best_model: dict[str, torch.Tensor] | None


def train_loop(
    model: nn.Module,
    data: TrainingData,
    source: BatchSource,
    *,
    refit: bool = False,
    epochs: int | None = None,
    resume: tuple[dict[str, Any], LoopState] | None = None,
    initial: dict[str, torch.Tensor] | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 30.0,
) -> LoopResult:
    """Trains ``model`` epoch by epoch until early stopping, the epoch budget, or refit's end.

    Args:
        model: a freshly initialised ``TwoTower`` (seeded by the caller), on its device.
        data: training and validation interactions with their features.
        source: the batches of each phase.
        refit: after the search phase, retrain a fresh model on train ∪ valid for
            ``best_epoch + 1`` epochs (needs validation data; ignored without).
        epochs: search-phase budget; default ``config.epochs`` (also the schedule's length).
        resume: ``(tensors, state)`` of a checkpoint (``towers.training.checkpoint``).
        initial: weights a fresh model starts from instead of its own init, in both phases
            (a warm start, ``towers.training.warm_start``); a ``resume`` takes precedence.
        prepare_model: wraps the model once it is restored (e.g. in DDP).
        on_epoch: called after every epoch, on every rank.
        on_progress: called inside an epoch at most every ``progress_every_s`` seconds with
            ``phase, epoch, step, steps, samples_per_s`` (over all ranks) and ``eta_s``.

    Returns:
        The model as trained last, the loop state (with one history row per epoch) and the best
        search epoch's weights. Without refit, load ``best_model`` to keep the best epoch.
    """
    config: TwoTowerConfig = unwrap(model).config
    budget = config.epochs if epochs is None else epochs
    state = LoopState() if resume is None else resume[1]
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, source.steps_per_epoch(state.phase))
    best_model = None
    if resume is not None:
        tensors = resume[0]
        model.load_state_dict(tensors["model"])
        optimizer.load_state_dict(tensors["optimizer"])
        if tensors.get("scheduler"):
            scheduler.load_state_dict(tensors["scheduler"])
        best_model = tensors["best_model"] or None
        state.resumed_at.append(state.epoch)
    elif initial is not None:
        model.load_state_dict(initial)
    device = next(model.parameters()).device
    if prepare_model is not None:
        model = prepare_model(model)  # optimizer state refers to parameters by position
    refit = refit and data.has_valid
    context: dict[str, TrainingContext] = {}  # built when its phase starts, one at a time
    while True:
        epoch, phase = state.epoch + 1, state.phase
        if (phase == REFIT and epoch > state.best_epoch) or (phase == SEARCH and epoch >= budget):
            break
        if phase not in context:
            interactions = data.full_train if phase == REFIT else data.train
            context.clear()
            context[phase] = TrainingContext.build(
                data.features, interactions, config, data.rating_scale, device
            )
        start = time.perf_counter()
        batches = source.batches(phase, epoch)
        on_step = None
        if on_progress is not None:
            total = source.steps_per_epoch(phase)
            on_step = _throttled(on_progress, progress_every_s, phase, epoch, total, start)
        stats = train_epoch(model, optimizer, batches, context[phase], scheduler, on_step=on_step)
        row = {"epoch": epoch, "phase": phase, **_all_reduce(stats, time.perf_counter() - start)}
        if phase == SEARCH and data.has_valid:
            valid_ctx, users = context[SEARCH], config.validation_users
            row.update(
                validation_metrics(model, valid_ctx, data.train, data.valid, max_users=users)
            )
            metric = row[config.early_stopping_metric]
            metric = -metric if config.early_stopping_metric == "rmse" else metric
            best = state.best_metric
            if metric > best + config.min_improvement * abs(best) or best == -math.inf:
                state.best_metric, state.best_epoch, state.stale = metric, epoch, 0
                best_model = {
                    k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()
                }
            else:
                state.stale += 1
        state.epoch = epoch
        state.history.append(row)
        done = phase == SEARCH and (state.stale >= config.patience or epoch + 1 >= budget)
        if done and refit:
            # Phase two from a fresh model: same seed, same init (or the same warm start), a new
            # optimizer and schedule.
            torch.manual_seed(config.seed)
            fresh = TwoTower(config).to(device).state_dict() if initial is None else initial
            unwrap(model).load_state_dict(fresh)
            optimizer = make_optimizer(model, config)
            scheduler = make_scheduler(optimizer, config, source.steps_per_epoch(REFIT))
            state.phase, state.epoch = REFIT, -1
        if on_epoch is not None:
            on_epoch(EpochEnd(row, state, model, optimizer, scheduler, best_model))
        if done and not refit:
            break
    return LoopResult(model, state, best_model)


def _throttled(
    report: Callable[[dict[str, Any]], None],
    every_s: float,
    phase: str,
    epoch: int,
    total: int,
    start: float,
) -> Callable[[int, int], None]:
    """A ``train_epoch`` step callback that calls ``report`` at most every ``every_s`` seconds."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    last = start

    def on_step(step: int, samples: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last < every_s or step >= total:  # the epoch's own line follows the last step
            return
        last, elapsed = now, now - start
        report(
            {
                "phase": phase,
                "epoch": epoch,
                "step": step,
                "steps": total,
                "samples_per_s": samples * world / elapsed,
                "eta_s": elapsed * (total - step) / step,
            }
        )

    return on_step


def _all_reduce(stats: dict[str, float], seconds: float) -> dict[str, float]:
    """Mean loss over all ranks' pairs and global samples/s over the epoch's wall time."""
    loss_sum, samples = stats["loss"] * stats["samples"], stats["samples"]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([loss_sum, samples], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.cuda()
        torch.distributed.all_reduce(t)
        loss_sum, samples = float(t[0]), float(t[1])
    return {
        "loss": loss_sum / max(samples, 1),
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "lr": stats["lr"],
    }


def fit(
    config: TwoTowerConfig,
    train: Interactions,
    valid: Interactions | None,
    features: FeatureTables,
    epochs: int | None = None,
    device: str | torch.device = "cpu",
    rating_scale: tuple[float, float] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    refit: bool = False,
    initial: dict[str, torch.Tensor] | None = None,
) -> tuple[TwoTower, list[dict[str, Any]]]:
    """Trains a fresh model in this process (``train_loop`` over :class:`LocalBatches`), from
    ``initial`` weights when given (a warm start).

    Returns:
        ``(model, history)``: the model in eval mode with the refit weights (``refit``), else the
        best search epoch's (the last epoch's without ``valid``); one history row per epoch.
    """
    config = config.sized_for(features, n_train=len(train))
    torch.manual_seed(config.seed)
    model = TwoTower(config).to(device)
    data = TrainingData(features, train, valid, rating_scale)
    source = LocalBatches(data, config.batch_size, config.seed, config=config)
    on_epoch = None if log is None else (lambda end: log(end.row))
    result = train_loop(
        model, data, source, refit=refit, epochs=epochs, initial=initial, on_epoch=on_epoch
    )
    if result.state.phase != REFIT and result.best_model is not None:
        model.load_state_dict(result.best_model)
    return model.eval(), result.state.history
