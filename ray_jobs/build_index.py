"""Item embeddings with Ray Data batch inference, then a ScaNN index checked against exact search.

    python -m ray_jobs.build_index --storage runs/demo [--kind scann|exact|auto]
    python -m ray_jobs.build_index --storage runs/shop --items new_items.parquet --artifact index_v2

The exported item tower runs over batches of the items table's rows (each encoded with the
model's fitted encoders). For a catalog of ``RAY_DATA_FROM`` items or more (``--embed auto``,
the default, or ``--embed ray_data``) the batches stream through a pool of Ray Data actors, so
millions of items never sit in one process; below it they run in this process, which the driver
holds anyway: on a 2-core machine the actor pool took ~15 s to start and one process embedded
Gowalla's 41k items in 0.8 s (docs/BENCHMARKS.md). The index is built over the embeddings (item
ids = ``item_idx``), its recall@10 is measured against exact search on a sample of known users,
and the index artifact is published with a manifest that names the model version and dimension
it belongs to. Known users' embeddings are precomputed into it too.

``--items`` takes an items table in the form the data set was prepared from: its items that are
not in ``data/`` are added after the model's (features only: their id embedding is the model's
"unknown item"), without retraining. The index then carries the grown catalog (ids, display
columns, embeddings) and a running server rolls it out through its ``user_config``
(``index_artifact``); whether the new items are recommended is the ``new_items`` setting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from towers import artifacts
from towers.data import prepared
from towers.data.contract import load_items
from towers.index import ExactIndex, index_recall, make_index
from towers.launch.cli import help_field, parse_config
from towers.launch.ray_init import init_ray, quiet_ray_data
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.storage.root import Storage

log = logging.getLogger("build_index")

# ``--embed auto`` runs the item tower through Ray Data from this many catalog items on.
RAY_DATA_FROM = 100_000


@dataclass
class BuildIndexConfig:
    """Embed every item with the exported item tower (Ray Data for large catalogs) and build the
    ScaNN index."""

    storage: str = help_field("runs/demo", "storage root holding model/")
    model: str = help_field(artifacts.MODEL, "model artifact to index")
    kind: Literal["scann", "exact", "auto"] = help_field(
        "scann", "scann (brute force below 20k items, tree+AH above), exact, or auto"
    )
    embed: Literal["auto", "local", "ray_data"] = help_field(
        "auto",
        f"where the item tower runs: a pool of Ray Data actors (ray_data), this process (local), "
        f"or auto (Ray Data from {RAY_DATA_FROM:,} items on)",
    )
    batch_size: int = help_field(4096, "items per inference batch")
    num_actors: int = help_field(1, "Ray Data actors running the item tower (--embed ray_data)")
    recall_users: int = help_field(500, "known users whose top-10 is compared with exact search")
    min_recall: float = help_field(0.9, "fail when the measured recall@10 is below this")
    user_embeddings: bool = help_field(True, "also precompute known users' embeddings")
    items: str | None = help_field(
        None, "an items table with items added after training (the prepared form: Parquet/CSV)"
    )
    artifact: str = help_field(artifacts.INDEX, "artifact folder the index goes to")


class ItemTowerActor:
    """A Ray Data actor: loads the exported model once, embeds batches of ``item_idx``."""

    def __init__(self, storage_uri: str, artifact: str) -> None:
        import torch

        torch.set_num_threads(1)
        with Storage(storage_uri).checked_copy(artifact) as (folder, _):
            self.rec = TwoTowerRecommender.load(folder)

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        return embed_batch(self.rec, batch)


def embed_batch(rec: TwoTowerRecommender, batch: pd.DataFrame) -> dict[str, np.ndarray]:
    """``{"item_idx": (B,), "embedding": (B, D)}`` of a batch of the items table's rows."""
    emb = rec.embed_item_rows(batch, batch["known_idx"].to_numpy())  # (B, D)
    return {"item_idx": batch["item_idx"].to_numpy(), "embedding": emb}


def embed_items_here(rec: TwoTowerRecommender, items: pd.DataFrame, batch_size: int) -> np.ndarray:
    """``(len(items), D)`` float32 item embeddings computed in this process, batch by batch."""
    chunks = [
        embed_batch(rec, items.iloc[i : i + batch_size])["embedding"]
        for i in range(0, len(items), batch_size)
    ]
    order = np.argsort(items["item_idx"].to_numpy())
    return np.concatenate(chunks)[order].astype(np.float32)


