"""Settings the data chooses: each candidate trains the run's first epochs, the best goes on.

Some settings suit one data set and not the next, and no fact a rule can read predicts them: the
softmax temperature of the cosine scores, and on small catalogs the loss itself
(``towers/model/defaults.py`` has the runs). For those, the search phase begins as a small
validation search (phase ``"select"``): each candidate trains the first
``config.select_epochs`` epochs of the run itself (``SELECT_EPOCHS``, more on small sets) — the
run's own schedule, from the same initial weights and random state — with the search phase's
validation after each epoch (a fixed sample of ``config.validation_users``). The candidate with the
best validation value (``config.early_stopping_metric``, the first of equals) is kept and the search
phase goes on from where its epochs ended, so the search costs ``select_epochs`` epochs per
candidate not chosen. The run is then the one a config given the chosen value trains without a
search, epoch for epoch.

Short runs with a schedule of their own would mislead: a sharp temperature learns fastest and a
soft one generalises better later (ML-100K, 3-epoch cosines: 0.07 -> 0.159, 0.2 -> 0.154; the
run's first 3 epochs of 12: 0.160 and 0.167, and 0.163 and 0.183 at their best).

Nothing is chosen on a test part, and what ran is stored: ``LoopState.selection`` (the export's
manifest ``selection``), each candidate's epochs in the history (phase ``"select"``, the chosen
one's again as the first search epochs) and the chosen value in the model's config (STYLE rule
12). Checkpoints and resumes work as in the other phases; a run resumed during the search keeps
the candidates already scored, and if the best of them was not the one it was in, trains that one's
first epochs again from the start (the same epochs: the same weights and random state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from towers.model.config import TwoTowerConfig
from towers.model.defaults import SELECT_EPOCHS, SQUARED_LOSS
from towers.training.inputs import TrainingContext
from towers.training.phases import SEARCH, SELECT, BatchSource, LoopState
from towers.training.steps import make_optimizer, make_scheduler, unwrap

__all__ = ["SELECT", "Search", "best_candidate", "candidate_score", "candidates", "label"]


def candidates(config: TwoTowerConfig) -> list[dict[str, Any]]:
    """The settings the search tries, in order, as config overrides ([]: no search): the
    softmax at each of ``temperature_candidates`` (or at the config's temperature), then,
    where ``ranking_loss_candidates`` has it, the squared loss with its settings
    (``SQUARED_LOSS``)."""
    tried: list[dict[str, Any]] = [{"temperature": t} for t in config.temperature_candidates or ()]
    losses = config.ranking_loss_candidates or ()
    if "squared" in losses:
        if "softmax" in losses:  # at the given temperature where none is searched
            tried = tried or [{"ranking_loss": "softmax"}]
        tried.append(dict(SQUARED_LOSS))
    return tried


# The settings that name a candidate in the history rows and the manifest's selection.
LABELS = ("temperature", "ranking_loss")


def label(setting: dict[str, Any]) -> dict[str, Any]:
    """What names a candidate (its temperature, or its loss) in history rows and the manifest."""
    return {k: setting[k] for k in LABELS if k in setting}


def candidate_score(rows: list[dict[str, Any]], metric: str) -> float:
    """A candidate's score: the best validation value of its epochs' rows (rmse: the least)."""
    values = [row[metric] for row in rows]
    return min(values) if metric == "rmse" else max(values)


def best_candidate(scores: list[float], metric: str) -> int:
    """Index of the best score (the first of equals); rmse is minimised, the rest maximised.

    Under DDP every rank takes rank 0's choice: their models and validation samples agree, and
    this keeps a last-bit difference in a GPU reduction from splitting them.
    """
    sign = -1.0 if metric == "rmse" else 1.0
    signed = [sign * s if math.isfinite(s) else -math.inf for s in scores]
    index = max(range(len(signed)), key=lambda i: (signed[i], -i))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        choice = torch.tensor([index], dtype=torch.int64)
        if torch.distributed.get_backend() == "nccl":
            choice = choice.cuda()
        torch.distributed.broadcast(choice, src=0)
        index = int(choice.item())
    return index


@dataclass
class Branch:
    """A candidate at the end of its epochs, kept (on the CPU) while it is the best so far."""

    index: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_model: dict[str, torch.Tensor] | None
    tracking: tuple[float, int, int]  # LoopState's best_metric, best_epoch, stale
    random_state: torch.Tensor
    two_hop: dict[str, Any]  # the steps' two-hop table and when it is due (TrainingContext)


Step = tuple[TwoTowerConfig, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


class Search:
    """The validation search of one ``train_loop`` call: which candidate runs, what each scored,
    and the best one's state, which the search phase continues.

    Args:
        base: the model's config (``temperature_candidates`` set).
        model: the freshly initialised model (maybe wrapped later); its weights, or
            ``initial``, are where every candidate starts.
        initial: a warm start's weights, when the run starts from them.
        budget: the search phase's epoch budget (a candidate trains at most that many).
    """

    def __init__(
        self,
        base: TwoTowerConfig,
        model: nn.Module,
        initial: dict[str, torch.Tensor] | None,
        budget: int,
    ) -> None:
        self.base, self.tried = base, candidates(base)
        state = initial or unwrap(model).state_dict()
        self.start = {k: v.detach().cpu().clone() for k, v in state.items()}
        self.random_state = torch.get_rng_state()  # every candidate draws the same
        self.epochs = max(1, min(base.select_epochs or SELECT_EPOCHS, budget))
        self.kept: Branch | None = None

    def config(self, state: LoopState) -> TwoTowerConfig:
        """The config of the candidate now running (``len(state.selection)``)."""
        return replace(self.base, **self.tried[len(state.selection)])

    def rung_done(self, state: LoopState, epoch: int) -> bool:
        """The running candidate has trained its epochs (or stopped early)."""
        return epoch + 1 >= self.epochs or state.stale >= self.base.patience

    def end_rung(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        best_model: dict[str, torch.Tensor] | None,
        state: LoopState,
        source: BatchSource,
        context: TrainingContext,
    ) -> tuple[Step, dict[str, torch.Tensor] | None]:
        """Scores the running candidate, then starts the next one, or (after the last) moves
        the loop on to the search phase with the best one. Returns the config, optimizer and
        schedule to go on with, and the best epoch's weights so far."""
        index = len(state.selection)
        metric = self.base.early_stopping_metric
        mine = [h for h in state.history if h["phase"] == SELECT and h["candidate"] == index]
        score = candidate_score(mine, metric)
        seconds = sum(h["seconds"] for h in mine)
        state.selection.append(
            {
                **label(self.tried[index]),
                metric: score,
                "epochs": len(mine),
                "seconds": round(seconds, 1),
            }
        )
        scores = [row[metric] for row in state.selection]
        if best_candidate(scores, metric) == index:  # the best so far: keep where it is
            self.kept = _branch(index, model, optimizer, scheduler, best_model, state, context)
        if len(state.selection) < len(self.tried):
            return self._restart(model, state, source, context, self.config(state)), None
        chosen = best_candidate(scores, metric)
        config = replace(self.base, **self.tried[chosen])
        state.phase = SEARCH
        if self.kept is None or self.kept.index != chosen:  # lost to a restart: train it again
            return self._restart(model, state, source, context, config), None
        kept, self.kept = self.kept, None
        unwrap(model).load_state_dict(kept.model)
        unwrap(model).reconfigure(config)  # type: ignore[operator]
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, source.steps_per_epoch(SEARCH))
        optimizer.load_state_dict(kept.optimizer)  # after the schedule's first step: its rates
        scheduler.load_state_dict(kept.scheduler)
        state.best_metric, state.best_epoch, state.stale = kept.tracking
        torch.set_rng_state(kept.random_state)
        _drop_steps_cache(context)
        context.two_hop_cache.update(kept.two_hop)
        runs = [h for h in state.history if h["phase"] == SELECT and h["candidate"] == chosen]
        state.history += [_as_search(h) for h in runs]
        state.epoch = runs[-1]["epoch"]
        return (config, optimizer, scheduler), kept.best_model

    def _restart(
        self,
        model: nn.Module,
        state: LoopState,
        source: BatchSource,
        context: TrainingContext,
        config: TwoTowerConfig,
    ) -> Step:
        """``model`` back at the start with ``config``; a new optimizer and schedule."""
        unwrap(model).load_state_dict(self.start)
        unwrap(model).reconfigure(config)  # type: ignore[operator]
        # The same draws at the candidate's own scale (a fresh model of its config starts so).
        unwrap(model).scale_embeddings(config.embedding_init_scale / self.base.embedding_init_scale)
        torch.set_rng_state(self.random_state)
        _drop_steps_cache(context)
        state.epoch, state.best_metric, state.best_epoch, state.stale = -1, -math.inf, -1, 0
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, source.steps_per_epoch(state.phase))
        return config, optimizer, scheduler


def _branch(
    index: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    best_model: dict[str, torch.Tensor] | None,
    state: LoopState,
    context: TrainingContext,
) -> Branch:
    return Branch(
        index,
        _on_cpu(unwrap(model).state_dict()),
        _on_cpu(optimizer.state_dict()),
        _on_cpu(scheduler.state_dict()),
        best_model,
        (state.best_metric, state.best_epoch, state.stale),
        torch.get_rng_state(),
        {k: v for k, v in context.two_hop_cache.items() if k in STEPS_CACHE},  # values replaced
    )


# What training steps keep in TrainingContext.two_hop_cache (towers.training.two_hop): state of
# the run, like its weights; "catalog" (the graph's bags) is the data's and stays.
STEPS_CACHE = ("table", "due", "user_means")


def _drop_steps_cache(context: TrainingContext) -> None:
    for key in STEPS_CACHE:
        context.two_hop_cache.pop(key, None)


def _on_cpu(value: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU (an optimizer's state is nested)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _as_search(row: dict[str, Any]) -> dict[str, Any]:
    """A chosen candidate's epoch as the search phase's own."""
    return {**{k: v for k, v in row.items() if k != "candidate"}, "phase": SEARCH}
