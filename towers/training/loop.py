"""The epoch loop: train, validate, stop early (refit is added by the Ray job for now)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.steps import (
    make_batches,
    make_optimizer,
    make_scheduler,
    train_epoch,
    validation_metrics,
)


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
            row.update(validation_metrics(model, ctx, train, valid))
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