def catalog_items(
    storage: Storage, n_model_items: int, new_table: str | None
) -> tuple[pd.DataFrame, int]:
    """``(items, n_added)``: ``data/``'s items table, plus the rows of ``new_table`` whose ids it
    lacks, appended with ``item_idx`` from ``n_model_items`` on; ``known_idx`` is each row's
    index in the model's catalog, -1 for an added item."""
    items = storage.read_parquet(prepared.ITEMS)
    added = 0
    if new_table is not None:
        new = load_items(new_table, prepared.read_source_schema(storage))
        new = new[~new["item_id"].isin(items["item_id"])].reset_index(drop=True)
        added = len(new)
        new.insert(0, "item_idx", np.arange(len(items), len(items) + added, dtype=np.int64))
        items = pd.concat([items, new], ignore_index=True)
        log.info("%s: %d items added after training (%d in all)", new_table, added, len(items))
    items["known_idx"] = np.where(items["item_idx"] < n_model_items, items["item_idx"], -1)
    return items, added


def embed_items_with_ray_data(cfg: BuildIndexConfig, items: pd.DataFrame) -> np.ndarray:
    """``(len(items), D)`` float32 item embeddings, row ``i`` for ``item_idx`` ``i``."""
    import ray
    import ray.data

    init_ray(cfg.num_actors + 1)
    quiet_ray_data()
    embedded = ray.data.from_pandas(items).map_batches(
        ItemTowerActor,
        fn_constructor_args=(cfg.storage, cfg.model),
        batch_size=cfg.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=1,
    )
    ids, chunks = [], []
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(batch["item_idx"])
        chunks.append(np.stack(batch["embedding"]))
    order = np.argsort(np.concatenate(ids))
    return np.concatenate(chunks)[order].astype(np.float32)


def run(cfg: BuildIndexConfig) -> dict[str, Any]:
    storage = Storage(cfg.storage)
    cfg = replace(cfg, storage=storage.absolute_uri)  # Ray Data actors run in another cwd
    # The driver needs the user tower (recall check, user embeddings); large catalogs' items go
    # through Ray Data.
    rec, model_manifest = artifacts.load_two_tower(storage, cfg.model)
    items, added = catalog_items(storage, rec.n_items, cfg.items)
    start = time.perf_counter()
    assert rec.features is not None
    needed = ["item_idx", "known_idx", *(f.name for f in rec.features.items.features)]
    embed = cfg.embed
    if embed == "auto":
        embed = "ray_data" if len(items) >= RAY_DATA_FROM else "local"
    if embed == "ray_data":
        embeddings = embed_items_with_ray_data(cfg, items[needed])
    else:
        embeddings = embed_items_here(rec, items[needed], cfg.batch_size)
    embed_s = time.perf_counter() - start
    ids = np.arange(len(items), dtype=np.int64)
    index = make_index(cfg.kind, len(items), model_version=rec.version).build(embeddings, ids)
    exact = ExactIndex(rec.version).build(embeddings, ids)
    rng = np.random.default_rng(0)
    users = rng.choice(rec.n_users, min(cfg.recall_users, rec.n_users), replace=False)
    queries = rec.user_embeddings(users)
    seen = rec.seen_matrix()[users]
    _, approx_ids = index.search(queries, 10, exclude=seen)
    _, exact_ids = exact.search(queries, 10, exclude=seen)
    recall = index_recall(approx_ids, exact_ids)
    if recall < cfg.min_recall:
        raise RuntimeError(f"index recall@10 {recall:.3f} is below --min-recall {cfg.min_recall}")
    index.measured_recall = {"k": 10, "recall": recall, "n_queries": len(users)}
    all_users = rec.user_embeddings(np.arange(rec.n_users)) if cfg.user_embeddings else None
    display = prepared.read_catalog_tables(storage)[2]
    grown = (items[["item_idx", "item_id", *display]], embeddings) if added else None
    manifest = artifacts.publish_index(
        storage,
        index,
        cfg.artifact,
        user_embeddings=all_users,
        catalog=grown,
        model=cfg.model,
        recall_users=len(users),
        embed_seconds=round(embed_s, 2),
        embedded_with=embed,
        model_manifest_version=model_manifest.get("version"),
    )
    print(
        f"{cfg.artifact}/: {index.kind} over {index.size} items ({added} added after training; "
        f"D={index.dim}) for model "
        f"{rec.version}; recall@10 vs exact {recall:.4f} on {len(users)} users; "
        f"item embeddings {'via Ray Data' if embed == 'ray_data' else 'in this process'} in "
        f"{embed_s:.1f}s"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    run(parse_config(BuildIndexConfig, argv))


if __name__ == "__main__":
    main()
