"""Serving without Ray: id mapping, validation, responses, artifact checks, the HTTP app, reloads.

The artifacts are fitted in seconds on the shared synthetic data set (``tiny_storage``), copied
into a storage root of their own so other tests' artifacts are untouched.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from serving.artifacts import (
    ArtifactLoadError,
    load_two_tower_service,
    load_user_knn_service,
    settle_heap,
)
from serving.deployments import TwoTowerDeployment, UserKNNDeployment
from serving.http import LocalBackend, create_app
from serving.recommenders import Catalog, ServingError, TwoTowerService
from serving.schemas import ModelSettings, ServingArgs
from towers.artifacts import publish_small_run
from towers.storage.root import Storage

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_storage(tiny_storage, tmp_path_factory) -> Storage:
    """``data/`` of the tiny data set plus model/index/knn (v1) and model_v2/index_v2."""
    storage = Storage(tmp_path_factory.mktemp("serving-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    publish_small_run(storage, epochs=2, embedding_dim=16, seed=0)
    publish_small_run(
        storage, 1, 16, 1, model_artifact="model_v2", index_artifact="index_v2", knn_artifact="knn"
    )
    return storage


@pytest.fixture(scope="module")
def two_tower(run_storage):
    return load_two_tower_service(run_storage.uri, ModelSettings())


@pytest.fixture(scope="module")
def user_knn(run_storage):
    return load_user_knn_service(run_storage.uri, ModelSettings(model_artifact="knn"))


@pytest.fixture(scope="module")
def client(two_tower, user_knn) -> TestClient:
    app = create_app(LocalBackend({"two_tower": two_tower, "user_knn": user_knn}))
    return TestClient(app, raise_server_exceptions=False)


def known_user(service, rank: int = 0) -> int:
    return int(service.catalog.user_ids[rank])


# --- Catalog -------------------------------------------------------------------------------------


def test_catalog_maps_raw_ids_and_drops_padding():
    display = {"title": ["a", "b", "c"], "genres": [np.array(["X"]), [], ["Y"]]}
    catalog = Catalog(np.array([10, 20]), np.array([7, 9, 11]), display)
    assert catalog.user_index(20) == 1 and catalog.user_index("20") == 1  # a path's "20"
    assert catalog.item_indices([11, 7, 11]).tolist() == [0, 2]
    with pytest.raises(ServingError) as err:
        catalog.user_index(30)
    assert err.value.status == 404 and "30" in err.value.message
    with pytest.raises(ServingError) as err:
        catalog.item_indices([7, 8, 99])
    assert err.value.status == 422 and "[8, 99]" in err.value.message
    with pytest.raises(ServingError, match="item_id must be an integer id, got '7'"):
        catalog.item_indices(["7"])  # a JSON string is not an integer id
    ranked = catalog.ranked_items(np.array([2, -1, 0]), np.array([0.5, -np.inf, 0.25]))
    assert ranked == [
        {"item_id": 11, "title": "c", "genres": ["Y"], "score": 0.5},
        {"item_id": 7, "title": "a", "genres": ["X"], "score": 0.25},
    ]
    assert catalog.id_types() == {"user": "integer", "item": "integer"}


def test_catalog_with_string_ids():
    catalog = Catalog(np.array(["u1", "u2"]), np.array(["p-1", "p-2"]), {"url": ["/1", None]})
    assert catalog.user_index("u2") == 1 and catalog.item_indices(["p-2"]).tolist() == [1]
    assert catalog.id_types() == {"user": "string", "item": "string"}
    with pytest.raises(ServingError, match="item_id must be a string id, got 3"):
        catalog.item_indices([3])
    with pytest.raises(ServingError) as err:
        catalog.user_index("u9")
    assert err.value.status == 404
    assert catalog.ranked_items(np.array([1]), np.array([1.0])) == [
        {"item_id": "p-2", "url": None, "score": 1.0}
    ]


# --- Services ------------------------------------------------------------------------------------


@pytest.mark.parametrize("service_name", ["two_tower", "user_knn"])
def test_recommend_excludes_seen_and_ranks(request, service_name):
    service = request.getfixturevalue(service_name)
    model = service.recommender if service_name == "two_tower" else service.knn
    for rank in range(5):
        user_id = known_user(service, rank)
        body = service.recommend(user_id, 10)
        idx = service.catalog.user_index(user_id)
        seen = set(service.catalog.item_ids[model.seen_matrix()[idx].indices].tolist())
        items = [i["item_id"] for i in body["items"]]
        assert 0 < len(items) <= 10 and not seen & set(items)
        scores = [i["score"] for i in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert body["model"] == service_name and body["model_version"] == service.version
        assert body["user_id"] == user_id and body["cold_start"] is False


@pytest.mark.parametrize("service_name", ["two_tower", "user_knn"])
def test_batch_equals_single_and_errors_stay_per_request(request, service_name):
    service = request.getfixturevalue(service_name)
    users = [known_user(service, r) for r in range(4)]
    requests = [(users[0], 5), (-1, 5), (users[1], 3), (users[2], 0), (users[3], 7)]
    answers = service.recommend_many(requests)
    assert [a[0] for a in answers] == [200, 404, 200, 422, 200]
    for (user_id, k), (status, body) in zip(requests, answers, strict=True):
        if status == 200:  # same items; scores equal up to float summation order in the index
            single = service.recommend(user_id, k)
            assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in single["items"]]
            batch_scores = [i["score"] for i in body["items"]]
            assert batch_scores == pytest.approx([i["score"] for i in single["items"]], rel=1e-5)


def test_two_tower_matches_exact_search_and_user_tower(run_storage, two_tower):
    tower = load_two_tower_service(
        run_storage.uri, ModelSettings(precomputed_user_embeddings=False)
    )
    assert tower.info["user_embeddings"] == "tower"
    rec = two_tower.recommender
    for rank in range(3):
        user_id = known_user(two_tower, rank)
        idx = two_tower.catalog.user_index(user_id)
        expected, _ = rec.recommend(np.array([idx]), 5)  # full-catalog scores, seen excluded
        got = [i["item_id"] for i in two_tower.recommend(user_id, 5)["items"]]
        assert got == two_tower.catalog.item_ids[expected[0]].tolist()
        assert [i["item_id"] for i in tower.recommend(user_id, 5)["items"]] == got


def test_cold_start_by_features_and_liked_items(two_tower):
    liked = two_tower.catalog.item_ids[:3].tolist()
    body = two_tower.recommend_cold_start(
        {"features": {"age": 30, "gender": "F", "occupation": None}, "liked_item_ids": liked}, 8
    )
    items = [i["item_id"] for i in body["items"]]
    assert len(items) == 8 and not set(liked) & set(items)
    assert body["cold_start"] is True and body["user_id"] is None
    only_features = two_tower.recommend_cold_start({"features": {"age": 60}}, 4)
    assert len(only_features["items"]) == 4
    for bad, code in [
        ({}, "empty_user"),
        ({"features": {}}, "empty_user"),
        ({"features": {"occupation": "wizard"}}, "bad_feature"),
        ({"liked_item_ids": [liked[0], -5]}, "unknown_item"),
    ]:
        with pytest.raises(ServingError) as err:
            two_tower.recommend_cold_start(bad, 4)
        assert (err.value.status, err.value.code) == (422, code)


def test_similar_items_exclude_the_item_and_follow_inner_product(two_tower):
    item_id = int(two_tower.catalog.item_ids[5])
    body = two_tower.similar_items(item_id, 6)
    got = [i["item_id"] for i in body["items"]]
    emb = two_tower.item_embeddings
    scores = emb @ emb[5]
    scores[5] = -np.inf
    expected = two_tower.catalog.item_ids[np.argsort(-scores, kind="stable")[:6]].tolist()
    assert item_id not in got and got == expected


def test_user_knn_refuses_cold_start_and_similar(user_knn):
    for call in (lambda: user_knn.recommend_cold_start({"liked_item_ids": [1]}, 5),
                 lambda: user_knn.similar_items(1, 5)):  # fmt: skip
        with pytest.raises(ServingError) as err:
            call()
        assert err.value.status == 400


# --- Artifact checks -----------------------------------------------------------------------------


def test_loaders_refuse_mismatched_or_incomplete_artifacts(run_storage, two_tower):
    v2 = load_two_tower_service(
        run_storage.uri, ModelSettings(model_artifact="model_v2", index_artifact="index_v2")
    )
    assert v2.version != two_tower.version
    cases = {
        "built for model version": ModelSettings(model_artifact="model_v2", index_artifact="index"),
        "pins model_version": ModelSettings(model_version="000000000000"),
        "'nope' is missing": ModelSettings(model_artifact="nope"),
    }
    broken = Path(run_storage.path("model_broken"))
    if not broken.exists():
        shutil.copytree(run_storage.path("model"), broken)
        (broken / "weights.safetensors").unlink()
    cases["lacks file weights.safetensors"] = ModelSettings(model_artifact="model_broken")
    manifest = run_storage.read_json("index/manifest.json")
    shutil.copytree(run_storage.path("index"), run_storage.path("index_dim"), dirs_exist_ok=True)
    run_storage.write_json("index_dim/manifest.json", {**manifest, "dim": 99})
    cases["has dimension 99"] = ModelSettings(index_artifact="index_dim")
    for message, settings in cases.items():
        with pytest.raises(ArtifactLoadError, match=message):
            load_two_tower_service(run_storage.uri, settings)
    with pytest.raises(ArtifactLoadError, match="missing"):
        load_user_knn_service(run_storage.uri, ModelSettings(model_artifact="nope"))


def test_settings_refuse_unknown_keys_and_path_names():
    with pytest.raises(ValueError, match="extra"):
        ModelSettings.model_validate({"model_artifcat": "model"})
    with pytest.raises(ValueError, match="plain folder name"):
        ModelSettings(model_artifact="../model")
    with pytest.raises(ValueError, match="storage"):
        ServingArgs.model_validate({})


# --- Deployment logic (the Serve classes called directly) ----------------------------------------


def test_reconfigure_swaps_versions_and_refuses_broken_ones(run_storage, two_tower, tmp_path):
    other = tmp_path / "other-run"  # another storage root whose model/ is v2
    shutil.copytree(run_storage.path("data"), other / "data")
    shutil.copytree(run_storage.path("model_v2"), other / "model")
    shutil.copytree(run_storage.path("index_v2"), other / "index")
    deployment = TwoTowerDeployment.func_or_class(run_storage.uri)
    batch = TwoTowerDeployment.func_or_class.recommend_batch.__wrapped__  # without the queue
    user_id = known_user(two_tower)

    async def scenario() -> None:
        gc.unfreeze()
        await deployment.reconfigure({"model_artifact": "model", "index_artifact": "index"})
        assert gc.get_freeze_count() > 0  # the loaded version is out of the collector's walks
        [(status, body)] = await batch(deployment, [(user_id, 3)])
        assert status == 200 and f'"model_version":"{two_tower.version}"' in body.decode()
        await deployment.reconfigure({"model_artifact": "model_v2", "index_artifact": "index"})
        assert deployment.service.version == two_tower.version  # refused: old one serves
        assert "built for model version" in deployment.refused["error"]
        await deployment.reconfigure({"model_artifact": "model_v2", "index_artifact": "index_v2"})
        assert deployment.service.version != two_tower.version and deployment.refused is None
        await deployment.reconfigure({"storage": str(other)})
        assert deployment.service.info["storage"] == str(other)
        await deployment.reconfigure({"max_batch_size": "many"})
        assert "invalid user_config" in deployment.refused["error"]
        health = await deployment.health()
        assert health["model_version"] == deployment.service.version and health["refused_version"]
        await deployment.reconfigure({"storage": str(other)})  # back to what is served
        assert deployment.refused is None

    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()  # this test's process is pytest's
    fresh = UserKNNDeployment.func_or_class(run_storage.uri)
    with pytest.raises(RuntimeError, match="missing"):  # nothing to fall back to: fail to start
        asyncio.run(fresh.reconfigure({"model_artifact": "nope"}))


def test_settle_heap_freezes_what_is_loaded_and_frees_a_replaced_version():
    class Version:
        pass

    old = Version()
    old.cycle = old  # only the cycle collector frees it
    gone = weakref.ref(old)
    try:
        settle_heap()  # a version loaded
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert gone() is not None  # frozen: full collections no longer walk it
        settle_heap()  # the next version loaded: what the old one held is collected
        assert gone() is None
    finally:
        gc.unfreeze()


class _Response:
    """A ``DeploymentResponse`` stand-in: awaiting it returns or raises ``outcome``."""

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    def __await__(self):
        async def settle() -> object:
            if self.outcome == "hang":
                await asyncio.sleep(60)
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return self.outcome

        return settle().__await__()

    def cancel(self) -> None:
        pass


class _Method:
    """``handle.method``: each ``.remote()`` call answers the next outcome."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes, self.calls = list(outcomes), 0

    def remote(self, *args: object) -> _Response:
        self.calls += 1
        return _Response(self.outcomes.pop(0))


