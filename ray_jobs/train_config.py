"""``ray_jobs.train``'s settings: :class:`TrainConfig` (its CLI) and what it hands the model."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from towers import artifacts
from towers.data.prepared import PreparedData
from towers.launch.cli import help_field
from towers.model.config import SQUARED_LOSS, TwoTowerConfig

# Sparse gradients train on one worker only. DDP has to all-reduce them through gloo's sparse
# path, which crashed the workers of a 2-worker run at the ML-25M shape twice within ~400 steps
# ("malloc(): unaligned tcache chunk detected", torch 2.13), and NCCL has none; on one machine
# one worker with all its CPUs is also the fastest (docs/SCALE.md). DDP runs use dense tables.
SPARSE_ONE_WORKER = (
    "--sparse-embeddings needs --num-workers 1: DDP's sparse all-reduce (gloo) crashed at scale "
    "and NCCL has none; on one machine, --num-workers 1 --cpus-per-worker N is also the fastest"
)
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"]
# Settings that say where training runs, not what it learns (left out of the pipeline's inputs).
PLACEMENT_SETTINGS = ("num_workers", "min_workers", "cpus_per_worker", "placement_strategy")


@dataclass
class TrainConfig:
    """Train the two-tower model with Ray Train (DDP over workers); export it to STORAGE/model."""

    storage: str = help_field("runs/demo", "storage root holding data/ (local folder or URI)")
    split: str | None = help_field(None, "prepared split to train on (default: the first)")
    preset: Literal["default", "paper"] = help_field(
        "default", "model preset (towers.model.config.PRESETS)"
    )
    num_workers: int = help_field(2, "Ray Train workers (DDP ranks)")
    min_workers: int | None = help_field(
        None, "elastic: after a lost node, go on with as few as this many workers (default: fixed)"
    )
    placement_strategy: PlacementStrategy = help_field(
        "PACK", "workers' placement group: SPREAD puts them on different nodes where it can"
    )
    use_gpu: bool = help_field(False, "one GPU per worker, NCCL and bf16 autocast")
    cpus_per_worker: float = help_field(1.0, "CPUs reserved per worker")
    epochs: int | None = help_field(
        None,
        "maximum epochs (default by the data: 20 for the deep towers, up to 2,500 items under a "
        "random split; otherwise enough for ~1M pairs and for each item to be a target ~100 "
        "times, 4 to 20)",
    )
    batch_size: int | None = help_field(None, "GLOBAL batch size, split across workers")
    lr: float | None = help_field(None, "Adam learning rate")
    embedding_dim: int | None = help_field(None, "embedding dimension D of both towers")
    loss: Literal["pointwise", "softmax", "hybrid"] | None = help_field(None, "training loss")
    patience: int | None = help_field(None, "early stopping patience in epochs")
    min_improvement: float | None = help_field(
        None,
        "an epoch beats the best validation value only by more than this share of it; the refit "
        "trains to the earliest such best epoch (default 0.005)",
    )
    temperature: float | None = help_field(
        None,
        "softmax temperature (normalised embeddings); default: chosen on the validation part "
        "among 0.07, 0.12 and 0.2 by their first epochs (docs/QUALITY.md)",
    )
    ranking_loss: Literal["softmax", "squared"] | None = help_field(
        None,
        "what the scores are trained with: the softmax, or the squared error over the whole "
        "catalog (iALS's; with its own settings: plain dot products, tables at 0.01x, Adam 3e-3, "
        "the rating MSE at weight 1, unless given); default: chosen on the validation part "
        "where every user row sees the whole catalog (up to 4,096 items), the softmax "
        "elsewhere (docs/QUALITY.md)",
    )
    weight_decay: float | None = help_field(None, "AdamW weight decay")
    seed: int | None = help_field(None, "seed of init and batch order")
    negatives: Literal["auto", "full", "user_full", "in_batch", "mixed"] | None = help_field(
        None,
        "softmax negatives (default auto: the full catalog of training pairs up to 2,500 items "
        "under a random split, else of user rows (user_full) up to 100,000, mixed above)",
    )
    sparse_embeddings: bool | None = help_field(
        None, "sparse gradients + LazyAdam for id tables (default: on with auto's mixed, 1 worker)"
    )
    sequence_model: Literal["none", "attention"] | None = help_field(
        None,
        "the user tower: attention reads the user's recent items in order through causal "
        "self-attention, none pools them (default: attention on the leave-one-out split)",
    )
    sequence_length: int | None = help_field(
        None, "the sequence tower's most recent items per user (default 50)"
    )
    refit: bool = help_field(
        True, "after early stopping, retrain on train+valid for the best epochs"
    )
    data_loader: Literal["ray_data", "local"] = help_field(
        "ray_data", "ray_data: streamed Parquet shards; local: each worker reads its own shard"
    )
    cache_below_mb: float = help_field(
        256.0,
        "ray_data: splits smaller than this (Parquet MB) are read once, by the driver, not every "
        "epoch",
    )
    max_failures: int = help_field(2, "worker-group restarts from the last checkpoint on failure")
    progress_every_s: float = help_field(30.0, "a progress line inside an epoch this often")
    export_as: str = help_field(artifacts.MODEL, "artifact folder the exported model goes to")

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.sparse_embeddings and self.num_workers > 1:
            raise ValueError(SPARSE_ONE_WORKER)
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"--min-workers must be in [1, --num-workers={self.num_workers}], "
                f"got {self.min_workers}"
            )
        if "/" in self.export_as or self.export_as in ("", ".", "..", artifacts.DATA):
            raise ValueError(f"--export-as must be a plain folder name, got {self.export_as!r}")

    def model_config(self, data: PreparedData) -> TwoTowerConfig:
        overrides = {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}
        if self.num_workers > 1:  # DDP: dense tables (SPARSE_ONE_WORKER)
            overrides["sparse_embeddings"] = False
        if self.ranking_loss == "squared":  # with the settings it trains with, unless given
            overrides = {**SQUARED_LOSS, **overrides}
        cfg = TwoTowerConfig.from_preset(self.preset, **overrides, bf16=self.use_gpu)
        cfg = cfg.for_data(data)
        for workers in range(self.min_workers or self.num_workers, self.num_workers + 1):
            if cfg.batch_size % workers:
                raise ValueError(f"batch size {cfg.batch_size} not divisible by {workers} workers")
        return cfg


# TrainConfig settings that override the preset's TwoTowerConfig value when given.
MODEL_OVERRIDES = tuple(
    f.name for f in fields(TrainConfig) if f.name in {g.name for g in fields(TwoTowerConfig)}
)
