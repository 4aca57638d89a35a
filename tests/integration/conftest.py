"""The Serve app that the Serve modules share: one storage root fitted once per session, and
``serving/config.yaml`` deployed onto the session's Serve with two replicas of every model
deployment and of the ingress (and the one EventStore).

Each module that uses ``serve_app`` applies that config again: nothing changes when it is already
running (a module before it used it), the replicas are reconfigured in place when a module left
another ``user_config``, and the app is deployed anew after a module that deployed its own.
"""

from __future__ import annotations

import shutil
from typing import Any

import httpx
import pytest
import yaml

from towers.artifacts import publish_small_run
from towers.storage.root import Storage

SHARED_REPLICAS = ("Ingress", "TwoTower", "UserKNN")


@pytest.fixture(scope="session")
def run_storage(tiny_storage, tmp_path_factory) -> Storage:
    """``data/`` of the tiny data set, two model versions (``model``/``index`` and
    ``model_v2``/``index_v2``), ``knn`` and, once events are posted, ``events/``."""
    storage = Storage(tmp_path_factory.mktemp("serve-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    publish_small_run(storage, epochs=2, embedding_dim=16, seed=0)
    publish_small_run(storage, 1, 16, 1, model_artifact="model_v2", index_artifact="index_v2")
    return storage


def shared_config(storage: Storage) -> dict[str, Any]:
    """``serving/config.yaml`` on ``storage`` with two replicas of Ingress, TwoTower and UserKNN
    (no autoscaling; a quarter CPU each, so a second app fits beside it on the session's Ray)."""
    from tests.integration.test_serving_ray import CONFIG

    config = yaml.safe_load(CONFIG.read_text())
    app = config["applications"][0]
    app["args"]["storage"] = storage.uri
    for deployment in app["deployments"]:
        if deployment["name"] in SHARED_REPLICAS:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
            deployment["ray_actor_options"]["num_cpus"] = 0.25
    return config


def delete_other_app(storage: Storage) -> None:
    """Deletes the app ``recommender`` unless it is this one (on ``storage``), and waits until its
    replicas are gone: deployed over another module's app, Serve would replace its replicas one
    by one, and those of the other app, still running, would follow the new EventStore's feed
    as followers that never acknowledge again."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from tests.integration.test_serving_ray import APP

    details = _get_global_client().get_serve_details().get("applications", {}).get(APP)
    if details is None:
        return
    args = (details.get("deployed_app_config") or {}).get("args") or {}
    if details.get("status") == "DELETING" or args.get("storage") != storage.uri:
        serve.delete(APP)


@pytest.fixture(scope="module")
def serve_app(serve_port, run_storage):
    """``(base_url, config)`` of the shared app, running and healthy."""
    from tests.integration.test_serving_ray import deploy, wait_for

    config = shared_config(run_storage)
    delete_other_app(run_storage)
    deploy(config)
    base_url = f"http://127.0.0.1:{serve_port}"
    wait_for(lambda: httpx.get(f"{base_url}/healthz").status_code == 200, 120)  # status "ok"
    return base_url, config
