"""POST /events on the real Serve app, over HTTP, with two replicas of each model.

After a 2xx every replica answers with the event (the EventStore waits for their feeds); a new
user becomes known; a replay is ignored; bad events store nothing; the EventStore replica,
SIGKILLed while clients post, comes back with every event it acknowledged; and a model replica
that Serve stops (a scale-down) is not waited for.

The app is the Serve modules' shared one (``tests/integration/conftest.py``: two replicas of each
deployment but the EventStore), its event log under the shared storage root. It may come after
a module that killed or stopped model replicas of that app (``test_reliability_serving.py``
before this one, an order that once turned the first ``applied`` here false): a replica that
Serve stops leaves the feed, and the store stops waiting for one killed outright once its last
poll is ``events_ack_timeout_s`` old. The events posted here stay in the log for the modules
after this one, so none is posted for the first user, the one
``tests/integration/test_serving_ray.py`` asks for.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.integration.test_serving_ray import APP, deploy, wait_for
from towers.storage.events import EventLog
from towers.storage.root import Storage

pytestmark = [pytest.mark.serve, pytest.mark.ray]
MODELS = ("two_tower", "user_knn")


@pytest.fixture(scope="module")
def events_app(serve_app, run_storage):
    """``(base_url, storage)``: the shared app and its storage root."""
    return serve_app[0], run_storage


@pytest.fixture(scope="module")
def http(events_app):
    with httpx.Client(base_url=events_app[0], timeout=30) as client:
        yield client


def ids(storage: Storage, side: str) -> list[int]:
    return storage.read_parquet(f"data/{side}.parquet", [f"{side[:-1]}_id"]).iloc[:, 0].tolist()


def event(event_id: str, user: Any, item: Any, rating: float = 5.0) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": rating}


def answer(http: httpx.Client, user: Any, model: str) -> list:
    response = http.get(f"/recommend/{user}", params={"k": 10, "model": model})
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def last_seq(http: httpx.Client) -> int:
    return http.get("/healthz").json()["events"]["last_seq"]


def test_an_event_changes_the_next_answer_on_every_replica(http, events_app):
    _, storage = events_app
    user = ids(storage, "users")[3]
    before = {m: answer(http, user, m) for m in MODELS}
    item = before["two_tower"][0]
    posted = http.post("/events", json={"events": [event("a1", user, item)]})
    assert posted.status_code == 200 and posted.json()["applied"] is True, posted.text
    for model in MODELS:  # ten requests: both replicas of each model answer
        for _ in range(10):
            after = answer(http, user, model)
            assert item not in after and after != before[model], model
    assert http.get(f"/history/{user}").json()["items"][0]["event_id"] == "a1"
    replicas = http.get("/healthz").json()["events"]["followers"]
    assert replicas == 4  # two TwoTower and two UserKNN replicas follow the feed


def test_new_users_replays_and_bad_events(http, events_app):
    _, storage = events_app
    users, items = ids(storage, "users"), ids(storage, "items")
    new_user = max(users) + 1
    assert http.get(f"/recommend/{new_user}").status_code == 404
    batch = [event("n1", new_user, items[0], 4.0), event("n2", new_user, items[1], 2.0)]
    assert http.post("/events", json={"events": batch}).json()["accepted"] == 2
    for model in MODELS:
        assert set(answer(http, new_user, model)).isdisjoint(items[:2]), model
    replay = http.post("/events", json={"events": batch}).json()
    assert (replay["accepted"], replay["duplicates"]) == (0, 2)
    stored = last_seq(http)
    good = event("ok", users[0], items[0])
    for bad, code in [
        ({"item_id": 10**9}, "unknown_item"),
        ({"user_id": str(users[0])}, "invalid_event"),
        ({"timestamp": "not a time"}, "invalid_event"),
        ({"rating": 50.0}, "invalid_event"),
        ({"weight": 1.0, "extra": 1}, "invalid_request"),
    ]:
        response = http.post("/events", json={"events": [good, {**good, "event_id": "x", **bad}]})
        assert response.status_code == 422 and response.json()["error"] == code, response.text
    assert http.post("/events", content=b'{"events": 3}').status_code == 422
    assert last_seq(http) == stored


def event_store_pid(base_url: str) -> int:
    return httpx.get(f"{base_url}/healthz", timeout=10).json()["events"]["pid"]


def test_the_event_store_killed_mid_stream_loses_no_acknowledged_event(http, events_app):
    base_url, storage = events_app
    users, item = ids(storage, "users")[1:], ids(storage, "items")[5]  # not the first user
    acknowledged: list[str] = []
    stop, lock = threading.Event(), threading.Lock()

    def post(client_id: int) -> None:
        with httpx.Client(base_url=base_url, timeout=15) as client:
            n = 0
            while not stop.is_set():
                event_id = f"s{client_id}-{n}"
                body = {"events": [event(event_id, users[n % len(users)], item)]}
                n += 1
                try:
                    if client.post("/events", json=body).status_code == 200:
                        with lock:
                            acknowledged.append(event_id)
                except httpx.HTTPError:
                    pass

    threads = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    # Mid-stream: some events acknowledged (a fixed 1.5 s saw only 5 on a loaded machine).
    wait_for(lambda: len(acknowledged) > 5, 60)
    pid, killed_with = event_store_pid(base_url), len(acknowledged)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: event_store_pid(base_url) != pid, 60)
    wait_for(lambda: len(acknowledged) > killed_with + 10, 60)  # posting again after restart
    stop.set()
    for thread in threads:
        thread.join(30)
    assert killed_with > 5
    stored = {e.event_id for e in EventLog(storage.path("events/events.sqlite")).since()}
    assert set(acknowledged) <= stored


def with_replicas(config: dict[str, Any], deployment: str, n: int) -> dict[str, Any]:
    """A copy of ``config`` with ``n`` replicas of ``deployment``."""
    config = copy.deepcopy(config)
    for entry in config["applications"][0]["deployments"]:
        if entry["name"] == deployment:
            entry["num_replicas"] = n
    return config


def two_tower_replicas() -> dict[str, int]:
    from ray import serve

    status = serve.status().applications[APP].deployments["TwoTower"]
    return {str(state): n for state, n in status.replica_states.items()}


def test_a_replica_serve_stops_is_not_waited_for(http, events_app, serve_app):
    """Scaled down from two TwoTower replicas to one, Serve stops one gracefully: it tells the
    EventStore on its way out, so the next post neither waits ``events_ack_timeout_s`` for it
    nor answers ``applied: false``. (The app is given its two replicas back afterwards.)"""
    _, storage = events_app
    _, config = serve_app
    user, item = ids(storage, "users")[2], ids(storage, "items")[7]
    wait_for(lambda: http.get("/healthz").json()["events"]["followers"] == 4, 60)
    try:
        deploy(with_replicas(config, "TwoTower", 1))
        wait_for(lambda: two_tower_replicas() == {"RUNNING": 1}, 60)  # the other one stopped
        start = time.monotonic()
        posted = http.post("/events", json={"events": [event("d1", user, item)]})
        took_s = time.monotonic() - start
        assert posted.status_code == 200 and posted.json()["applied"] is True, posted.text
        assert took_s < 1.0, took_s  # events_ack_timeout_s: no wait for the stopped replica
    finally:
        deploy(config)
    wait_for(lambda: http.get("/healthz").json()["events"]["followers"] == 4, 120)
    assert http.get(f"/history/{user}").json()["items"][0]["event_id"] == "d1"
