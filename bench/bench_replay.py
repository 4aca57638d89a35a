"""Replay: what live histories and warm starts are worth against a frozen model and a retrain.

    python -m ray_jobs.prepare --dataset ml-100k --storage /tmp/replay-ml100k
    python -m bench.bench_replay --storage /tmp/replay-ml100k --chunks 4

Each user's first part by time (the prepared split's train ∪ valid) trains the models; the rest
(its test part) is replayed as events in time order, in ``--chunks`` equal chunks. Before each
chunk after the first, with every earlier chunk applied, the chunk's interactions are scored
(NDCG@10, every item the user had by then excluded, the same for every method) for:

- (a) ``frozen``: the first model, each user embedded from their first part (the known-user path);
- (b) ``live``: the same model; a user with events applied so far has their history extended by
  them and embedded at request time, as ``serving.fresh`` answers a user with events (the
  cold-start path: the user's features and the pooled items, oldest first); a user without takes
  the known-user path, as the server answers them (``*_ev`` columns: the users with events only);
- (c) ``warm``: the previous (c) model warm-started (``towers.training.warm_start``) on everything
  applied, ``--warm-epochs`` epochs (Adam restarts), known-user path;
- (d) ``full``: a fresh model trained on everything applied, ``--epochs`` epochs;

and UserKNN: fitted on the first part (``frozen``), that fit scoring each user's row extended by
the events (``live``, ``UserKNN.score_history``), and refitted on everything applied (``refit``).
Training runs in this process (``towers.training.loop.fit``), without validation or refit, each
for its whole epoch budget; times are wall seconds of the fit alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from serving.fresh import extend_history
from towers.data.errors import DataError
from towers.data.interactions import Interactions
from towers.data.prepared import PreparedData, load_prepared
from towers.metrics.ranking import ranking_metrics
from towers.metrics.top_k import top_k_excluding
from towers.model.config import TwoTowerConfig
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import Storage
from towers.training.loop import fit
from towers.training.warm_start import Vocabularies, warm_start_epochs, warm_start_weights

K = 10
TWO_TOWER = ("frozen", "live", "warm", "full")
KNN = ("knn_frozen", "knn_live", "knn_refit")
EVENT_USERS = ("frozen_ev", "live_ev", "knn_frozen_ev", "knn_live_ev")  # users with events only


def log(message: str) -> None:
    print(f"[replay {time.strftime('%H:%M:%S')}] {message}", flush=True)


def time_chunks(stream: Interactions, n_chunks: int) -> list[Interactions]:
    """``stream`` in time order (ties: user, item), cut into ``n_chunks`` equal parts."""
    order = np.lexsort((stream.item_idx, stream.user_idx, stream.timestamp))
    parts = np.array_split(order, n_chunks)
    out = []
    for rows in parts:
        mask = np.zeros(len(stream), bool)
        mask[rows] = True
        out.append(stream.subset(mask))
    return out


def ndcg(scores: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, chunk: Interactions) -> float:
    """NDCG@10 of ``scores`` ``(U, n_items)`` for ``users`` against their items in ``chunk``,
    every item of ``seen`` (``(n_users, n_items)``, what each user had) excluded."""
    relevant = chunk.to_csr(binary=True)[users]
    items, _ = top_k_excluding(scores, K, seen[users])
    return ranking_metrics(items, relevant, ks=(K,))[f"ndcg@{K}"]


def live_two_tower_scores(
    rec: TwoTowerRecommender, data: PreparedData, users: np.ndarray, applied: Interactions
) -> np.ndarray:
    """(b): each user's first part plus the applied events (oldest first, an item once, at its
    latest position) through the cold-start path, as ``serving.fresh.two_tower_top_k``."""
    names = [f.name for f in data.features.users.features]
    rows = data.users.set_index("user_idx")
    order = np.lexsort((applied.timestamp, applied.user_idx))
    cuts = np.cumsum(np.bincount(applied.user_idx[order], minlength=data.n_users))[:-1]
    by_user = np.split(applied.item_idx[order], cuts)
    rated_by_user = np.split(applied.rating[order].astype(np.float64), cuts)
    queries = []
    for user in users:
        history, ratings = extend_history(
            *rec.rated_history_in_time_order(int(user)), by_user[user], rated_by_user[user]
        )
        values = {n: _plain(rows.at[int(user), n]) for n in names}
        try:
            queries.append(rec.user_embedding_cold_start(values, history, ratings))
        except DataError:  # a value the fitted encoders refuse: the features unknown
            queries.append(rec.user_embedding_cold_start(None, history, ratings))
    return np.stack(queries) @ rec.item_embeddings().T  # (U, N)


def _plain(value: Any) -> Any:
    """A table cell as the JSON value a client would send (NaN: unknown)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def live_knn_scores(knn: UserKNN, users: np.ndarray, applied: Interactions) -> np.ndarray:
    """UserKNN (live): each user's training row with the events' ratings (latest wins)."""
    train = knn._require_fitted()
    rows = train.concat(applied)
    order = np.argsort(rows.timestamp, kind="stable")  # later ratings overwrite earlier ones
    matrix = sp.csr_matrix((rows.n_users, rows.n_items), dtype=np.float64).tolil()
    matrix[rows.user_idx[order], rows.item_idx[order]] = rows.rating[order]
    matrix = matrix.tocsr()
    out = []
    for user in users:
        row = matrix[user]
        out.append(knn.score_history(row.indices, row.data, exclude_user=int(user)))
    return np.stack(out)


