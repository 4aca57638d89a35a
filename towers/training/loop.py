"""The one epoch loop: train, validate, stop early, refit — for every way the model is trained.

Ray Train workers (``ray_jobs.train``), Tune trials (``tuning.tune``), the quality benchmark and
:class:`~towers.recommenders.two_tower.TwoTowerRecommender` all call :func:`train_loop`; what
differs between them is passed in, not copied:

- ``source`` — where a phase's batches come from (:class:`LocalBatches`, or a Ray Data shard);
- ``prepare_model`` — wraps the model after a restore (DDP via ``ray.train.torch.prepare_model``);
- ``resume`` — tensors and :class:`LoopState` of a checkpoint to continue from;
- ``on_epoch`` — called after every epoch with an :class:`EpochEnd` (report, checkpoint, log).

Up to three phases. ``select`` (where the config has ``temperature_candidates`` and there is a
validation part): each candidate trains the run's first epochs and the best goes on
(``towers.training.selection``). ``search`` trains on ``train`` with early stopping on ``valid``
(``config.early_stopping_metric``, ``config.patience``; an epoch improves on the best only by
more than ``config.min_improvement`` of it); with ``refit``, ``refit`` then trains a
fresh model (same seed, same schedule) on train ∪ valid for the best epoch count. Loss and
samples/s are summed over all DDP ranks when a process group is up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.folds import fold_steps, make_fold_batches
from towers.training.inputs import Batch, TrainingContext
from towers.training.phases import (
    REFIT,
    SEARCH,
    SELECT,
    BatchSource,
    EpochEnd,
    LoopState,
    TrainingData,
    all_reduce_stats,
)
from towers.training.selection import Search, candidates, label
from towers.training.sequences import make_sequence_batches, sequence_steps
from towers.training.steps import (
    make_batches,
    make_optimizer,
    make_scheduler,
    train_epoch,
    unwrap,
    validation_metrics,
)


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
    search = None  # the validation search of the first epochs (towers/training/selection.py)
    selecting = resume is None or resume[1].phase == SELECT
    if selecting and candidates(config) and data.has_valid:
        search = Search(config, model, initial, budget)
    state = LoopState(phase=SELECT if search else SEARCH) if resume is None else resume[1]
    if state.phase == SELECT:
        if search is None:
            raise ValueError(
                "train_loop: the checkpoint was written during the validation search "
                "(phase 'select'), but this config has no temperature_candidates or no "
                "validation part to resume it with"
            )
        config = search.config(state)
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
    if state.phase == SELECT:
        unwrap(model).reconfigure(config)  # the running candidate's settings
    device = next(model.parameters()).device
    if prepare_model is not None:
        model = prepare_model(model)  # optimizer state refers to parameters by position
    refit = refit and data.has_valid
    context: dict[str, TrainingContext] = {}  # built when its phase starts, one at a time
    while True:
        epoch, phase = state.epoch + 1, state.phase
        if (phase == REFIT and epoch > state.best_epoch) or (phase == SEARCH and epoch >= budget):
            break
        part = REFIT if phase == REFIT else SEARCH  # select and search train on the same part
        if part not in context:
            interactions = data.full_train if part == REFIT else data.train
            context.clear()
            context[part] = TrainingContext.build(
                data.features, interactions, config, data.rating_scale, device
            )
        start = time.perf_counter()
        batches = source.batches(phase, epoch)
        on_step = None
        if on_progress is not None:
            total = source.steps_per_epoch(phase)
            on_step = _throttled(on_progress, progress_every_s, phase, epoch, total, start)
        stats = train_epoch(model, optimizer, batches, context[part], scheduler, on_step=on_step)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "phase": phase, **all_reduce_stats(stats, seconds)}
        if phase == SELECT:
            assert search is not None
            row.update(candidate=len(state.selection), **label(search.tried[len(state.selection)]))
        if part == SEARCH and data.has_valid:
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
        if phase == SELECT and search is not None and search.rung_done(state, epoch):
            ending = (model, optimizer, scheduler, best_model, state, source, context[part])
            (config, optimizer, scheduler), best_model = search.end_rung(*ending)
        done = phase == SEARCH and (state.stale >= config.patience or epoch + 1 >= budget)
        if done and refit:
            # Phase two from a fresh model: same seed, same init (or the same warm start), a new
            # optimizer and schedule.
            torch.manual_seed(config.seed)
            fresh = TwoTower(config).to(device).state_dict() if initial is None else initial
            unwrap(model).load_state_dict(fresh)
            if state.selection:  # the chosen temperature, not the one `fresh` was built with
                unwrap(model).reconfigure(config)
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
