"""Your own data end to end: three shapes of data set prepared, trained, evaluated, indexed and
answered over HTTP.

- ``shop``: implicit, string ids, a category, a brand, a numeric price and text tags (Parquet):
  the whole pipeline on the session's Ray (Ray Train, two workers) on the leave-one-out split,
  so its model is the sequence user tower, served by the real Serve app of
  ``serving/config.yaml`` under ``/shop``;
- ``movielens_like``: explicit ratings, user demographics, genres as ``|``-joined CSV text;
- ``interactions_only``: the shop's interactions alone, no feature tables, the schema inferred.

The last two are prepared and evaluated by the same jobs, trained in this process
(``publish_small_run``: Ray Train's path is the shop's here and test_train_ray.py's) and answered
by the same HTTP app over an in-process backend (``serving.http.LocalBackend``): what differs by
shape is the data's schema, ids and features, and every shape's answers are checked the same way.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from ray_jobs import evaluate, pipeline, prepare
from serving.artifacts import load_services
from serving.http import LocalBackend, create_app
from tests.integration.test_serving_ray import CONFIG, deploy, wait_for
from towers.artifacts import publish_small_run
from towers.data.shop import ShopSpec, write_shop
from towers.data.synthetic import SyntheticSpec, generate
from towers.storage.root import Storage

pytestmark = [pytest.mark.ray, pytest.mark.serve, pytest.mark.slow]

ML_SCHEMA = """
interactions: {user_id: user_id, item_id: item_id, rating: rating, rating_scale: [1, 5],
               timestamp: timestamp}
items:
  id: item_id
  features: {genres: {kind: multi_categorical, delimiter: "|"}, year: numeric}
  display: [title, genres]
users: {id: user_id, features: {age: numeric, gender: categorical, occupation: categorical}}
"""


def movielens_like(folder: Path, spec: SyntheticSpec | None = None) -> dict[str, str]:
    """Ratings, movies (``|``-joined genres) and users as CSV, and their schema; the file names."""
    raw = generate(spec or SyntheticSpec(n_users=150, n_items=120, n_interactions=4_000, seed=5))
    raw.interactions.to_csv(folder / "ratings.csv", index=False)
    raw.items.assign(genres=raw.items["genres"].map("|".join)).to_csv(
        folder / "movies.csv", index=False
    )
    raw.users.to_csv(folder / "users.csv", index=False)
    (folder / "schema.yaml").write_text(ML_SCHEMA)
    names = ("ratings.csv", "movies.csv", "users.csv", "schema.yaml")
    return dict(zip(("interactions", "items", "users", "schema"), names, strict=True))


def shop(folder: Path) -> dict[str, str]:
    write_shop(folder, ShopSpec(n_users=150, n_items=120, n_interactions=4_000, seed=5))
    names = ("interactions.parquet", "items.parquet", "users.parquet", "schema.yaml")
    return dict(zip(("interactions", "items", "users", "schema"), names, strict=True))


def interactions_only(folder: Path) -> dict[str, str]:
    write_shop(folder, ShopSpec(n_users=150, n_items=120, n_interactions=4_000, seed=6))
    return {"interactions": "interactions.parquet"}


SHAPES = {f.__name__: f for f in (movielens_like, shop, interactions_only)}


SERVED = "shop"  # the shape served by Ray Serve; the others by the app in this process


def prepared(shape: str, folder: Path) -> tuple[pipeline.PipelineConfig, Storage]:
    """Writes the shape's files to ``folder``; the pipeline's config for them and its storage."""
    files = {k: str(folder / v) for k, v in SHAPES[shape](folder).items()}
    storage = Storage(folder / "run")
    # The served shape: the sequence tower (leave-one-out), trained by two DDP workers.
    split, workers = ("leave-one-out", 2) if shape == SERVED else ("random", 1)
    cfg = pipeline.PipelineConfig(
        storage=storage.uri, **files, num_workers=workers, epochs=2, paper=False,
        data_loader="local", split=split,
    )  # fmt: skip
    return cfg, storage


@pytest.fixture(scope="module")
def served_run(serve_port, tmp_path_factory) -> Storage:
    """The shop's pipeline run on the session's Ray, served as its own Serve app under
    ``/shop`` (in place of the apps deployed before). Training reads its shards locally: Ray
    Data's streamed shards add ~20 s to each run of this size, and are tested in
    test_multinode.py (two workers, MovieLens-shaped files, train then train ∪ valid for the
    refit)."""
    cfg, storage = prepared(SERVED, tmp_path_factory.mktemp(SERVED))
    pipeline.run(cfg)
    config = yaml.safe_load(CONFIG.read_text())
    [app] = config["applications"]
    app.update(name=SERVED, route_prefix=f"/{SERVED}")
    app["args"]["storage"] = storage.uri
    deploy({**config, "applications": [app]})
    return storage


def local_run(shape: str, folder: Path) -> tuple[Storage, TestClient]:
    """The shape prepared and evaluated by the pipeline's jobs, a model, index and UserKNN
    fitted in this process, and the HTTP app over them in this process."""
    cfg, storage = prepared(shape, folder)
    prepare.run(cfg.prepare_config())
    publish_small_run(storage, epochs=5, embedding_dim=64)
    evaluate.run(evaluate.EvaluateConfig(storage=storage.uri), print_report=False)
    app = create_app(LocalBackend(load_services(storage.uri)))
    return storage, TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module", params=list(SHAPES))
def served(request, tmp_path_factory):
    """``(shape, storage, http client)``: the shape's run and a client of its HTTP app."""
    shape = request.param
    if shape != SERVED:
        storage, client = local_run(shape, tmp_path_factory.mktemp(shape))
        with client:
            yield shape, storage, client
        return
    storage = request.getfixturevalue("served_run")
    port = request.getfixturevalue("serve_port")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/{shape}", timeout=30) as client:

        def this_run() -> bool:
            models = client.get("/healthz").json()["models"]
            return all(m.get("storage") == storage.uri for m in models.values())

        wait_for(this_run, 120)
        yield shape, storage, client