def test_ingress_sends_once_more_when_a_replica_is_lost():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

    from serving.handles import HandleBackend

    def backend(method: _Method, timeout_s: float = 5.0) -> HandleBackend:
        handle = type("Handle", (), {"recommend_list": method})()
        return HandleBackend({"two_tower": handle}, timeout_s)

    ok, answers = (200, b"{}"), [(200, b"{}")]  # the model answers a list of requests
    for lost in (ActorDiedError(), ActorUnavailableError("gone", None)):
        method = _Method(lost, answers)
        ingress = backend(method)
        assert asyncio.run(ingress.recommend("two_tower", 1, 5)) == ok
        assert method.calls == 2 and ingress.retries_after_replica_loss == 1
    method = _Method(ActorDiedError(), ActorDiedError(), answers)  # lost twice: 503, no third call
    status, body = asyncio.run(backend(method).recommend("two_tower", 1, 5))
    assert (status, body["error"], method.calls) == (503, "unavailable", 2)
    bug = RayTaskError("recommend", "Traceback ...", ValueError("bug"))
    method = _Method(bug, answers)  # a bug in the model code: 500, not repeated
    status, body = asyncio.run(backend(method).recommend("two_tower", 1, 5))
    assert (status, body["error"], method.calls) == (500, "internal_error", 1)
    method = _Method("hang", answers)  # no answer within the deadline: 504, not repeated
    status, body = asyncio.run(backend(method, timeout_s=0.05).recommend("two_tower", 1, 5))
    assert (status, body["error"], method.calls) == (504, "timeout", 1)


