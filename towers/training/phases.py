"""What the training loop and its phases share: the phase names, the loop's state (what a
checkpoint resumes from), the data, where batches come from, and what each epoch's end reports.

``towers.training.loop`` runs the phases; ``towers.training.selection`` is the first of them
(``"select"``, where a validation search runs), so both read these from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import nn

from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.training.inputs import Batch

SELECT, SEARCH, REFIT = "select", "search", "refit"


@dataclass
class LoopState:
    """Where the training loop is: enough to resume at the next epoch."""

    epoch: int = -1  # last finished epoch of the current phase (-1: none yet)
    phase: str = SEARCH  # "select": the candidates' short runs (towers/training/selection.py);
    # "search": train with early stopping; "refit": train ∪ valid
    best_metric: float = float("-inf")  # best validation metric seen in the search phase
    best_epoch: int = -1  # epoch that reached it
    stale: int = 0  # epochs since the last improvement
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    resumed_at: list[int] = field(default_factory=list)  # epochs a restarted run resumed after
    selection: list[dict[str, Any]] = field(default_factory=list)  # one row per candidate tried


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


@dataclass
class EpochEnd:
    """What ``on_epoch`` sees after each epoch (the phase may have just switched to refit)."""

    row: dict[str, Any]  # epoch, phase, loss, samples, seconds, samples_per_s, lr, metrics
    state: LoopState
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    best_model: dict[str, torch.Tensor] | None  # CPU weights of the best search epoch


def all_reduce_stats(stats: dict[str, float], seconds: float) -> dict[str, float]:
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
