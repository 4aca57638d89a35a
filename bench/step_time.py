"""Milliseconds a training step of the data's default config takes, in this process.

    .venv/bin/python -m bench.step_time --storage /tmp/beauty_run --split temporal [--steps 60]

The default config of the prepared data (its catalog and split decide the towers, as in
training), trained over the epoch's first steps after two warm-up steps, as
``bench/bench_scale.py`` measures them (``bench/training_rate.py``), with ``--threads`` torch
threads; prints one number, ms a step. Run from two checkouts in turn (a ``git worktree`` of the
code before a change and this one, ``PYTHONPATH`` set to each) to compare a change side by side:
docs/BENCHMARKS.md has the loop.
"""

from __future__ import annotations

import argparse

import torch

from bench.training_rate import measure_training
from towers.data.prepared import load_prepared
from towers.model.config import TwoTowerConfig
from towers.storage.root import Storage
from towers.training.loop import TrainingData


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
    config = TwoTowerConfig().for_data(data)
    training = TrainingData(data.features, data.train, data.valid, data.rating_scale)
    _, measured = measure_training(training, config, args.steps)
    print(f"{measured['ms_per_step']:.1f}")


if __name__ == "__main__":
    main()
