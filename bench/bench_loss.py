"""Training samples/s against catalog size: the full-catalog softmax vs sampled negatives.

    .venv/bin/python -m bench.bench_loss [--items 1682,10000,60000,250000] [--rounds 2]

The default preset (hybrid loss, batch 1,024) on synthetic data with the given catalog sizes,
the bare training step in this process (``towers.training.steps.train_epoch``, all cores), for
``negatives`` = ``full`` (every item scored each step), ``in_batch``, ``mixed`` (the batch's
items plus 1,024 drawn uniformly) and ``mixed+sparse`` (also ``sparse_embeddings``: the
catalog-sized tables get sparse gradients and lazy Adam updates). Each round measures every
(catalog, loss) pair once, in turn, after two warm-up steps, so machine noise hits them alike;
the table prints the median samples/s and each loss's ratio to its own speed on the smallest
catalog (the issue's target: sampled at 60k items >= 0.8x its 1.7k speed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from towers.data.interactions import Interactions
from towers.data.prepared import movielens_features
from towers.data.synthetic import SyntheticSpec, generate
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.steps import make_batches, make_optimizer, train_epoch

# negatives, and sparse_embeddings (catalog-sized tables with sparse gradients + LazyAdam)
LOSSES = {
    "full": ("full", False),
    "in_batch": ("in_batch", False),
    "mixed": ("mixed", False),
    "mixed+sparse": ("mixed", True),
}


def catalog(n_items: int, n_users: int = 2_000, n_interactions: int = 60_000):
    """Training interactions and features of a synthetic data set with ``n_items`` items."""
    raw = generate(SyntheticSpec(n_users, n_items, n_interactions, seed=3))
    users = raw.users.sort_values("user_id").reset_index(drop=True)
    items = raw.items.sort_values("item_id").reset_index(drop=True)
    users.insert(0, "user_idx", np.arange(len(users)))
    items.insert(0, "item_idx", np.arange(len(items)))
    inter = raw.interactions
    train = Interactions(
        inter["user_id"].to_numpy() - 1,  # synthetic ids are 1..n
        inter["item_id"].to_numpy() - 1,
        inter["rating"].to_numpy(np.float32),
        inter["timestamp"].to_numpy(),
        len(users),
        len(items),
    )
    return train, movielens_features(users, items)


def samples_per_s(train, features, loss: str, steps: int) -> float:
    negatives, sparse = LOSSES[loss]
    config = TwoTowerConfig.from_preset(
        "default", negatives=negatives, sparse_embeddings=sparse
    ).sized_for(features)
    torch.manual_seed(0)
    model = TwoTower(config)
    optimizer = make_optimizer(model, config)
    ctx = TrainingContext.build(features, train, config, (1.0, 5.0))
    batches = make_batches(train, config.batch_size, seed=0, epoch=0)
    train_epoch(model, optimizer, batches[:2], ctx)  # warm-up: allocations, first-call costs
    start = time.perf_counter()
    stats = train_epoch(model, optimizer, batches[2 : 2 + steps], ctx)
    return stats["samples"] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", default="1682,10000,60000,250000", help="catalog sizes")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each pair")
    parser.add_argument("--steps", type=int, default=20, help="steps per measurement at 1.7k")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--interactions", type=int, default=60_000, help="synthetic ratings of each catalog"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.items.split(",")]
    data = {n: catalog(n, n_interactions=args.interactions) for n in sizes}
    results: dict[tuple[int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for n in sizes:
            for loss in LOSSES:
                # Fewer steps where a full-catalog step is slow; never fewer than 3.
                steps = max(3, round(args.steps * sizes[0] / n)) if loss == "full" else args.steps
                value = samples_per_s(*data[n], loss, steps)
                results.setdefault((n, loss), []).append(value)
                print(f"round {round_}  items {n:>7,}  {loss:<8}  {value:>9,.0f} samples/s")
    print("\n| items | " + " | ".join(f"{loss} samples/s | vs its 1.7k" for loss in LOSSES) + " |")
    print("|---:|" + "---:|---:|" * len(LOSSES))
    base = {loss: statistics.median(results[sizes[0], loss]) for loss in LOSSES}
    for n in sizes:
        cells = []
        for loss in LOSSES:
            value = statistics.median(results[n, loss])
            cells.append(f"{value:,.0f} | {value / base[loss]:.2f}")
        print(f"| {n:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
