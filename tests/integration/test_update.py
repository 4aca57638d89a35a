"""``pipeline --update`` on a running Serve app: events posted over HTTP are folded into data/,
a model is warm-started from the served one, indexed, UserKNN refitted, and both are rolled out
while clients keep requesting — with no failed request — after which a user first seen through
events is a training user of the served model.

Its own app and storage (seconds of training on the tiny data set), deployed over the shared
one as ``tests/integration/test_new_items.py`` does; the file sorts after the other Serve
modules, and a module after it would deploy the shared app again (``serve_app``).
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from ray_jobs import pipeline
from serving import rollout
from serving.rollout import roll_out
from tests.integration.conftest import shared_config
from tests.integration.test_new_items import Load
from tests.integration.test_serving_ray import deploy, wait_for
from towers import artifacts
from towers.artifacts import publish_small_run
from towers.data.prepared import load_prepared
from towers.storage.root import Storage

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]
PACED_S = 0.5  # each client's wait between requests until the roll-out starts


@pytest.fixture(scope="module")
def update_run(ray_session, tiny_storage, tmp_path_factory) -> Storage:
    storage = Storage(tmp_path_factory.mktemp("update-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    publish_small_run(storage, epochs=2, embedding_dim=16, seed=0)
    return storage


def test_update_rolls_a_warm_started_model_out_under_load(update_run, serve_port, monkeypatch):
    storage = update_run
    config = shared_config(storage)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] != "EventStore":
            deployment["num_replicas"] = 1  # room on the session's 4 CPUs for Ray Train
    base = f"http://127.0.0.1:{serve_port}"
    # Blocking: until the app is RUNNING, the replicas of the app it replaces may still hold
    # requests (after test_serving_ray, each client's first request then timed out with a 504).
    deploy(config)
    users = storage.read_parquet("data/users.parquet")["user_id"].tolist()
    items = storage.read_parquet("data/items.parquet")["item_id"].tolist()
    newcomer = max(users) + 1
    health = lambda: http.get("/healthz").json()["models"]  # noqa: E731
    with httpx.Client(base_url=base, timeout=30) as http:
        wait_for(lambda: http.get("/healthz").status_code == 200, 300)
        served = health()["two_tower"]["model_version"]
        events = [
            {"event_id": f"u{i}", "user_id": newcomer, "item_id": items[i], "rating": 5.0}
            for i in range(3)
        ] + [{"event_id": "k0", "user_id": users[1], "item_id": items[7], "rating": 4.0}]
        posted = http.post("/events", json={"events": events})
        assert posted.status_code == 200 and posted.json()["accepted"] == 4, posted.text
        # Requests all through the update, paced until the roll-out starts (back to back, six
        # clients starved the warm start's training of the two cores), back to back from then.
        with Load(base, [str(u) for u in users[:6]], pause_s=PACED_S) as load:
            at_rollout: dict[str, int] = {}

            def under_full_load(*args, **kwargs):
                with load.lock:
                    at_rollout.update(load.outcomes)
                    load.pause_s = 0.0
                return roll_out(*args, **kwargs)

            monkeypatch.setattr(rollout, "roll_out", under_full_load)  # what update.py calls
            time.sleep(1.0)
            # The local loader: Ray Data's adds ~10 s here and is tested with the pipeline in
            # test_multinode.py.
            update = pipeline.PipelineConfig(
                storage=storage.uri, update=True, num_workers=1, epochs=1, data_loader="local"
            )
            summary = pipeline.run(update)
            time.sleep(1.0)
        print(f"requests: {at_rollout} before the roll-out started, {load.outcomes} in all")
        assert set(load.outcomes) == {"200"} and at_rollout.get("200", 0) > 20, load.outcomes
        assert load.outcomes["200"] - at_rollout["200"] > 20  # during and after the roll-out
        assert summary["rolled_out"] and summary["model"] == "model_u4"
        now = health()
        assert now["two_tower"]["model_version"] == summary["version"] != served
        assert now["two_tower"]["artifact"] == "model_u4"
        assert now["user_knn"]["artifact"] == "knn_u4"
        answer = http.get(f"/recommend/{newcomer}", params={"k": 5})
        assert answer.status_code == 200
        assert not {i["item_id"] for i in answer.json()["items"]} & set(items[:3])

    data = load_prepared(storage)
    assert data.n_users == len(users) + 1 and data.manifest["events_seq"] == 4
    manifest = storage.read_manifest("model_u4")
    assert manifest["warm_from"] == served and manifest["history"][0]["phase"] == "search"
    rec, _ = artifacts.load_two_tower(storage, "model_u4")
    assert rec.n_users == data.n_users  # the newcomer has a row of its own now
    # Nothing new: the update says so and publishes nothing.
    again = pipeline.run(pipeline.PipelineConfig(storage=storage.uri, update=True))
    assert again["events"] == 0