# --- HTTP (FastAPI over the services in this process) --------------------------------------------


def test_http_endpoints(client, two_tower):
    user_id = known_user(two_tower)
    ok = client.get(f"/recommend/{user_id}?k=4")
    assert ok.status_code == 200 and len(ok.json()["items"]) == 4
    assert set(ok.json()["items"][0]) == {"item_id", "title", "genres", "score"}
    knn = client.get(f"/recommend/{user_id}", params={"k": 3, "model": "user_knn"}).json()
    assert knn["model"] == "user_knn" and len(knn["items"]) == 3
    liked = two_tower.catalog.item_ids[:2].tolist()
    cold = client.post("/recommend?k=5", json={"liked_item_ids": liked, "features": {"age": 22}})
    assert cold.status_code == 200 and cold.json()["cold_start"] is True
    similar = client.get(f"/similar/{liked[0]}?k=3").json()
    assert similar["item_id"] == liked[0] and len(similar["items"]) == 3
    health = client.get("/healthz").json()
    assert health["models"]["two_tower"]["model_version"] == two_tower.version
    assert "/recommend/{user_id}" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


BAD_REQUESTS = [  # (method, path, body or None, status, error code)
    ("GET", "/recommend/999999", None, 404, "unknown_user"),
    ("GET", "/recommend/-3", None, 404, "unknown_user"),
    ("GET", "/recommend/abc", None, 422, "invalid_request"),
    ("GET", "/recommend/1.5", None, 422, "invalid_request"),
    ("GET", "/recommend/{user}?k=0", None, 422, "invalid_request"),
    ("GET", "/recommend/{user}?k=101", None, 422, "invalid_request"),
    ("GET", "/recommend/{user}?k=ten", None, 422, "invalid_request"),
    ("GET", "/recommend/{user}?model=svd", None, 422, "invalid_request"),
    ("GET", "/similar/999999", None, 404, "unknown_item"),
    ("GET", "/similar/{item}?k=-1", None, 422, "invalid_request"),
    ("POST", "/recommend", b"{not json", 422, "invalid_request"),
    ("POST", "/recommend", b"[1, 2]", 422, "invalid_request"),
    ("POST", "/recommend", b"", 422, "invalid_request"),
    ("POST", "/recommend", b'{"liked_item_ids": ["7"]}', 422, "invalid_request"),
    ("POST", "/recommend", b'{"liked_item_ids": [true]}', 422, "invalid_request"),
    ("POST", "/recommend", b'{"features": {"age": "old"}}', 422, "bad_feature"),
    ("POST", "/recommend", b'{"features": {"gender": "X"}}', 422, "bad_feature"),
    ("POST", "/recommend", b'{"features": {"shoe_size": 44}}', 422, "bad_feature"),
    ("POST", "/recommend", b'{"user": 1}', 422, "invalid_request"),
    ("POST", "/recommend", b"{}", 422, "empty_user"),
    ("POST", "/recommend", b'{"liked_item_ids": [999999]}', 422, "unknown_item"),
    ("POST", "/recommend", b'{"features": {"occupation": "wizard"}}', 422, "bad_feature"),
    ("POST", "/recommend?model=user_knn", b'{"liked_item_ids": [{item}]}', 400, None),
    ("POST", "/recommend", b'{"liked_item_ids": [' + b"1," * 40_000 + b"1]}", 413, None),
    ("DELETE", "/recommend/{user}", None, 405, "method_not_allowed"),
    ("GET", "/nowhere", None, 404, "not_found"),
]


