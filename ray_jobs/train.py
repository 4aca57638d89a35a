"""Data-parallel two-tower training on Ray Train, then export to ``model/``.

    python -m ray_jobs.train --storage runs/demo --num-workers 2
    python -m ray_jobs.train --storage s3://bucket/run --num-workers 8 --use-gpu
    python -m ray_jobs.train --storage runs/demo --preset paper --export-as model_paper
    python -m ray_jobs.train --storage runs/demo --warm-start model     # from the last model

Each worker runs the shared epoch loop (``towers.training.loop.train_loop``); this file holds only
the Ray parts passed into it: the data shard (Ray Data, or a local shard), the DDP wrap
(``prepare_model``), the report with a checkpoint written by rank 0 each epoch, and the resume
through ``ray.train.get_checkpoint()``; then the trainer and the export.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_jobs.curves import Curves
from ray_jobs.faults import FaultMarker, FaultPlan, crash_after, kill_at
from ray_jobs.train_config import MODEL_OVERRIDES, PLACEMENT_SETTINGS, TrainConfig
from ray_jobs.warm_start import TrainJobConfig, warm_start
from towers import artifacts
from towers.data.prepared import PreparedData, load_prepared, split_file
from towers.launch.cli import parse_config
from towers.launch.ray_init import (
    init_ray,
    quiet_ray_data,
    quiet_ray_train_worker,
    ray_train_log_level,
    verbose,
)
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.storage.root import Storage
from towers.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from towers.training.loop import REFIT, EpochEnd, LocalBatches, TrainingData, train_loop
from towers.training.warm_start import Vocabularies

log = logging.getLogger("train")
__all__ = ["MODEL_OVERRIDES", "PLACEMENT_SETTINGS", "TrainConfig", "TrainJobConfig", "run"]


class ShardBatches:
    """One Ray Train worker's batches: its Ray Data shard of the phase, or a local shard.

    ``ray_data`` streams the split's Parquet through ``get_dataset_shard`` (``train`` for the
    search phase, ``full`` = train ∪ valid for refit); ``local`` computes the same interleaved
    shard of one global shuffle on every rank (``towers.training.loop.LocalBatches``).
    """

    def __init__(self, loop: dict[str, Any], data: TrainingData, faults: FaultPlan) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.loop, self.data, self.faults = loop, data, faults
        self.batch_size = loop["model"]["batch_size"]
        self.seed = loop["model"]["seed"]
        self.local = None
        config = TwoTowerConfig.from_dict(loop["model"])
        # User rows (negatives="user_full") come from the training history every rank holds.
        if loop["data_loader"] == "local" or config.negatives == "user_full":
            per_worker = self.batch_size // self.world
            shard = (self.rank, self.world)
            self.local = LocalBatches(data, per_worker, self.seed, shard, config)

    def steps_per_epoch(self, phase: str) -> int:
        if self.local is not None:
            return self.local.steps_per_epoch(phase)
        rows = len(self.data.train) + (len(self.data.valid or ()) if phase == REFIT else 0)
        return max(1, rows // self.batch_size)  # drop_last: every rank takes the same count

    def batches(self, phase: str, epoch: int) -> Iterable:
        import ray.train

        if self.local is not None:
            batches = self.local.batches(phase, epoch)
        else:
            per_worker = self.batch_size // self.world
            shard = ray.train.get_dataset_shard("full" if phase == REFIT else "train")
            batches = shard.iter_torch_batches(
                batch_size=per_worker,
                drop_last=True,
                local_shuffle_buffer_size=per_worker * 8,
                local_shuffle_seed=self.seed * 1000 + epoch,
            )
        marker = FaultMarker(self.loop["storage"], self.loop["run_folder"])
        return kill_at(batches, self.faults, epoch, self.rank, self.world, marker)


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """One DDP rank: the shared epoch loop with Ray's shard, DDP wrap, report and checkpoint."""
    import ray
    import ray.train
    import ray.train.torch

    quiet_ray_train_worker(loop["verbose"])
    torch.set_num_threads(max(1, int(loop["cpus_per_worker"])))
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    prepared = load_prepared(Storage(loop["storage"]), loop["split"])
    data = TrainingData(prepared.features, prepared.train, prepared.valid, prepared.rating_scale)
    faults = FaultPlan(**loop["faults"])
    config = TwoTowerConfig.from_dict(loop["model"])
    torch.manual_seed(config.seed)
    model = TwoTower(config).to(device)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _, tensors, state = load_checkpoint(Path(folder))
        resume = (tensors, state)
        log.info("[rank %d] resumed from epoch %d (%s)", rank, state.epoch, state.phase)
    # A warm start's weights (ray.put by the driver) seed both phases unless a checkpoint resumes.
    initial = ray.get(loop["initial"]) if loop.get("initial") is not None else None

    # TensorBoard curves in the run folder when the storage is local (rank 0 writes them).
    run_folder = loop["storage_path"]
    curves = Curves(Path(run_folder) / "tensorboard") if rank == 0 and run_folder else None

    def report(end: EpochEnd) -> None:
        _report(end, rank, curves, ray.train.get_context().get_world_size())
        crash_after(faults, end.row["epoch"], loop)

    try:
        train_loop(
            model,
            data,
            ShardBatches(loop, data, faults),
            refit=loop["refit"],
            resume=resume,
            initial=initial,
            prepare_model=ray.train.torch.prepare_model,  # DDP: gloo on CPU, NCCL on GPU
            on_epoch=report,
            on_progress=_log_progress if rank == 0 else None,
            progress_every_s=loop["progress_every_s"],
        )
    finally:
        if curves is not None:
            curves.close()


