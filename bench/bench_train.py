"""Training throughput: Ray Train (1 and 2 workers) against the bare single-process loop.

    .venv/bin/python -m bench.bench_train [--epochs 4] [--storage /tmp/bench_train]

All runs train the same model on the same ML-100K split with the same global batch. Steady state
= mean samples/s over epochs after the first; start-up = wall time of `TorchTrainer.fit()` minus
the time spent in epochs (worker group, process group, Ray Data and checkpoint overheads).
The bare loop runs `towers.training.steps.train_epoch` in this process with the same thread
budget as one Ray worker (1 thread per worker CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ray_jobs import prepare, train
from towers.data.prepared import load_prepared
from towers.launch.ray_init import init_ray
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.storage.root import Storage
from towers.training.inputs import TrainingContext
from towers.training.steps import make_batches, make_optimizer, train_epoch


def bare_loop(storage: Storage, epochs: int, threads: int) -> list[float]:
    """samples/s of each epoch of the plain loop (no validation, as in the timing of Ray runs)."""
    torch.set_num_threads(threads)
    data = load_prepared(storage, "random")
    config = TwoTowerConfig.from_preset("default").sized_for(data.features)
    torch.manual_seed(config.seed)
    model = TwoTower(config)
    optimizer = make_optimizer(model, config)
    ctx = TrainingContext.build(data.features, data.train, config, data.rating_scale)
    rates = []
    for epoch in range(epochs):
        batches = make_batches(data.train, config.batch_size, config.seed, epoch)
        rates.append(train_epoch(model, optimizer, batches, ctx)["samples_per_s"])
    return rates


def ray_run(
    storage: Storage, epochs: int, workers: int, loader: str, cache_below_mb: float, cpus: float
) -> tuple[list[float], float]:
    start = time.perf_counter()
    manifest = train.run(
        train.TrainConfig(
            storage=storage.uri,
            num_workers=workers,
            cpus_per_worker=cpus,
            epochs=epochs,
            patience=epochs,
            refit=False,
            data_loader=loader,
            cache_below_mb=cache_below_mb,
            export_as=f"bench_w{workers}_{loader}",
            max_failures=0,
        )
    )
    wall = time.perf_counter() - start
    history = manifest["history"]
    in_epochs = sum(h["seconds"] for h in history)
    return [h["samples_per_s"] for h in history], wall - in_epochs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", default="/tmp/bench_train")
    parser.add_argument("--two-cpu", action="store_true", help="also 2-thread bare / 1x2-CPU Ray")
    args = parser.parse_args()
    storage = Storage(args.storage)
    if not storage.is_complete("data"):
        prepare.run(prepare.PrepareConfig(storage=args.storage, split="random"))
    init_ray(3)  # 2 CPUs of workers + Ray Data's reads: the largest case below, for every run
    rows = []
    bare = bare_loop(storage, args.epochs, threads=1)
    rows.append(("bare loop, 1 thread", np.mean(bare[1:]), 0.0))
    cases = [(1, "ray_data", 256.0, 1), (1, "local", 0.0, 1), (2, "ray_data", 256.0, 1)]
    cases += [(2, "ray_data", 0.0, 1), (2, "local", 0.0, 1)]
    if args.two_cpu:
        bare2 = bare_loop(storage, args.epochs, threads=2)
        rows.append(("bare loop, 2 threads", np.mean(bare2[1:]), 0.0))
        cases += [(1, "ray_data", 256.0, 2), (1, "local", 0.0, 2)]
    for workers, loader, cache, cpus in cases:
        rates, startup = ray_run(storage, args.epochs, workers, loader, cache, cpus)
        label = loader if loader == "local" else f"ray_data{' cached' if cache else ' re-read'}"
        name = f"Ray {workers} worker(s) x {cpus} CPU, {label}"
        rows.append((name, np.mean(rates[1:]), startup))
        print(rows[-1], flush=True)
    base = rows[0][1]
    print(f"\n{'run':<40} {'steady samples/s':>17} {'x bare':>7} {'start-up + other s':>19}")
    for name, rate, startup in rows:
        print(f"{name:<40} {rate:>17,.0f} {rate / base:>7.2f} {startup:>19.1f}")


if __name__ == "__main__":
    main()
