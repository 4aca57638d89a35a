"""POST /events without Ray: fresh answers of both models, new users, replays, bad batches that
store nothing, the EventStore's feed, and a server SIGKILLed mid-stream that loses no acknowledged
event (``python -m serving --no-ray`` in a subprocess: the writing process itself is killed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from serving.artifacts import load_two_tower_service, load_user_knn_service
from serving.deployments import TwoTowerDeployment
from serving.event_feed import EventFeed
from serving.http import LocalBackend, create_app
from serving.schemas import ModelSettings
from towers.artifacts import publish_small_run
from towers.data.prepared import write_prepared
from towers.storage.events import EventLog
from towers.storage.root import Storage

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def event_run(tiny_storage, tmp_path_factory) -> Storage:
    storage = Storage(tmp_path_factory.mktemp("events-run"))
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    publish_small_run(storage, epochs=1, embedding_dim=8, seed=0)
    return storage


@pytest.fixture(scope="module")
def services(event_run):
    return {
        "two_tower": load_two_tower_service(event_run.uri, ModelSettings()),
        "user_knn": load_user_knn_service(event_run.uri, ModelSettings(model_artifact="knn")),
    }


@pytest.fixture
def served(services, tmp_path):
    """``(client, log)``: the app over the services with a fresh event log."""
    log = EventLog(tmp_path / "events.sqlite")
    client = TestClient(create_app(LocalBackend(services, log)), raise_server_exceptions=False)
    yield client, log
    for service in services.values():
        service.events = None
    log.close()


def top_items(client: TestClient, user: object, model: str, k: int = 10) -> list:
    response = client.get(f"/recommend/{user}", params={"k": k, "model": model})
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def event(event_id: str, user: object, item: object, rating: float = 5.0, **more) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": rating, **more}


def test_an_event_changes_the_next_answer_of_both_models(served, services):
    client, log = served
    user = int(services["two_tower"].catalog.user_ids[0])
    before = {m: top_items(client, user, m) for m in ("two_tower", "user_knn")}
    item = before["two_tower"][0]
    posted = client.post("/events", json={"events": [event("e1", user, item)]})
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"accepted": 1, "duplicates": 0, "applied": True}
    for model in ("two_tower", "user_knn"):
        after = top_items(client, user, model)
        assert after != before[model] and item not in after, model
    history = client.get(f"/history/{user}", params={"k": 3}).json()
    assert history["n_events"] == 1 and history["items"][0]["event_id"] == "e1"
    assert [i["source"] for i in history["items"]] == ["event", "training", "training"]
    assert len(log) == 1


@pytest.fixture(scope="module")
def sequence_services(tiny_raw, tmp_path_factory):
    """The two-tower service of a model trained on the leave-one-out split: the sequence tower."""
    storage = Storage(tmp_path_factory.mktemp("sequence-run"))
    write_prepared(storage, tiny_raw, "synthetic", ["leave-one-out"], seed=42)
    publish_small_run(storage, epochs=1, embedding_dim=8, seed=0)
    return {"two_tower": load_two_tower_service(storage.uri, ModelSettings())}


def test_an_event_is_the_newest_item_the_sequence_tower_reads(sequence_services, tmp_path):
    service = sequence_services["two_tower"]
    assert service.recommender.config.sequence_model == "attention"
    log = EventLog(tmp_path / "events.sqlite")
    client = TestClient(create_app(LocalBackend(sequence_services, log)))
    try:
        user = int(service.catalog.user_ids[0])
        before = top_items(client, user, "two_tower")
        for n, item in enumerate(before[:2]):  # two events, one after the other
            posted = client.post("/events", json={"events": [event(f"s{n}", user, item)]})
            assert posted.status_code == 200 and posted.json()["applied"], posted.text
            after = top_items(client, user, "two_tower")
            assert after != before and item not in after
            before = after
        # The second event's item is the newest slot: the same two in the other order differ.
        rec = service.recommender
        history = list(rec.history_in_time_order(0))
        one = rec.user_embedding_cold_start(None, [*history, 3, 5])
        two = rec.user_embedding_cold_start(None, [*history, 5, 3])
        assert not np.allclose(one, two, atol=1e-5)
    finally:
        service.events = None
        log.close()


def test_a_new_user_is_known_from_the_first_event(served, services):
    client, _ = served
    user = max(int(u) for u in services["two_tower"].catalog.user_ids) + 1
    assert client.get(f"/recommend/{user}").status_code == 404
    items = [int(i) for i in services["two_tower"].catalog.item_ids[:3]]
    events = [event(f"n{n}", user, item, 4.0) for n, item in enumerate(items)]
    assert client.post("/events", json={"events": events}).json()["accepted"] == 3
    for model in ("two_tower", "user_knn"):
        answer = top_items(client, user, model)
        assert answer and not set(answer) & set(items), model
    history = client.get(f"/history/{user}").json()
    assert history["n_interactions"] == 0 and [i["event_id"] for i in history["items"]] == [
        "n2",
        "n1",
        "n0",
    ]


def test_a_replayed_event_id_is_ignored(served, services):
    client, log = served
    user, item = (int(services["two_tower"].catalog.user_ids[1]), 1)
    item = int(services["two_tower"].catalog.item_ids[0])
    assert client.post("/events", json={"events": [event("r", user, item)]}).json()["accepted"]
    again = client.post("/events", json={"events": [event("r", user, item, 1.0)]}).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert len(log) == 1 and log.since()[0].rating == 5.0


BAD_BATCHES = [
    ({"item_id": 10**9}, 422, "unknown_item"),
    ({"user_id": "7"}, 422, "invalid_event"),  # the data set's user ids are integers
    ({"timestamp": "yesterday"}, 422, "invalid_event"),
    ({"rating": 9.5}, 422, "invalid_event"),  # outside the scale
    ({"weight": 1.0}, 422, "invalid_event"),  # explicit data: a rating, not a weight
    ({"colour": "red"}, 422, "invalid_request"),  # an unknown field
    ({"event_id": ""}, 422, "invalid_request"),
]


@pytest.mark.parametrize(("change", "status", "code"), BAD_BATCHES)
def test_a_bad_event_refuses_its_whole_batch(served, services, change, status, code):
    client, log = served
    user, item = int(services["two_tower"].catalog.user_ids[2]), 1
    item = int(services["two_tower"].catalog.item_ids[0])
    batch = [event("good", user, item), {**event("bad", user, item), **change}]
    response = client.post("/events", json={"events": batch})
    assert response.status_code == status and response.json()["error"] == code, response.text
    assert "1" in response.json()["message"]  # the event's position (or its loc) is named
    assert len(log) == 0


@pytest.mark.parametrize(
    "body", [b"[]", b'{"events": []}', b'{"events": {"a": 1}}', b"{not json", b'{"events": [1]}']
)
def test_a_malformed_batch_is_a_422_that_stores_nothing(served, body):
    client, log = served
    response = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"], response.text
    assert len(log) == 0


async def follow(feed: EventFeed, follower: str, wait_s: float, applied: list[int]) -> None:
    """A model replica's loop over the feed: long polls of ``wait_s``, each acknowledging what
    the last one brought; every applied ``seq`` goes to ``applied``."""
    seq = 0
    while True:
        events = await feed.changes(follower, seq, wait_s)
        seq = events[-1].seq if events else seq
        applied.extend(e.seq for e in events)


def test_the_feed_answers_once_followers_applied_and_drops_a_silent_one(tmp_path):
    async def scenario() -> None:
        feed = EventFeed(EventLog(tmp_path / "feed.sqlite"), ack_timeout_s=0.3)
        assert await feed.changes("a", 0, 0.0) == []  # "a" follows from now on
        applied: list[int] = []
        follower = asyncio.create_task(follow(feed, "a", 1.0, applied))
        status, body = await feed.append([("x", 1, 2, 4.0, 0), ("y", 1, 3, 4.0, 0)])
        assert (status, body) == (200, {"accepted": 2, "duplicates": 0, "applied": True})
        assert applied == [1, 2]  # applied before the answer
        follower.cancel()
        started = time.monotonic()
        assert (await feed.append([("z", 1, 4, 4.0, 0)]))[1]["applied"] is False
        assert 0.25 < time.monotonic() - started < 2 and feed.followers == {}
        assert (await feed.append([("w", 1, 5, 4.0, 0)]))[1]["applied"] is True  # not waited
        together = await asyncio.gather(*(feed.append([(f"g{i}", 1, i, 4.0, 0)]) for i in range(8)))
        assert all(a[0] == 200 for a in together) and feed.commits < feed.committed_batches

    asyncio.run(scenario())


def test_a_forgotten_follower_is_not_waited_for(tmp_path):
    """A follower that leaves (``forget``: a replica that Serve stops) is not waited for, not even
    by an append already waiting, and its long poll is answered at once; forgetting an unknown
    follower does nothing; a forgotten one that polls again (it did not stop after all) is
    followed again."""

    async def scenario() -> None:
        feed = EventFeed(EventLog(tmp_path / "feed.sqlite"), ack_timeout_s=5.0)
        for follower in ("stopped", "stopping"):
            await feed.changes(follower, 0, 0.0)
        await feed.forget("stopped")
        await feed.forget("never-seen")
        assert feed.followers == {"stopping": 0}
        waiting = asyncio.create_task(feed.append([("x", 1, 2, 4.0, 0)]))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # stored, waiting for "stopping" to apply it
        started = time.monotonic()
        await feed.forget("stopping")
        assert (await waiting)[1]["applied"] is True and time.monotonic() - started < 1
        assert feed.followers == {}
        polling = asyncio.create_task(feed.changes("stopped", 1, 5.0))  # back after all
        await asyncio.sleep(0.1)
        assert feed.followers == {"stopped": 1} and not polling.done()
        started = time.monotonic()
        await feed.forget("stopped")
        assert await polling == [] and time.monotonic() - started < 1  # not left waiting 5 s

    asyncio.run(scenario())


def test_a_follower_without_a_poll_for_the_ack_timeout_is_not_waited_for(tmp_path):
    """A replica killed without leaving the feed: its last poll ended and no other came. An
    append ``ack_timeout_s`` later drops it without waiting (``applied``: every follower that
    polls has the events); one whose long poll is in flight, begun however long ago, is waited
    for."""

    async def scenario() -> None:
        feed = EventFeed(EventLog(tmp_path / "feed.sqlite"), ack_timeout_s=0.5)
        await feed.changes("killed", 0, 0.0)
        applied: list[int] = []
        # Long polls of 2 s: longer than the ack timeout.
        live = asyncio.create_task(follow(feed, "live", 2.0, applied))
        await asyncio.sleep(0.7)
        assert set(feed.followers) == {"killed", "live"}
        assert (await feed.append([("x", 1, 2, 4.0, 0)]))[1]["applied"] is True
        assert applied == [1] and set(feed.followers) == {"live"}
        live.cancel()

    asyncio.run(scenario())


class FeedHandle:
    """An ``EventFeed`` called as the model replicas call the ``EventStore``'s handle."""

    def __init__(self, feed: EventFeed) -> None:
        self.changes, self.forget = self.Method(feed.changes), self.Method(feed.forget)

    class Method:
        def __init__(self, method: Any) -> None:
            self.remote = method  # its coroutine is awaited as a DeploymentResponse is


