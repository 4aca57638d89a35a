"""Milliseconds a training step of the data's default config takes, in this process.

    .venv/bin/python -m bench.step_time --storage /tmp/beauty_run --split temporal [--steps 60]

The default config of the prepared data (its catalog and split decide the towers, as in
training), trained over the epoch's first steps after three warm-up steps, with ``--threads``
torch threads; prints one number, ms a step. Run from two checkouts in turn (a ``git worktree``
of the code before a change and this one, ``PYTHONPATH`` set to each) to compare a change side
by side: docs/BENCHMARKS.md has the loop.
"""

from __future__ import annotations

import argparse
import time

import torch

from towers.data.prepared import load_prepared
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.storage.root import Storage
from towers.training.inputs import TrainingContext
from towers.training.loop import LocalBatches, TrainingData
from towers.training.steps import make_optimizer, train_epoch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True, help="storage root with prepared data")
    parser.add_argument("--split", help="prepared split (default: the first)")
    parser.add_argument("--steps", type=int, default=60, help="measured steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_prepared(Storage(args.storage), args.split)
    config = TwoTowerConfig().sized_for(
        data.features, data.has_ratings, data.time_ordered, n_train=len(data.train)
    )
    torch.manual_seed(config.seed)
    model = TwoTower(config)
    ctx = TrainingContext.build(data.features, data.train, config, data.rating_scale)
    training = TrainingData(data.features, data.train, data.valid, data.rating_scale)
    source = LocalBatches(training, config.batch_size, config.seed, config=config)
    epoch = source.batches("search", 0)
    optimizer = make_optimizer(model, config)
    train_epoch(model, optimizer, epoch[:3], ctx)  # warm-up: allocations, first calls
    steps = epoch[3 : 3 + args.steps]
    started = time.perf_counter()
    train_epoch(model, optimizer, steps, ctx)
    print(f"{(time.perf_counter() - started) / len(steps) * 1000:.1f}")


if __name__ == "__main__":
    main()