def train_two_tower(
    config: TwoTowerConfig, data: PreparedData, train: Interactions, **kwargs: Any
) -> tuple[TwoTowerRecommender, float]:
    start = time.perf_counter()
    model, _ = fit(config, train, None, data.features, rating_scale=data.rating_scale, **kwargs)
    took = time.perf_counter() - start
    return TwoTowerRecommender.from_model(model, data.features, train, data.rating_scale), took


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = load_prepared(Storage(args.storage), args.split)
    first, stream = data.full_train, data.test
    chunks = time_chunks(stream, args.chunks)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    config = TwoTowerConfig.from_preset("default", **overrides)
    config = config.sized_for(
        data.features, data.has_ratings, data.time_ordered, len(first), data.next_item
    )
    warm_epochs = args.warm_epochs or warm_start_epochs(config.epochs)
    warm_overrides = {"epochs": warm_epochs, **({"lr": args.warm_lr} if args.warm_lr else {})}
    warm_config = TwoTowerConfig.from_dict({**config.to_dict(), **warm_overrides})
    vocab = Vocabularies.of_tables(data.users, data.items)
    mode = args.knn_mode
    log(
        f"{data.manifest['dataset']} {data.split}: first part {len(first):,}, replayed "
        f"{len(stream):,} in {args.chunks} chunks; two-tower {config.epochs} epochs "
        f"(warm {warm_config.epochs}, lr {warm_config.lr}), UserKNN {mode} k={args.knn_neighbors}"
    )
    frozen, t_first = train_two_tower(config, data, first)
    log(f"first model trained in {t_first:.1f}s")
    knn_frozen = UserKNN(n_neighbors=args.knn_neighbors, mode=mode).fit(first)
    warm = frozen
    applied = first.subset(np.zeros(len(first), bool))  # no events yet
    rows = []
    for c in range(1, args.chunks):
        applied = applied.concat(chunks[c - 1])
        known = first.concat(applied)
        seen = known.to_csr(binary=True)
        target = chunks[c]
        users = np.unique(target.user_idx)
        row: dict[str, Any] = {"chunk": c, "users": len(users), "events_applied": len(applied)}
        retrained: dict[str, Any] = {}
        if args.live_only:
            row.update(t_warm=float("nan"), t_full=float("nan"), t_knn_refit=float("nan"))
        else:
            weights, _ = warm_start_weights(warm.model, vocab, warm_config, vocab)
            warm, row["t_warm"] = train_two_tower(warm_config, data, known, initial=weights)
            full, row["t_full"] = train_two_tower(config, data, known)
            start = time.perf_counter()
            knn_refit = UserKNN(n_neighbors=args.knn_neighbors, mode=mode).fit(known)
            row["t_knn_refit"] = time.perf_counter() - start
            retrained = {"warm": warm, "full": full, "knn_refit": knn_refit}
        # Users without an applied event take the known-user path, as the server answers them.
        fresh = np.isin(users, applied.user_idx)
        row["users_with_events"] = int(fresh.sum())
        live, knn_live = frozen.score(users), knn_frozen.score(users)
        if fresh.any():
            live[fresh] = live_two_tower_scores(frozen, data, users[fresh], applied)
            knn_live[fresh] = live_knn_scores(knn_frozen, users[fresh], applied)
        scored = {
            "frozen": frozen.score(users),
            "live": live,
            "knn_frozen": knn_frozen.score(users),
            "knn_live": knn_live,
            **{name: model.score(users) for name, model in retrained.items()},
        }
        row.update({name: float("nan") for name in (*TWO_TOWER, *KNN)})  # not run: nan
        row.update({name: ndcg(s, users, seen, target) for name, s in scored.items()})
        # The same, over the users with events only: where live histories can differ at all.
        for name in ("frozen", "live", "knn_frozen", "knn_live"):
            row[f"{name}_ev"] = ndcg(scored[name][fresh], users[fresh], seen, target)
        rows.append(row)
        log(
            f"chunk {c}: "
            + " ".join(f"{n} {row[n]:.4f}" for n in (*TWO_TOWER, *KNN, *EVENT_USERS))
            + f" | warm {row['t_warm']:.1f}s full {row['t_full']:.1f}s"
        )
    result = {"dataset": data.manifest["dataset"], "split": data.split, "rows": rows,
              "config": {"epochs": config.epochs, "warm_epochs": warm_config.epochs,
                         "warm_lr": warm_config.lr, "lr": config.lr}}  # fmt: skip
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    return result


