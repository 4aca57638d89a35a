"""Ray Tune search over learning rate, embedding dimension and temperature, with ASHA.

    python -m tuning.tune --storage runs/demo --num-samples 16
    python -m tuning.tune --storage runs/demo --resume          # continue an interrupted search

Each trial runs the shared epoch loop (``towers.training.loop``, the one every Ray Train worker
runs) in its own process, one worker per trial. On a small machine this is the better use of
cores: a ``TorchTrainer`` per trial adds ~23 s of fixed start-up and a controller actor per trial
(see docs/BENCHMARKS.md), while ML-100K fits one process easily. ASHA stops weak trials early on
the *validation* NDCG@10; the test split is never read here.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from towers import artifacts
from towers.data.prepared import load_prepared
from towers.launch.cli import help_field, parse_config
from towers.launch.ray_init import init_ray
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.storage.root import Storage
from towers.training.loop import EpochEnd, LocalBatches, TrainingData, train_loop
from tuning.plots import plot_learning_curves, plot_metric_vs_lr

log = logging.getLogger("tune")
METRIC = "ndcg@10"
ARTIFACT = artifacts.TUNING


@dataclass
class TuneJobConfig:
    """Search learning rate x embedding dimension (x temperature) with Ray Tune and ASHA."""

    storage: str = help_field("runs/demo", "storage root holding data/")
    split: str | None = help_field(None, "prepared split (default: the first)")
    preset: str = help_field("default", "model preset the search starts from")
    num_samples: int = help_field(16, "number of trials")
    max_concurrent: int = help_field(2, "trials running at once (one per core here)")
    scheduler: Literal["asha", "none"] = help_field("asha", "early stopping of weak trials")
    max_epochs: int | None = help_field(
        None, "epochs per trial at most (ASHA's max_t); default: the preset's own epochs"
    )
    grace_period: int = help_field(2, "ASHA: epochs every trial gets before it can be stopped")
    workers_per_trial: int = help_field(1, "CPU workers per trial (1: the loop runs in the trial)")
    use_gpu: bool = help_field(False, "a GPU per trial")
    seed: int = help_field(0, "seed of the search")
    resume: bool = help_field(False, "restore an interrupted search from STORAGE/tuning/ray")

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_concurrent < 1 or (self.max_epochs or 1) < 1:
            raise ValueError("--num-samples, --max-concurrent and --max-epochs must be >= 1")
        if self.workers_per_trial != 1:
            raise ValueError(
                "--workers-per-trial > 1 is not supported yet: each trial runs the loop in-process"
            )


def search_space(default_lr: float = 3e-3) -> dict[str, Any]:
    """The learning rate around the data's own default (a tenth of it to three times it: the
    wide towers' 3e-2 gives 3e-3 to 9e-2), the embedding dimension and the temperature (the
    default training's own search tries 0.07 and 0.2: ``towers/model/defaults.py``)."""
    from ray import tune

    return {
        "lr": tune.loguniform(default_lr / 10, default_lr * 3),
        "embedding_dim": tune.choice([16, 32, 64, 128, 256]),
        "temperature": tune.loguniform(0.03, 0.4),
    }


