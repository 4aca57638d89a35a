"""The per-epoch validation ranking: users in blocks of ``BLOCK_CELLS`` scores vs one block.

    .venv/bin/python -m bench.bench_validation [--users 10000] [--items 40000] [--rounds 2]

``towers.training.steps.validation_metrics`` ranks the whole catalog for every validation user
after each epoch. Before it ranked in blocks it built one (users x catalog) score matrix, and
``top_k_excluding`` added a negated copy and argpartition's int64 indices: ~20 bytes a cell at
the peak (Gowalla's 29,858 validation users x 40,981 items: 19.7 GB). Each run is a fresh child
process (its peak RSS is its own) on the same synthetic data and the same untrained model, once
with the default block and once with one block for all users, alternated for ``--rounds``
rounds; the table prints seconds and peak RSS, and the ratios of the two.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from towers.metrics.top_k import BLOCK_CELLS


def child(users: int, items: int, per_user: int, block_cells: int) -> dict[str, float]:
    """One validation pass in this process: seconds and peak RSS (GB), and the NDCG@10."""
    from bench.bench_loss import catalog
    from towers.model.config import TwoTowerConfig
    from towers.model.network import TwoTower
    from towers.training.inputs import TrainingContext
    from towers.training.steps import validation_metrics

    torch.set_num_threads(2)
    data, features = catalog(items, users, users * per_user)
    rng = np.random.default_rng(0)
    held = rng.random(len(data)) < 0.1  # a tenth of the pairs is the validation part
    train, valid = data.subset(~held), data.subset(held)
    config = TwoTowerConfig.from_preset("default", loss="softmax").sized_for(features)
    torch.manual_seed(0)
    model = TwoTower(config)
    ctx = TrainingContext.build(features, train, config)
    start = time.perf_counter()
    metrics = validation_metrics(model, ctx, train, valid, block_cells=block_cells)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB
    return {"seconds": seconds, "peak_gb": peak_gb, "ndcg@10": metrics["ndcg@10"]}


def run(users: int, items: int, per_user: int, block_cells: int) -> dict[str, float]:
    args = [str(users), str(items), str(per_user), str(block_cells)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_validation", "--child", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users (each validated)")
    parser.add_argument("--items", type=int, default=40_000, help="catalog size")
    parser.add_argument("--per-user", type=int, default=25, help="interactions per user")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of both")
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    ways = {"blocks": BLOCK_CELLS, "one block": args.users * args.items}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    for r in range(args.rounds):
        for name, cells in ways.items():
            rows[name].append(run(args.users, args.items, args.per_user, cells))
            print(f"round {r + 1} {name}: {rows[name][-1]}", flush=True)
    median = {
        name: {k: statistics.median(row[k] for row in runs) for k in ("seconds", "peak_gb")}
        for name, runs in rows.items()
    }
    assert len({runs[0]["ndcg@10"] for runs in rows.values()}) == 1, "the two ways disagree"
    print(f"\n{args.users:,} users x {args.items:,} items, median of {args.rounds}:")
    print("| ranking | seconds | peak RSS (GB) |\n|---|---:|---:|")
    for name, m in median.items():
        print(f"| {name} | {m['seconds']:.1f} | {m['peak_gb']:.2f} |")
    one, blocks = median["one block"], median["blocks"]
    print(
        f"blocks / one block: time {blocks['seconds'] / one['seconds']:.2f}x, "
        f"peak RSS {blocks['peak_gb'] / one['peak_gb']:.2f}x"
    )


if __name__ == "__main__":
    main()