def send_bad_request(client, two_tower, method, path, body):
    user, item = known_user(two_tower), int(two_tower.catalog.item_ids[0])
    path = path.replace("{user}", str(user)).replace("{item}", str(item))
    content = None if body is None else body.replace(b"{item}", str(item).encode())
    headers = {"content-type": "application/json"} if body is not None else {}
    return client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
def test_http_bad_input_is_a_clear_4xx(client, two_tower, method, path, body, status, code):
    response = send_bad_request(client, two_tower, method, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["message"] and (code is None or error["error"] == code)


def test_history_is_the_users_latest_training_items(client, two_tower):
    user = known_user(two_tower)
    body = client.get(f"/history/{user}", params={"k": 4}).json()
    train = two_tower.recommender.train_
    mine = train.user_idx == two_tower.catalog.user_index(user)
    assert body["user_id"] == user and body["n_interactions"] == int(mine.sum())
    times = [i["timestamp"] for i in body["items"]]
    assert len(times) == min(4, int(mine.sum())) and times == sorted(times, reverse=True)
    assert times[0] == int(train.timestamp[mine].max())
    seen = set(two_tower.catalog.item_ids[train.item_idx[mine]].tolist())
    assert {i["item_id"] for i in body["items"]} <= seen and body["items"][0]["title"]
    assert client.get("/history/999999").status_code == 404


def test_users_lists_known_ids_and_the_page_is_served(client, two_tower):
    body = client.get("/users", params={"k": 5}).json()
    assert body["user_ids"] == sorted(two_tower.catalog.user_ids.tolist())[:5]
    assert body["n_users"] == two_tower.catalog.n_users
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for route in ("/history/", "/recommend/", "/similar/", "/users?k=", "/openapi.json"):
        assert route in page.text  # the page calls these


def test_openapi_lists_the_served_models_occupations(client, two_tower):
    spec = client.get("/openapi.json").json()
    occupation = spec["components"]["schemas"]["UserFeatures"]["properties"]["occupation"]
    fitted = two_tower.recommender.features.users.feature("occupation")
    assert occupation["anyOf"][0]["enum"] == fitted.vocabulary
    assert spec["components"]["schemas"]["UserFeatures"]["additionalProperties"] is False
    assert client.get("/docs").status_code == 200


def test_405_says_which_methods_are_allowed(client, two_tower):
    response = client.delete(f"/recommend/{known_user(two_tower)}")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]  # RFC 9110 15.5.6: a 405 carries Allow


