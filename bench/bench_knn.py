"""Times UserKNN fit and all-user top-10 recommendation on MovieLens-sized synthetic data.

Run ``python -m bench.bench_knn`` (``--help`` for options). Prints, per data size and mode: fit
time, all-user top-10 time, the per-user cost of one-user-at-a-time calls on the same code path and
its ratio to the batched per-user cost, the time of the ranking metrics alone over all users'
top-20 lists, and of a whole ``metrics.evaluate`` (recommend + ranking + rating metrics).
Each figure is the best of ``--repeats`` runs. Synthetic data only (no download): users and items
fall in taste groups, item popularity has a long tail, and the data set has exactly the requested
number of distinct (user, item) pairs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from towers.data.interactions import Interactions
from towers.evaluation.knn_selection import DEFAULT_GRID, tune_user_knn
from towers.evaluation.protocol import evaluate_model
from towers.metrics.ranking import ranking_metrics
from towers.recommenders.user_knn import MODES, UserKNN

SIZES = {  # name -> (users, items, interactions)
    "100k": (943, 1_682, 100_000),
    "1m": (6_040, 3_706, 1_000_000),
    "smoke": (200, 300, 5_000),
}


def synthetic_interactions(
    n_users: int, n_items: int, n_interactions: int, n_groups: int = 20, seed: int = 0
) -> Interactions:
    """Taste groups + long-tail popularity; half of each user's picks come from its own group."""
    rng = np.random.default_rng(seed)
    popularity = rng.permutation(1.0 / np.arange(1, n_items + 1) ** 0.9)
    activity = rng.lognormal(0.0, 1.0, n_users)
    user_group = rng.integers(0, n_groups, n_users)
    item_group = rng.permutation(np.arange(n_items) % n_groups)  # no group is empty
    by_group = np.argsort(item_group, kind="stable")  # item order: group 0's, group 1's, ...
    cumulative = np.cumsum(popularity[by_group])
    starts = np.searchsorted(item_group[by_group], np.arange(n_groups + 1))
    before = np.concatenate([[0.0], cumulative])[starts]  # popularity mass before each group
    keys = np.empty(0, np.int64)
    while len(keys) < n_interactions:
        draw = int(1.3 * (n_interactions - len(keys))) + 1000
        users = rng.choice(n_users, draw, p=activity / activity.sum())
        items = rng.choice(n_items, draw, p=popularity / popularity.sum())
        in_group = rng.random(draw) < 0.5
        g = user_group[users[in_group]]
        target = before[g] + rng.random(len(g)) * (before[g + 1] - before[g])
        position = np.clip(np.searchsorted(cumulative, target), starts[g], starts[g + 1] - 1)
        items[in_group] = by_group[position]
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_items + items]))
    keys = rng.permutation(keys)[:n_interactions]
    users, items = keys // n_items, keys % n_items
    liked = user_group[users] == item_group[items]
    rating = np.clip(np.round(rng.normal(np.where(liked, 4.0, 2.8), 0.9)), 1, 5)
    return Interactions(
        users, items, rating.astype(np.float32), np.zeros(len(keys), np.int64), n_users, n_items
    )


@dataclass
class Row:
    size: str
    mode: str
    fit_s: float
    recommend_s: float
    single_us: float
    ratio: float
    metrics_s: float
    evaluate_s: float


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Minimum wall time of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def recommend_all(model: UserKNN, k: int, batch_size: int) -> np.ndarray:
    """``(n_users, k)`` top-``k`` lists of every user, ``batch_size`` users per call."""
    users = np.arange(model.n_users)
    batches = [
        model.recommend(users[s : s + batch_size], k)[0] for s in range(0, len(users), batch_size)
    ]
    return np.concatenate(batches)


def bench_mode(
    size: str, mode: str, train: Interactions, test: Interactions, args: argparse.Namespace
) -> Row:
    """Times one mode on one data set."""
    model = UserKNN(n_neighbors=args.n_neighbors, mode=mode)
    fit_s = best_of(args.repeats, lambda: model.fit(train))
    recommend_s = best_of(args.repeats, lambda: recommend_all(model, 10, args.batch_size))
    sample = np.arange(0, train.n_users, max(1, train.n_users // 100))
    single_s = best_of(args.repeats, lambda: [model.recommend(u, 10) for u in sample])
    lists = recommend_all(model, 20, args.batch_size)
    relevant = test.to_csr(binary=True)
    metrics_s = best_of(args.repeats, lambda: ranking_metrics(lists, relevant, ks=(5, 10, 20)))
    evaluate_s = best_of(args.repeats, lambda: evaluate_model(model, train, test))
    single_per_user = single_s / len(sample)
    batched_per_user = recommend_s / train.n_users
    return Row(
        size,
        mode,
        fit_s,
        recommend_s,
        single_per_user * 1e6,
        single_per_user / batched_per_user,
        metrics_s,
        evaluate_s,
    )


def bench_tune(size: str, train: Interactions, valid: Interactions) -> str:
    """Times ``tune_user_knn`` over its default grid (neighbours shared within a mode)."""
    n_points = int(np.prod([len(v) for v in DEFAULT_GRID.values()]))
    started = time.perf_counter()
    best, results = tune_user_knn(train, valid)
    total = time.perf_counter() - started
    shared = results.groupby("mode")["neighbor_seconds"].first().sum()
    return (
        f"tune_user_knn {size}: {n_points} grid points in {total:.1f} s (neighbours "
        f"{shared:.1f} s, fits {results['fit_seconds'].sum():.1f} s, evaluation "
        f"{results['eval_seconds'].sum():.1f} s); best {best}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=sorted(SIZES),
        default=["100k", "1m"],
        help="data sizes: 100k = 943 x 1682 x 100k, 1m = 6040 x 3706 x 1M, smoke = tiny",
    )
    parser.add_argument("--n-neighbors", type=int, default=40, help="neighbours per user")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (best kept)")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per recommend call")
    parser.add_argument(
        "--tune", action="store_true", help="also time tune_user_knn's default grid per size"
    )
    parser.add_argument("--smoke-test", action="store_true", help="the tiny size, one repeat")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.sizes, args.repeats = ["smoke"], 1
    cpu = platform.processor() or platform.machine()
    print(
        f"# UserKNN: n_neighbors={args.n_neighbors}, best of {args.repeats}, batches of "
        f"{args.batch_size} users; {cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    header = (
        "size",
        "mode",
        "fit s",
        "top-10 all users s",
        "single call us/user",
        "single / batched per user",
        "metrics k=5,10,20 s",
        "evaluate_model() s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    tune_times: list[str] = []
    for size in args.sizes:
        data = synthetic_interactions(*SIZES[size])
        held_out = np.random.default_rng(1).random(len(data)) < 0.2
        train, test = data.subset(~held_out), data.subset(held_out)
        for mode in MODES:
            r = bench_mode(size, mode, train, test, args)
            cells = (
                r.size,
                r.mode,
                f"{r.fit_s:.3f}",
                f"{r.recommend_s:.3f}",
                f"{r.single_us:.0f}",
                f"{r.ratio:.1f}x",
                f"{r.metrics_s:.4f}",
                f"{r.evaluate_s:.3f}",
            )
            print("| " + " | ".join(cells) + " |", flush=True)
        if args.tune:
            tune_times.append(bench_tune(size, train, test))
    for line in tune_times:
        print(line)


if __name__ == "__main__":
    main()
