"""``ray_jobs.build_index`` in this process (``--embed local``, what ``auto`` picks below
``RAY_DATA_FROM`` items): the index's embeddings are the exported item tower's, its recall is
measured against exact search, and ``auto`` sends large catalogs to Ray Data. The Ray Data path
itself (an actor pool, the same embeddings) is tested in tests/integration/test_new_items.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ray_jobs import build_index
from towers import artifacts
from towers.index import ItemIndex
from towers.storage.root import Storage


@pytest.fixture(scope="module")
def small_run(tiny_storage, tmp_path_factory) -> Storage:
    storage = Storage(tmp_path_factory.mktemp("build-index-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    artifacts.publish_small_run(storage, epochs=1, embedding_dim=16, seed=0)
    return storage


def test_local_embedding_indexes_the_item_towers_embeddings(small_run):
    manifest = build_index.run(
        build_index.BuildIndexConfig(storage=small_run.uri, artifact="index_here", batch_size=64)
    )
    assert manifest["embedded_with"] == "local"  # auto, 200 items
    assert manifest["measured_recall"]["recall"] >= 0.99  # ScaNN brute force at this size
    rec, _ = artifacts.load_two_tower(small_run)
    index = ItemIndex.load(small_run.path("index_here"))
    assert index.size == rec.n_items and index.model_version == rec.version
    users = np.arange(10)
    seen = rec.seen_matrix()[users]
    _, got = index.search(rec.user_embeddings(users), 10, exclude=seen)
    expected, _ = rec.recommend(users, k=10)  # the model's own exact top-10 over its embeddings
    assert (got == expected).mean() >= 0.99
    users_file = np.load(small_run.path("index_here", artifacts.USER_EMBEDDINGS))
    np.testing.assert_allclose(users_file, rec.user_embeddings(np.arange(rec.n_users)), rtol=1e-5)


def test_auto_sends_large_catalogs_to_ray_data(small_run, monkeypatch):
    calls = []

    def fake_ray_data(cfg, items):  # stands in for the actor pool: records the call
        calls.append(len(items))
        rec, _ = artifacts.load_two_tower(Storage(cfg.storage))
        return build_index.embed_items_here(rec, items, cfg.batch_size)

    monkeypatch.setattr(build_index, "embed_items_with_ray_data", fake_ray_data)
    monkeypatch.setattr(build_index, "RAY_DATA_FROM", 150)
    cfg = build_index.BuildIndexConfig(storage=small_run.uri, artifact="index_auto")
    assert build_index.run(cfg)["embedded_with"] == "ray_data" and calls == [200]
    forced = build_index.BuildIndexConfig(
        storage=small_run.uri, artifact="index_local", embed="local"
    )
    assert build_index.run(forced)["embedded_with"] == "local" and calls == [200]


def test_embedding_here_keeps_the_item_order_of_a_shuffled_table(small_run):
    rec, _ = artifacts.load_two_tower(small_run)
    table, _ = build_index.catalog_items(small_run, rec.n_items, None)
    shuffled = table.sample(frac=1, random_state=1)
    np.testing.assert_allclose(
        build_index.embed_items_here(rec, shuffled, 7), rec.item_embeddings(), rtol=1e-5, atol=1e-6
    )
