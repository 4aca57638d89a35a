"""What the item tower's two-hop neighbourhood costs a training step, side by side.

    .venv/bin/python -m bench.bench_two_hop --storage /tmp/gowalla_run [--split given] \
        [--steps 20] [--rounds 3] [--threads 2]

The default config of the prepared data (its catalog decides the towers, as in training) with
``item_two_hop`` off, on and read beside the row (``two_hop_mix="concat"``), and on and added
to the row through a gate (``"gated"``), each trained on the same batches of the epoch's first
steps in this process (``towers.training.steps.train_epoch``), alternating round by round after a
warm-up, so that a noisy machine hits all alike. The two-hop steps include the refreshes of the
cached neighbourhoods (``two_hop_refreshes`` an epoch) at their share of the measured steps.
Prints ms a step of each, its ratio to "off", and the refresh's own cost. Without ``--storage``, a
synthetic data set of ``--items`` items.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from towers.data.prepared import load_prepared
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.storage.root import Storage
from towers.training.inputs import TrainingContext
from towers.training.loop import LocalBatches, TrainingData
from towers.training.steps import make_optimizer, train_epoch
from towers.training.two_hop import refresh_two_hop


def prepared(storage: str | None, split: str | None, items: int):
    """``(train, features, has_ratings, time_ordered)`` of a storage root, or synthetic."""
    if storage:
        data = load_prepared(Storage(storage), split)
        return data.train, data.features, data.has_ratings, data.time_ordered
    from bench.bench_loss import catalog  # synthetic MovieLens-shaped data

    train, features = catalog(items, n_users=3_000, n_interactions=90_000)
    return train, features, True, False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", help="storage root with prepared data (else synthetic)")
    parser.add_argument("--split", help="prepared split (default: the first)")
    parser.add_argument("--items", type=int, default=12_000, help="synthetic catalog size")
    parser.add_argument("--steps", type=int, default=20, help="steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each setting")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, features, has_ratings, time_ordered = prepared(args.storage, args.split, args.items)
    base = TwoTowerConfig().sized_for(features, has_ratings, time_ordered, n_train=len(train))
    runs = {}
    settings = {
        "off": dict(item_two_hop=False),
        "concat": dict(item_two_hop=True, two_hop_mix="concat"),
        "gated": dict(item_two_hop=True, two_hop_mix="gated"),
    }
    for name, overrides in settings.items():
        config = replace(base, **overrides)
        torch.manual_seed(0)
        model = TwoTower(config)
        ctx = TrainingContext.build(features, train, config)
        source = LocalBatches(TrainingData(features, train), config.batch_size, 0, config=config)
        epoch = source.batches("search", 0)
        optimizer = make_optimizer(model, config)
        train_epoch(model, optimizer, epoch[:2], ctx)  # warm-up: allocations, first calls
        runs[name] = (model, ctx, optimizer, epoch[2:])
    print(
        f"{len(train):,} training pairs, {train.n_items:,} items, negatives "
        f"{base.negatives}, {len(epoch):,} steps an epoch, {base.two_hop_refreshes} refreshes"
    )
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name, (model, ctx, optimizer, steps) in runs.items():
            chunk = steps[round_ * args.steps : (round_ + 1) * args.steps]
            start = time.perf_counter()
            train_epoch(model, optimizer, chunk, ctx)
            times[name].append((time.perf_counter() - start) / max(len(chunk), 1))
            print(f"round {round_}  two-hop {name:<6}  {1000 * times[name][-1]:8.1f} ms a step")
    model, ctx = runs["gated"][0], runs["gated"][1]
    refresh = []
    for _ in range(args.rounds):
        ctx.two_hop_cache["due"] = 0
        start = time.perf_counter()
        refresh_two_hop(model, ctx, 0)
        refresh.append(time.perf_counter() - start)
    off = statistics.median(times["off"])
    print("\n| two-hop | ms a step | / off |\n|---|---:|---:|")
    for name in runs:
        ms = statistics.median(times[name])
        print(f"| {name} | {1000 * ms:.1f} | {ms / off:.2f} |")
    print(f"\none refresh of the neighbourhoods: {1000 * statistics.median(refresh):.0f} ms")


if __name__ == "__main__":
    main()