def ids(storage: Storage) -> tuple[list, list]:
    users = storage.read_parquet("data/users.parquet", columns=["user_id"])["user_id"].tolist()
    items = storage.read_parquet("data/items.parquet", columns=["item_id"])["item_id"].tolist()
    return users, items


def test_report_says_which_metrics_apply(served):
    shape, storage, _ = served
    report = storage.read_json("reports/metrics.json")
    model = storage.read_json("model/config.json")
    assert (model["model_config"]["sequence_model"] == "attention") is (shape == SERVED)
    assert set(report["models"]) == {"two_tower", "user_knn", "item_item", "popularity"}
    explicit = shape == "movielens_like"
    assert report["feedback"] == ("explicit" if explicit else "implicit")
    assert ("rmse" in report["models"]["two_tower"]) is explicit
    assert report["models"]["two_tower"]["ndcg@10"] > report["models"]["popularity"]["ndcg@10"] / 2
    markdown = storage.read_bytes("reports/metrics.md").decode()
    assert ("rating metrics do not apply" in markdown) is not explicit
    assert "paper" not in markdown.lower()  # published MovieLens numbers only for ML-100K


def test_known_user_and_similar_items_with_the_data_sets_ids(served):
    shape, storage, http = served
    users, items = ids(storage)
    assert all(isinstance(u, str if shape != "movielens_like" else int) for u in users[:5])
    answer = http.get(f"/recommend/{users[0]}", params={"k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["user_id"] == users[0] and len(body["items"]) == 5
    first = body["items"][0]
    assert first["item_id"] in set(items)
    display = {"movielens_like": {"title", "genres"}, "shop": {"title"}}.get(shape, set())
    assert set(first) == {"item_id", "score", *display}
    knn = http.get(f"/recommend/{users[0]}", params={"k": 5, "model": "user_knn"})
    assert knn.status_code == 200, knn.text
    similar = http.get(f"/similar/{first['item_id']}", params={"k": 3}).json()
    assert len(similar["items"]) == 3 and first["item_id"] not in {
        i["item_id"] for i in similar["items"]
    }
    listing = http.get("/users", params={"k": 3}).json()
    expected = "integer" if shape == "movielens_like" else "string"
    assert listing["user_id_type"] == listing["item_id_type"] == expected


COLD_START = {  # (the schema's user features, a good description, a bad one, the bad field)
    "movielens_like": (
        {"age", "gender", "occupation"},
        {"age": 31, "gender": "F"},
        {"age": "old"},
        "age",
    ),
    "shop": ({"region"}, {"region": "north"}, {"region": "mars"}, "region"),
    "interactions_only": (set(), {}, {"region": "north"}, "region"),
}


def test_cold_start_takes_the_schemas_features_by_name(served):
    shape, storage, http = served
    _, items = ids(storage)
    features, good, bad, field = COLD_START[shape]
    spec = http.get("/openapi.json").json()
    properties = spec["components"]["schemas"]["UserFeatures"]["properties"]
    assert set(properties) == features
    body = {"features": good, "liked_item_ids": items[:2]}
    answer = http.post("/recommend", params={"k": 4}, json=body)
    assert answer.status_code == 200, answer.text
    returned = [i["item_id"] for i in answer.json()["items"]]
    assert len(returned) == 4 and not set(returned) & set(items[:2])
    rejected = http.post("/recommend", json={"features": bad})
    assert rejected.status_code == 422 and rejected.json()["error"] == "bad_feature"
    assert field in rejected.json()["message"]
    wrong_id = 7 if shape != "movielens_like" else "7"  # the other type than the data set's
    rejected = http.post("/recommend", json={"liked_item_ids": [wrong_id]})
    assert rejected.status_code == 422 and "item_id must be" in rejected.json()["message"]