def test_a_model_replica_that_serve_stops_leaves_the_feed(tmp_path):
    """Serve's graceful stop calls the replica's ``__del__`` and awaits what it returns: the
    replica stops polling, then the store forgets it. A replica that does not follow the feed
    (or already left it) has nothing to do, and returns no coroutine for Python's finalizer
    to drop."""
    threads = torch.get_num_threads()  # the deployment's constructor sets one

    async def scenario() -> None:
        feed = EventFeed(EventLog(tmp_path / "feed.sqlite"), ack_timeout_s=5.0)
        replica = TwoTowerDeployment.func_or_class(str(tmp_path), FeedHandle(feed))
        assert replica.__del__() is None  # not following yet: no model loaded
        replica.following = asyncio.get_running_loop().create_task(replica._follow_events())
        await asyncio.sleep(0.1)
        assert feed.followers == {replica.follower: 0}
        following = replica.following
        await replica.__del__()
        assert following.cancelled() and feed.followers == {}
        started = time.monotonic()
        assert (await feed.append([("x", 1, 2, 4.0, 0)]))[1]["applied"] is True
        assert time.monotonic() - started < 1 and feed.followers == {}  # no poll came after
        assert replica.__del__() is None  # left once

    try:
        asyncio.run(scenario())
    finally:
        torch.set_num_threads(threads)


