"""``ray_jobs.train --warm-start``: the job's config with the flag, and the driver's side of it.

The driver loads the previous export, maps its rows to ``data/``'s vocabularies by raw id and
builds the initial weights (``towers.training.warm_start``); ``ray_jobs.train`` hands them to
every worker, where they seed a fresh loop (both phases) unless a checkpoint resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ray_jobs.train_config import MODEL_OVERRIDES, TrainConfig
from towers import artifacts
from towers.data.prepared import PreparedData
from towers.launch.cli import help_field
from towers.model.config import TwoTowerConfig
from towers.storage.root import Storage
from towers.training.warm_start import (
    WARM_START_EPOCHS,
    Vocabularies,
    WarmStartError,
    warm_config,
    warm_start_epochs,
    warm_start_weights,
)


@dataclass
class TrainJobConfig(TrainConfig):
    """Train the two-tower model with Ray Train (DDP over workers); export it to STORAGE/model.

    With --warm-start ARTIFACT: train from a previous model on data/ as it is now (users and
    items added since get new rows; known ones keep their weights), with the previous model's
    architecture (--preset is ignored; a flag that changes a weight's shape is an error), for
    a third of its epochs (1 to 3) unless --epochs. Adam restarts: an export holds no optimizer
    state.
    """

    warm_start: str | None = help_field(
        None,
        "a previous model export to start from: an artifact name under --storage (model) or "
        "its folder or URI; --epochs then defaults to a third of its epochs (1 to "
        f"{WARM_START_EPOCHS}), Adam restarts",
    )


def warm_start(
    cfg: TrainJobConfig, data: PreparedData
) -> tuple[TwoTowerConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """``(config, initial weights, manifest fields)`` of a warm start from ``cfg.warm_start``.

    The previous model's rows are mapped to ``data``'s vocabularies by raw id
    (``towers.training.warm_start``); its config keeps the architecture, sized for ``data``,
    with this job's explicit flags on top and a third of its epochs (``warm_start_epochs``)
    unless ``--epochs``.
    """
    where = str(cfg.warm_start).rstrip("/")
    parent, _, artifact = where.rpartition("/")
    storage = Storage(parent) if parent else Storage(cfg.storage)
    old, old_vocab = artifacts.load_warm_start(storage, artifact)
    vocab = Vocabularies.of_tables(data.users, data.items)
    if old_vocab is None:  # exported before exports carried their ids: only the same data fits
        if (old.n_users, old.n_items) != (data.n_users, data.n_items):
            raise WarmStartError(
                f"--warm-start {storage.uri}/{artifact} has no user_ids/item_ids (exported before "
                f"warm starts) and {old.n_users} users, {old.n_items} items, data/ now "
                f"{data.n_users}, {data.n_items}: retrain it once with ray_jobs.train"
            )
        old_vocab = vocab
    overrides = {k: getattr(cfg, k) for k in MODEL_OVERRIDES if getattr(cfg, k) is not None}
    overrides.setdefault("epochs", warm_start_epochs(old.config.epochs))
    overrides["bf16"] = cfg.use_gpu
    if cfg.num_workers > 1:  # DDP: dense tables (SPARSE_ONE_WORKER)
        overrides["sparse_embeddings"] = False
    config = warm_config(old.config, data.features, data.has_ratings, data.time_ordered, overrides)
    if config.batch_size % cfg.num_workers:
        raise ValueError(f"batch size {config.batch_size} not divisible by {cfg.num_workers}")
    assert old.model is not None
    weights, report = warm_start_weights(old.model, old_vocab, config, vocab)
    print(f"{report.summary()}; from {storage.uri}/{artifact} version {old.version}", flush=True)
    return config, weights, {"warm_start": f"{storage.uri}/{artifact}", "warm_from": old.version}
