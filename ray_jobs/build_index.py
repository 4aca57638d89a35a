"""Item embeddings with Ray Data batch inference, then a ScaNN index checked against exact search.

    python -m ray_jobs.build_index --storage runs/demo [--kind scann|exact|auto]

The exported item tower runs in a pool of Ray Data actors over ``item_idx`` batches, so a catalog
of millions of items streams through workers instead of one process; that is the only place the
items are embedded (the driver loads the model for the user tower only). The index is built over
the embeddings (item ids = ``item_idx``), its recall@10 is measured against exact search on a
sample of known users, and ``index/`` is published with a manifest that names the model version
and dimension it belongs to. Known users' embeddings are precomputed into ``index/`` too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from towers import artifacts
from towers.index import ExactIndex, index_recall, make_index
from towers.launch.cli import help_field, parse_config
from towers.launch.ray_init import init_ray, quiet_ray_data
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.storage.root import Storage

log = logging.getLogger("build_index")


@dataclass
class BuildIndexConfig:
    """Embed every item with the exported item tower (Ray Data) and build the ScaNN index."""

    storage: str = help_field("runs/demo", "storage root holding model/")
    model: str = help_field(artifacts.MODEL, "model artifact to index")
    kind: Literal["scann", "exact", "auto"] = help_field(
        "scann", "scann (brute force below 20k items, tree+AH above), exact, or auto"
    )
    batch_size: int = help_field(4096, "items per Ray Data inference batch")
    num_actors: int = help_field(1, "Ray Data actors running the item tower")
    recall_users: int = help_field(500, "known users whose top-10 is compared with exact search")
    min_recall: float = help_field(0.9, "fail when the measured recall@10 is below this")
    user_embeddings: bool = help_field(True, "also precompute known users' embeddings")


class ItemTowerActor:
    """A Ray Data actor: loads the exported model once, embeds batches of ``item_idx``."""

    def __init__(self, storage_uri: str, artifact: str) -> None:
        import torch

        torch.set_num_threads(1)
        with Storage(storage_uri).checked_copy(artifact) as (folder, _):
            self.rec = TwoTowerRecommender.load(folder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        model, ctx = self.rec.model, self.rec.ctx
        assert model is not None and ctx is not None
        items = torch.as_tensor(batch["item_idx"].astype(np.int64))
        with torch.no_grad():
            emb = model.item_embeddings(ctx.item_batch(items)).float().numpy()  # (B, D)
        return {"item_idx": batch["item_idx"], "embedding": emb}


def embed_items_with_ray_data(cfg: BuildIndexConfig, n_items: int) -> np.ndarray:
    """``(n_items, D)`` float32 item embeddings, row ``i`` for ``item_idx`` ``i``."""
    import ray
    import ray.data

    init_ray(cfg.num_actors + 1)
    quiet_ray_data()
    items = ray.data.range(n_items).rename_columns({"id": "item_idx"})
    embedded = items.map_batches(
        ItemTowerActor,
        fn_constructor_args=(cfg.storage, cfg.model),
        batch_size=cfg.batch_size,
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
    # The driver needs the user tower (recall check, user embeddings); items go through Ray Data.
    rec, model_manifest = artifacts.load_two_tower(storage, cfg.model)
    start = time.perf_counter()
    embeddings = embed_items_with_ray_data(cfg, rec.n_items)
    embed_s = time.perf_counter() - start
    ids = np.arange(rec.n_items, dtype=np.int64)
    index = make_index(cfg.kind, rec.n_items, model_version=rec.version).build(embeddings, ids)
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
    manifest = artifacts.publish_index(
        storage,
        index,
        user_embeddings=all_users,
        model=cfg.model,
        recall_users=len(users),
        embed_seconds=round(embed_s, 2),
        model_manifest_version=model_manifest.get("version"),
    )
    print(
        f"index/: {index.kind} over {index.size} items (D={index.dim}) for model "
        f"{rec.version}; recall@10 vs exact {recall:.4f} on {len(users)} users; "
        f"item embeddings via Ray Data in {embed_s:.1f}s"
    )
    return manifest


def main(argv: list[str] | None = None) -> None:
    run(parse_config(BuildIndexConfig, argv))


if __name__ == "__main__":
    main()