def test_the_single_process_server_commits_concurrent_posts_together(services, tmp_path):
    """``--no-ray``: posts that arrive while a commit runs share the next one (one fsync), and
    every one is applied to the answers before its 200."""
    backend = LocalBackend(services, EventLog(tmp_path / "events.sqlite"))
    user = int(services["two_tower"].catalog.user_ids[0])
    items = services["two_tower"].catalog.item_ids[:8].tolist()

    async def post_all() -> list:
        posts = [backend.post_events([event(f"c{i}", user, it)]) for i, it in enumerate(items)]
        return await asyncio.gather(*posts)

    try:
        answers = asyncio.run(post_all())
        assert answers == [(200, {"accepted": 1, "duplicates": 0, "applied": True})] * len(items)
        assert backend.feed.committed_batches == len(items) and backend.feed.commits < len(items)
        assert [e.item_id for e in backend.events.get(user)] == items
        assert len(backend.feed.log) == len(items)  # stored, not only in memory
    finally:
        for service in services.values():
            service.events = None


@pytest.mark.slow
def test_a_server_killed_mid_stream_loses_no_acknowledged_event(event_run, tmp_path):
    """``python -m serving --no-ray`` gets SIGKILL while clients post single events; after a
    restart on the same event log, every event it acknowledged is there."""
    storage = Storage(tmp_path / "run")
    for artifact in ("data", "model", "index", "knn"):
        shutil.copytree(event_run.path(artifact), storage.path(artifact))
    from tests.unit.serving.test_security import _free_port

    port = _free_port()
    command = [sys.executable, "-m", "serving", "--no-ray", "--storage", storage.uri]
    command += ["--port", str(port)]
    url = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.2)
        proc.kill()
        raise TimeoutError(proc.stderr.read().decode()[-2000:] if proc.stderr else "")

    users = storage.read_parquet("data/users.parquet", ["user_id"])["user_id"].tolist()
    item = int(storage.read_parquet("data/items.parquet", ["item_id"])["item_id"].iloc[0])
    proc = start()
    acknowledged, sent = [], 0
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            killed_at = time.monotonic() + 1.5
            while True:
                body = {"events": [event(f"k{sent}", int(users[sent % len(users)]), item)]}
                sent += 1
                if time.monotonic() > killed_at and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush: the process is gone
                try:
                    if client.post("/events", json=body).status_code == 200:
                        acknowledged.append(body["events"][0]["event_id"])
                except httpx.HTTPError:
                    break  # the server is gone
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL and len(acknowledged) > 20
        proc = start()
        stored = EventLog(storage.path("events/events.sqlite")).since()
        assert set(acknowledged) <= {e.event_id for e in stored}
        answer = httpx.get(f"{url}/history/{users[0]}", params={"k": 100}).json()
        assert answer["n_events"] >= 1  # read back on restart and served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
