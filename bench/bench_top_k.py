"""Top-k with exclusions: ``torch.topk`` (``towers.metrics.top_k``) vs numpy's argpartition.

    .venv/bin/python -m bench.bench_top_k [--users 10000] [--items 40981] [--rounds 3]

Every epoch's validation ranks the whole catalog for up to 10,000 users, and evaluation ranks
it for every test user of every model, in blocks of ``BLOCK_CELLS`` scores. Until 2026-12-05
``top_k_excluding`` negated each block, argpartitioned it (numpy, one thread)
and sorted the k; now ``torch.topk`` selects k + 1 in blocks of at least ``TORCH_FROM_CELLS``
scores (both threads, no copy) and rows whose k-th and (k+1)-th scores are equal are resolved by
index. Both run here on the same blocks, alternated, for two kinds of scores: continuous (a
model's dot products) and popularity counts (few distinct values: nearly every row ties across
the k-th place). Prints the median seconds, their ratio, and the share of rows whose lists are
equal: all of them for the model's scores; for popularity counts argpartition takes any of the
items tied at the k-th place, the new one the lowest indices.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch

from towers.metrics.top_k import top_k_excluding, users_per_block


def argpartition_top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix) -> np.ndarray:
    """The earlier implementation (items only): exact but for ties across the k-th place,
    where argpartition picks any of them."""
    coo = exclude.tocoo()
    scores[coo.row, coo.col] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def blocks(kind: str, users: int, items: int, seed: int = 0):
    """``(scores, seen)`` blocks of ``users_per_block(items)`` users: a 64-d model's dot products
    or popularity counts; ~27 seen items a user (Gowalla's mean)."""
    rng = np.random.default_rng(seed)
    item_emb = torch.from_numpy(rng.normal(size=(items, 64)).astype(np.float32))
    popularity = rng.zipf(1.6, items).clip(max=5_000).astype(np.float32)
    step = users_per_block(items)
    for start in range(0, users, step):
        n = min(step, users - start)
        if kind == "model":
            user_emb = torch.from_numpy(rng.normal(size=(n, 64)).astype(np.float32))
            scores = (user_emb @ item_emb.T).numpy()
        else:
            scores = np.broadcast_to(popularity, (n, items)).copy()
        rows = np.repeat(np.arange(n), 27)
        cols = rng.integers(0, items, len(rows))
        seen = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), (n, items))
        yield scores, seen


def timed(rank, kind: str, users: int, items: int) -> tuple[float, list[np.ndarray]]:
    seconds, out = 0.0, []
    for scores, seen in blocks(kind, users, items):
        start = time.perf_counter()
        out.append(rank(scores, 10, seen))
        seconds += time.perf_counter() - start
    return seconds, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users ranked")
    parser.add_argument("--items", type=int, default=40_981, help="catalog size (Gowalla's)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of both")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ways = {
        "argpartition (numpy)": argpartition_top_k,
        "torch.topk": lambda s, k, e: top_k_excluding(s, k, e)[0],
    }
    print(f"{args.users:,} users x {args.items:,} items, k=10, {args.threads} threads")
    print("| scores | argpartition s | torch.topk s | ratio | lists equal |")
    print("|---|---:|---:|---:|---|")
    for kind in ("model", "popularity"):
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        lists = {}
        for _ in range(args.rounds):
            for name, rank in ways.items():
                took, lists[name] = timed(rank, kind, args.users, args.items)
                seconds[name].append(took)
        old, new = (statistics.median(seconds[name]) for name in ways)
        old_lists, new_lists = (np.concatenate(lists[name]) for name in ways)
        same = (old_lists == new_lists).all(axis=1).mean()
        print(f"| {kind} | {old:.2f} | {new:.2f} | {new / old:.2f}x | {same:.1%} of rows |")


if __name__ == "__main__":
    main()