@pytest.mark.parametrize(
    ("body", "described"),
    [
        ({"liked_item_ids": [1]}, True),
        ({"features": {"age": 30}}, True),
        ({"features": {"gender": "F"}, "liked_item_ids": []}, True),
        ({}, False),
        ({"features": None, "liked_item_ids": []}, False),  # schemathesis found this one
        ({"features": {}}, False),
        ({"features": {"age": None, "occupation": None}}, False),
    ],
)
def test_cold_start_schema_says_what_the_handler_requires(client, two_tower, body, described):
    """A body the OpenAPI schema accepts is one the handler answers, and the other way round."""
    import jsonschema

    spec = client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/ColdStartRequest", "components": spec["components"]}
    assert jsonschema.Draft202012Validator(schema).is_valid(body) is described
    if body.get("liked_item_ids"):  # a raw item id of this catalog
        body = {**body, "liked_item_ids": [int(two_tower.catalog.item_ids[0])]}
    response = client.post("/recommend?k=3", json=body)
    assert (response.status_code == 200) is described, response.text


# --- Configuration and command line --------------------------------------------------------------


def test_config_yaml_is_valid_for_serve_and_the_app():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    [app] = config["applications"]
    ServingArgs.model_validate(app["args"])
    names = {d["name"] for d in app["deployments"]}
    assert names == {"Ingress", TwoTowerDeployment.name, UserKNNDeployment.name, "EventStore"}
    for deployment in app["deployments"]:
        if "user_config" in deployment:
            ModelSettings.model_validate(deployment["user_config"])


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "serving", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and "--storage" in out.stdout and "--no-ray" in out.stdout