def _mean(values: list[float]) -> float:
    """The mean over the chunks that have the value (``*_ev``: chunks with users with events;
    nan where none has it, or the method was not run)."""
    kept = [v for v in values if v == v]
    return float(np.mean(kept)) if kept else float("nan")


def markdown(result: dict[str, Any]) -> str:
    """The table: NDCG@10 per chunk and method (all users, then the users with events only),
    then the mean; training seconds."""
    names = (*TWO_TOWER, *KNN, *EVENT_USERS)
    times = ("t_warm", "t_full", "t_knn_refit")
    head = "| chunk | users (with events) | " + " | ".join(names)
    lines = [head + " | t warm (s) | t full (s) | t knn refit (s) |"]
    lines.append("|" + " --- |" * (len(names) + 5))
    rows = result["rows"]
    for row in rows:
        users = f"{row['users']} ({row['users_with_events']})"
        cells = [str(row["chunk"]), users, *(f"{row[n]:.4f}" for n in names)]
        lines.append("| " + " | ".join(cells + [f"{row[t]:.1f}" for t in times]) + " |")
    mean = {n: _mean([r[n] for r in rows]) for n in (*names, *times)}
    cells = ["mean", "", *(f"**{mean[n]:.4f}**" for n in names)]
    lines.append("| " + " | ".join(cells + [f"{mean[t]:.1f}" for t in times]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True, help="storage root with a prepared data/")
    parser.add_argument("--split", default="temporal", help="prepared split (default temporal)")
    parser.add_argument("--chunks", type=int, default=4, help="replay chunks (default 4)")
    parser.add_argument("--epochs", type=int, default=None, help="full trainings' epochs "
                        "(default: the default preset's)")  # fmt: skip
    parser.add_argument("--warm-epochs", type=int, default=None,
                        help="warm starts' epochs (default: a third of the first model's, 1 to 3, "
                        "as ray_jobs.train --warm-start)")  # fmt: skip
    parser.add_argument("--warm-lr", type=float, default=None,
                        help="warm starts' peak learning rate (default: the model's)")  # fmt: skip
    parser.add_argument("--knn-neighbors", type=int, default=40, help="UserKNN neighbours")
    parser.add_argument("--knn-mode", default="implicit", choices=("implicit", "explicit"),
                        help="UserKNN mode (default implicit: explicit mode ranks by predicted "
                        "rating, which ranks poorly)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--live-only",
        action="store_true",
        help="only (a) and (b) and UserKNN's frozen / live rows: no warm starts or retrains",
    )
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        parser.error("--chunks must be >= 2 (the first chunk is only applied)")
    run(args)


if __name__ == "__main__":
    main()