def _log_progress(tick: dict[str, Any]) -> None:
    """Rank 0's line inside a long epoch: steps done, samples/s over all ranks, time left."""
    log.info(
        "epoch %d %s: step %d/%d, %.0f samples/s, ETA %.0fs",
        tick["epoch"],
        tick["phase"],
        tick["step"],
        tick["steps"],
        tick["samples_per_s"],
        tick["eta_s"],
    )


def _report(end: EpochEnd, rank: int, curves: Curves | None, world_size: int) -> None:
    """Every rank reports (a barrier); rank 0 logs the epoch, adds it to the curves and writes
    the checkpoint."""
    import ray.train

    metrics = {k: v for k, v in end.row.items() if isinstance(v, (int, float, str))}
    metrics["world_size"] = world_size  # changes when an elastic group shrinks
    shown = "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if k
        in (
            "epoch",
            "phase",
            "temperature",
            "ranking_loss",
            "loss",
            "samples_per_s",
            "recall@10",
            "ndcg@10",
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:  # a log record, not print(): Ray Train tees a print into two lines
            log.info(shown)
            if curves is not None:
                curves.add(end.row)
            save_checkpoint(
                Path(folder), end.model, end.optimizer, end.state, end.best_model, end.scheduler
            )
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def fit_on_ray(
    cfg: TrainConfig,
    data: PreparedData,
    warm: tuple[TwoTowerConfig, dict[str, torch.Tensor]] | None = None,
) -> tuple[Any, TwoTowerConfig]:
    """Runs the ``TorchTrainer``; returns the Ray Train ``Result`` and the model config.

    ``warm``: a warm start's ``(config, initial weights)`` (:func:`warm_start`)."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    model_cfg = cfg.model_config(data) if warm is None else warm[0]
    # User rows (negatives="user_full", the wide towers) come from the training history every
    # rank holds, never from a Ray Data shard: no datasets for them.
    streamed = cfg.data_loader == "ray_data" and model_cfg.negatives != "user_full"
    workers = cfg.min_workers or cfg.num_workers
    need = workers * cfg.cpus_per_worker + (1 if streamed else 0)
    init_ray(need)
    quiet_ray_data()
    have = ray.cluster_resources().get("CPU", 0)
    if have < need:
        reads = " plus 1 for Ray Data's reads" if streamed else ""
        raise RuntimeError(
            f"the Ray cluster has {have:g} CPUs; {workers} workers x "
            f"{cfg.cpus_per_worker:g} CPU{reads} need {need:g}. Lower --num-workers or "
            f"--cpus-per-worker{', or use --data-loader local' if streamed else ''}"
        )
    if cfg.use_gpu and ray.cluster_resources().get("GPU", 0) < cfg.num_workers:
        raise RuntimeError(
            f"--use-gpu asks for {cfg.num_workers} GPU(s) but the Ray cluster has "
            f"{ray.cluster_resources().get('GPU', 0):g}; drop --use-gpu or add GPU nodes"
        )
    storage = Storage(cfg.storage)
    faults = FaultPlan.from_env()
    split = data.split
    datasets = {}
    if streamed:
        fs = None if storage.is_local else storage.fs
        paths = [storage.path(split_file(split, part)) for part in ("train", "valid")]
        size = sum(storage.fs.get_file_info(p).size or 0 for p in paths)
        if size <= cfg.cache_below_mb * 2**20:
            # Small splits are read once, here, into the object store (Ray Data's read tasks
            # cost ~7 s a split to start on a 2-core machine, for files read in milliseconds);
            # larger ones stream: every epoch re-runs the read tasks (bench/bench_train.py).
            train_ds, valid_ds = (ray.data.from_arrow(read_table(p, storage.fs)) for p in paths)
        else:
            train_ds, valid_ds = (ray.data.read_parquet(p, filesystem=fs) for p in paths)
        datasets = {"train": train_ds, "full": train_ds.union(valid_ds)}
    run_name = f"{cfg.export_as}-{int(time.time())}"
    loop = {
        "storage": cfg.storage,
        "split": split,
        "model": model_cfg.to_dict(),
        "refit": cfg.refit,
        "data_loader": cfg.data_loader,
        "cpus_per_worker": cfg.cpus_per_worker,
        "faults": asdict(faults),
        "verbose": verbose(),
        "progress_every_s": cfg.progress_every_s,
        "storage_path": storage.path(artifacts.TRAIN, run_name) if storage.is_local else "",
        "run_folder": f"{artifacts.TRAIN}/{run_name}",
        "initial": None if warm is None else ray.put(warm[1]),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            # (min, max): Ray Train's elastic group, restarted with the workers that fit.
            num_workers=(cfg.min_workers, cfg.num_workers) if cfg.min_workers else cfg.num_workers,
            placement_strategy=cfg.placement_strategy,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            # Checkpoints go to the storage root through its own filesystem (object storage:
            # the endpoint and credentials it was opened with travel with it).
            storage_path=storage.path(artifacts.TRAIN),
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level=ray_train_log_level()),
        ),
        datasets=datasets or None,
    )
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit(), model_cfg
    finally:
        # fit() installs Ray Train's own SIGINT handler (abort this run) and leaves it in place;
        # whatever this process does next (evaluate, build the index, serve) gets Ctrl-C back.
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def read_table(path: str, fs: Any) -> Any:
    """A Parquet file of the storage root as one ``pyarrow.Table``."""
    import pyarrow.parquet as pq

    return pq.read_table(path, filesystem=fs)


def export(
    cfg: TrainConfig,
    data: PreparedData,
    checkpoint_dir: Path,
    world_size: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Publishes ``<export_as>/`` from the final checkpoint: refit weights, else the best epoch."""
    _, _, state = load_checkpoint(checkpoint_dir)
    refit = state.phase == "refit"
    model = model_from_checkpoint(checkpoint_dir, weights="final" if refit else "best")
    # The histories it reads are every known interaction, refit or not: the validation part
    # holds each user's latest items on a time-ordered split, the next-item model's best input.
    rec = TwoTowerRecommender.from_model(model, data.features, data.full_train, data.rating_scale)
    search = (h for h in state.history if h["phase"] == "search")
    best = next((h for h in search if h["epoch"] == state.best_epoch), {})  # the refit's epochs
    return artifacts.publish_two_tower(
        Storage(cfg.storage),
        rec,
        cfg.export_as,
        vocabularies=Vocabularies.of_tables(data.users, data.items),
        preset=cfg.preset,
        split=data.split,
        dataset=data.manifest["dataset"],
        refit=refit,
        best_epoch=state.best_epoch,
        num_workers=cfg.num_workers,
        final_world_size=world_size or cfg.num_workers,
        valid_metrics={k: v for k, v in best.items() if "@" in k or k == "rmse"},
        history=state.history,
        resumed_at=state.resumed_at,
        selection=state.selection,  # the validation search's candidates and scores
        **fields,
    )


def run(cfg: TrainConfig) -> dict[str, Any]:
    storage = Storage(cfg.storage)
    data = load_prepared(storage, cfg.split)
    # Workers run in Ray's own working directory: hand them an absolute storage path.
    cfg = replace(cfg, split=data.split, storage=storage.absolute_uri)
    start = time.perf_counter()
    warm, fields = None, {}
    if getattr(cfg, "warm_start", None):  # a TrainJobConfig's --warm-start
        config, weights, fields = warm_start(cfg, data)  # type: ignore[arg-type]
        warm = (config, weights)
    result, model_cfg = fit_on_ray(cfg, data, warm)
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        world = (result.metrics or {}).get("world_size")
        manifest = export(cfg, data, Path(folder), world, **fields)
    wall = time.perf_counter() - start
    print(
        f"exported {cfg.export_as}/ version {manifest['version']} (D={model_cfg.embedding_dim}, "
        f"best epoch {manifest['best_epoch']}, valid {manifest['valid_metrics']}) in {wall:.0f}s"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    run(parse_config(TrainJobConfig, argv))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