def test_an_index_over_a_grown_catalog_serves_new_items_unless_told_not_to(two_tower):
    """A TwoTower service over the model's items plus one added after training (an index built
    with ``--items``): the new item is answered like any other, and ``new_items=False`` leaves
    it out while every answer keeps its k items."""
    from towers.index import make_index

    rec, catalog = two_tower.recommender, two_tower.catalog
    emb = rec.item_embeddings()
    user = 0
    query = rec.user_embeddings(np.array([user]))[0]
    new_vector = query / np.linalg.norm(query)  # the best item there is for this user
    grown_emb = np.vstack([emb, new_vector[None, :]]).astype(np.float32)
    index = make_index("exact", len(grown_emb), model_version=rec.version)
    index.build(grown_emb, np.arange(len(grown_emb)))
    display = {
        "title": [i["title"] for i in catalog.items] + ["Brand new"],
        "genres": [i["genres"] for i in catalog.items] + [["Drama"]],
    }
    grown = Catalog(catalog.user_ids, np.append(catalog.item_ids, 999_999), display)
    user_id = int(catalog.user_ids[user])
    for served in (True, False):
        service = TwoTowerService(rec, index, grown, item_embeddings=grown_emb, new_items=served)
        top = service.recommend(user_id, 5)["items"]
        assert len(top) == 5 and (top[0]["item_id"] == 999_999) is served
        assert (999_999 in [i["item_id"] for i in top]) is served
        assert service.health()["new_items"] == 1
        similar = service.similar_items(999_999, 3)
        assert similar["title"] == "Brand new" and len(similar["items"]) == 3
        cold = service.recommend_cold_start({"liked_item_ids": [999_999]}, 4)["items"]
        assert 999_999 not in [i["item_id"] for i in cold] and len(cold) == 4
    with pytest.raises(ValueError, match="artifacts of different runs"):
        TwoTowerService(rec, index, grown)  # a grown index without its embeddings
