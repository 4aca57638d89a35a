"""New items without retraining: items added to the items table after training are embedded by
``build_index --items`` with the trained item tower (here through Ray Data's actor pool, which
catalogs of 100,000 items or more take by default: the same embeddings as in one process), and
the running server rolls the grown index
out through its ``user_config`` while clients keep requesting — with zero failed requests — and
then recommends them (unless ``new_items`` is off)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from ray_jobs import build_index, prepare
from tests.integration.test_serving_ray import (
    CONFIG,
    ClientThreads,
    deploy,
    wait_for,
    with_two_tower,
)
from towers import artifacts
from towers.artifacts import publish_small_run
from towers.data.shop import ShopSpec, write_shop
from towers.storage.root import Storage

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]
NEW = ("p-new-0", "p-new-1")


class Load(ClientThreads):
    """Clients asking for known users' top-k until stopped, each waiting ``pause_s`` between
    requests (none unless given; settable while running); every outcome counted."""

    def __init__(self, base_url: str, users: list[str], pause_s: float = 0.0) -> None:
        self.outcomes: dict[str, int] = {}
        self.pause_s = pause_s
        super().__init__([(base_url, f"/recommend/{u}?k=10") for u in users])

    def run(self, base_url: str, path: str) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    outcome = str(client.get(path).status_code)
                except Exception as err:  # a dropped connection is a failed request too
                    outcome = type(err).__name__
                with self.lock:
                    self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if self.pause_s:
                    self.stop.wait(self.pause_s)


@pytest.fixture(scope="module")
def shop_run(ray_session, tmp_path_factory):
    folder = write_shop(tmp_path_factory.mktemp("shop"), ShopSpec(n_users=120, n_items=90))
    storage = Storage(folder / "run")
    prepare.run(
        prepare.PrepareConfig(
            storage=storage.uri,
            interactions=str(folder / "interactions.parquet"),
            items=str(folder / "items.parquet"),
            users=str(folder / "users.parquet"),
            schema=str(folder / "schema.yaml"),
            split="random",
        )
    )
    publish_small_run(storage, epochs=3, embedding_dim=16, seed=0)
    items = pd.read_parquet(folder / "items.parquet")
    twins = items.head(len(NEW)).assign(sku=list(NEW), title=["New bag", "New shoes"])
    pd.concat([items, twins]).to_parquet(folder / "new_items.parquet", index=False)
    return storage, folder / "new_items.parquet"


def test_new_items_are_indexed_rolled_out_and_recommended(shop_run, serve_port):
    storage, new_table = shop_run
    manifest = build_index.run(
        build_index.BuildIndexConfig(
            storage=storage.uri, items=str(new_table), artifact="index_new", min_recall=0.0,
            embed="ray_data", batch_size=32,  # three batches through the actor pool
        )
    )  # fmt: skip
    assert manifest["grown_catalog"] and manifest["n_catalog_items"] == 90 + len(NEW)
    assert manifest["embedded_with"] == "ray_data"
    items, embeddings = artifacts.load_index_catalog(storage, "index_new")
    assert items["item_id"].tolist()[-len(NEW) :] == list(NEW) and len(embeddings) == 92
    rec, _ = artifacts.load_two_tower(storage)
    table, _ = build_index.catalog_items(storage, rec.n_items, str(new_table))
    here = build_index.embed_items_here(rec, table.sample(frac=1, random_state=0), 40)
    np.testing.assert_allclose(embeddings, here, rtol=1e-5, atol=1e-6)  # in this process: same

    config = yaml.safe_load(CONFIG.read_text())
    config["applications"][0]["args"]["storage"] = storage.uri
    base = f"http://127.0.0.1:{serve_port}"
    deploy(config)  # on the session's Serve, in place of the app deployed before
    with httpx.Client(base_url=base, timeout=30) as http:
        wait_for(lambda: http.get("/healthz").status_code == 200, 120)
        users = http.get("/users", params={"k": 6}).json()["user_ids"]
        assert http.get(f"/similar/{NEW[0]}").status_code == 404  # not yet in the catalog
        health = lambda: http.get("/healthz").json()["models"]["two_tower"]  # noqa: E731
        with Load(base, users) as load:
            time.sleep(1.0)
            deploy(with_two_tower(config, index_artifact="index_new"))
            wait_for(lambda: health()["index_artifact"] == "index_new", 60)
            time.sleep(1.0)
        assert set(load.outcomes) == {"200"} and load.outcomes["200"] > 20, load.outcomes
        assert health()["new_items"] == len(NEW) and health()["new_items_served"]

        # The user whose unseen-item ranking puts a new item highest gets it at that rank.
        user_emb = np.load(storage.path("index_new", artifacts.USER_EMBEDDINGS))
        scores = user_emb @ embeddings.T  # (U, 92)
        seen = rec.seen_matrix().toarray().astype(bool)
        scores[:, : seen.shape[1]][seen] = -np.inf
        new_cols = np.arange(90, 92)
        ranks = (scores[:, :, None] > scores[:, None, new_cols]).sum(1)  # (U, 2)
        user, which = np.unravel_index(np.argmin(ranks), ranks.shape)
        k = int(ranks[user, which]) + 1
        user_id = storage.read_parquet("data/users.parquet")["user_id"].iloc[user]
        answer = http.get(f"/recommend/{user_id}", params={"k": k}).json()
        assert answer["items"][-1]["item_id"] == NEW[which], (k, answer)
        assert answer["items"][-1]["title"] in ("New bag", "New shoes")  # its display columns
        similar = http.get(f"/similar/{NEW[0]}", params={"k": 3})
        assert similar.status_code == 200 and similar.json()["title"] == "New bag"
        cold = http.post("/recommend", json={"liked_item_ids": [NEW[1]]}).json()
        assert NEW[1] not in [i["item_id"] for i in cold["items"]]

        # new_items off: the same answer leaves the new items out.
        deploy(with_two_tower(config, index_artifact="index_new", new_items=False))
        wait_for(lambda: not health()["new_items_served"], 60)
        answer = http.get(f"/recommend/{user_id}", params={"k": k}).json()
        assert not set(NEW) & {i["item_id"] for i in answer["items"]}
        assert len(answer["items"]) == k
