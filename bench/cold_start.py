"""Cold-start quality: each test user embedded as a new user from a few of their items.

    python -m bench.cold_start --storage runs/demo --model runs/demo/model [--model OTHER ...] \\
        [--split random] [--liked 2 5] [--seed 0]

For every user with test items, ``--liked`` N of their training items (drawn with ``--seed``) are
what a new user would give (``TwoTowerRecommender.user_embedding_cold_start``: no id, no ratings,
no demographics); the catalog is ranked without any of the user's training items, and the test
items are the relevant ones, as in ``towers.evaluation.protocol``. One row per model and N:
NDCG@10, Recall@10 and the mean training popularity of the top 10, side by side for the models
given (each an export folder, e.g. one trained with ``train --ranking-loss softmax`` and one
with ``squared``). The popularity ranking of the same lists is the floor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from towers.data.prepared import load_prepared
from towers.metrics.ranking import ranking_metrics
from towers.metrics.top_k import top_k_excluding
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.storage.root import Storage

K = 10


def liked_items(train_rows, users: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` of each user's training items (all of them where fewer), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    draws = []
    for u in users:
        own = train_rows[u].indices
        draws.append(rng.choice(own, min(n, len(own)), replace=False))
    return draws


def rows(storage: Storage, split: str | None, models: list[Path], liked: list[int], seed: int):
    data = load_prepared(storage, split)
    train, test = data.full_train.to_csr(binary=True), data.test.to_csr(binary=True)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float64)  # (N,)
    scorers = {"popularity": lambda likes: popularity.copy()}
    for path in models:
        rec = TwoTowerRecommender.load(path)
        items = rec.item_embeddings()  # (N, D)

        def score(likes: np.ndarray, rec=rec, items=items) -> np.ndarray:
            return items @ rec.user_embedding_cold_start(None, likes)  # (N,)

        scorers[f"{path.name} ({rec.config.ranking_loss})"] = score
    out = []
    for n in liked:
        draws = liked_items(train, users, n, seed)
        for name, score in scorers.items():
            scores = np.stack([score(likes) for likes in draws])  # (U, N)
            top, _ = top_k_excluding(scores, K, train[users])  # (U, K)
            ranked = ranking_metrics(top, test[users], ks=(K,))
            out.append(
                {
                    "model": name,
                    "liked": n,
                    "ndcg@10": ranked["ndcg@10"],
                    "recall@10": ranked["recall@10"],
                    "top10_popularity": float(popularity[top].mean()),
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cold_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--storage", required=True, help="storage root with prepared data")
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="an export folder (repeatable)"
    )
    parser.add_argument("--split", default=None, help="prepared split (default: the first)")
    parser.add_argument(
        "--liked", type=int, nargs="+", default=[2, 5], help="items a new user gives"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the items drawn")
    args = parser.parse_args(argv)
    if min(args.liked) < 1:
        parser.error(f"--liked takes counts >= 1, got {args.liked}")
    table = rows(Storage(args.storage), args.split, args.model, args.liked, args.seed)
    print("| model | liked items | NDCG@10 | Recall@10 | mean popularity of the top 10 |")
    print("|---|---:|---:|---:|---:|")
    for r in table:
        print(
            f"| {r['model']} | {r['liked']} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | "
            f"{r['top10_popularity']:.1f} |"
        )


if __name__ == "__main__":
    main()