def search_algorithm(cfg: TuneJobConfig):
    """Random search, seeded, at most ``cfg.max_concurrent`` trials at once.

    Tune ignores ``TuneConfig.max_concurrent_trials`` for a ``BasicVariantGenerator`` passed in
    (it only wraps ``Searcher``s), so the generator carries the limit itself.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent)


def trial(params: dict[str, Any]) -> None:
    """One trial: the shared epoch loop in this process, a report per epoch (ASHA decides
    whether it goes on, so the loop's own early stopping is off: patience = the whole budget)."""
    from ray import tune

    torch.set_num_threads(1)
    job = params["job"]
    prepared = load_prepared(Storage(job["storage"]), job["split"])
    overrides = {k: params[k] for k in ("lr", "embedding_dim", "temperature")}
    # The knobs searched are the softmax's (its rate, width, temperature): no loss search inside
    # a trial (the squared loss's own rate would replace the trial's).
    overrides["ranking_loss"] = "softmax"
    epochs = job["max_epochs"]
    config = TwoTowerConfig.from_preset(job["preset"], **overrides, epochs=epochs, patience=epochs)
    config = config.for_data(prepared)
    torch.manual_seed(config.seed)
    data = TrainingData(prepared.features, prepared.train, prepared.valid, prepared.rating_scale)

    def report(end: EpochEnd) -> None:
        metrics = {k: v for k, v in end.row.items() if "@" in k or k == "rmse"}
        shown = {k: end.row[k] for k in ("epoch", "loss", "samples_per_s")}
        tune.report({**shown, **metrics})  # Tune's TensorBoard logger writes each trial's curves

    source = LocalBatches(data, config.batch_size, config.seed, config=config)
    train_loop(TwoTower(config), data, source, on_epoch=report)


def run(cfg: TuneJobConfig) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    storage = Storage(cfg.storage)
    data = load_prepared(storage, cfg.split)  # fail fast, before Ray starts, if data/ is missing
    default = TwoTowerConfig.from_preset(cfg.preset).for_data(data)
    # what the data resolves to: the search centres its learning rate there
    if cfg.max_epochs is None:
        # The budget the chosen config will be trained with: a shorter search favours settings
        # that learn fast, not the ones that end best (measured: docs/BENCHMARKS.md).
        cfg.max_epochs = int(default.epochs)
    init_ray(cfg.max_concurrent)
    experiment = (
        storage.path(ARTIFACT, "ray") if storage.is_local else f"{cfg.storage}/{ARTIFACT}/ray"
    )
    job = {
        "storage": storage.absolute_uri,  # trials run in Ray's own working directory
        "split": data.split,
        "preset": cfg.preset,
        "max_epochs": cfg.max_epochs,
    }
    trainable = tune.with_resources(trial, {"cpu": 1, "gpu": 1 if cfg.use_gpu else 0})
    start = time.perf_counter()
    if cfg.resume and tune.Tuner.can_restore(f"{experiment}/search"):
        tuner = tune.Tuner.restore(f"{experiment}/search", trainable, resume_errored=True)
    else:
        scheduler = (
            ASHAScheduler(
                max_t=cfg.max_epochs,
                grace_period=cfg.grace_period,
                reduction_factor=2,
                time_attr="training_iteration",
            )
            if cfg.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space={**search_space(default.lr), "job": job},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=scheduler,
                num_samples=cfg.num_samples,
                search_alg=search_algorithm(cfg),
            ),
            run_config=tune.RunConfig(name="search", storage_path=experiment, verbose=1),
        )
    results = tuner.fit()
    wall = time.perf_counter() - start
    return write_outputs(storage, results, wall, cfg)


def write_outputs(storage: Storage, results, wall: float, cfg: TuneJobConfig) -> dict[str, Any]:
    """Trial table, learning curves, best config and plots under ``tuning/``."""
    rows, curves = [], []
    for result in results:
        i = result.metrics.get("trial_id", result.path.rsplit("/", 1)[-1])
        if result.metrics_dataframe is None or result.metrics_dataframe.empty:
            continue
        params = {k: result.config[k] for k in ("lr", "embedding_dim", "temperature")}
        frame = result.metrics_dataframe
        best = frame[METRIC].max()
        rows.append(
            {
                "trial": i,
                **params,
                "best_" + METRIC: best,
                "epochs": len(frame),
                "final_" + METRIC: frame[METRIC].iloc[-1],
            }
        )
        curve = frame[["epoch", "loss", METRIC, "recall@10"]].copy()
        curve.insert(0, "trial", i)
        curves.append(curve)
    if not rows:
        raise RuntimeError("no trial reported a result; see the Ray logs above")
    table = pd.DataFrame(rows).sort_values("best_" + METRIC, ascending=False)
    curves_frame = pd.concat(curves, ignore_index=True)
    best = table.iloc[0]
    best_config = {
        "lr": float(best["lr"]),
        "embedding_dim": int(best["embedding_dim"]),
        "temperature": float(best["temperature"]),
        "epochs": int(cfg.max_epochs),
        "preset": cfg.preset,
    }
    storage.begin_artifact(ARTIFACT)
    storage.write_parquet(f"{ARTIFACT}/trials.parquet", table)
    storage.write_bytes(f"{ARTIFACT}/trials.csv", table.to_csv(index=False).encode())
    storage.write_parquet(f"{ARTIFACT}/curves.parquet", curves_frame)
    storage.write_json(f"{ARTIFACT}/best_config.json", best_config)
    storage.write_bytes(f"{ARTIFACT}/metric_vs_lr.png", plot_metric_vs_lr(table, METRIC))
    storage.write_bytes(
        f"{ARTIFACT}/learning_curves.png", plot_learning_curves(curves_frame, METRIC)
    )
    manifest = storage.publish(
        ARTIFACT,
        {
            "metric": METRIC,
            "best_config": best_config,
            "best_valid": float(best["best_" + METRIC]),
            "num_trials": len(table),
            "wall_seconds": round(wall, 1),
            "trial_epochs": int(table["epochs"].sum()),
            "split": results[0].config["job"]["split"],
        },
    )
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(
        f"best {METRIC} {best['best_' + METRIC]:.4f} with {json.dumps(best_config)}; "
        f"{len(table)} trials in {wall:.0f}s; wrote {storage.uri}/{ARTIFACT}/"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    run(parse_config(TuneJobConfig, argv))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
