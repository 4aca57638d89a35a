# ruff: noqa: F811  (fixtures imported from test_serving_ray are parameters of the tests here)
"""Serving faults and bad input on the real Serve app: a killed replica, broken versions, fuzzing.

The app is the Serve modules' shared one (``tests/integration/conftest.py``: ``serving/config.yaml``
on the session's Serve with artifacts fitted once per session), with the TwoTower and Ingress
deployments at two fixed replicas each. Under steady load from client threads:

* one TwoTower replica's actor is killed with ``ray.kill`` while it holds requests: Serve
  starts a replacement and at least 99.9% of the requests succeed (the requests lost with the
  replica are sent once more by the ingress, ``serving.handles.HandleBackend``);
* one Ingress replica is killed the same way: the requests it held fail with a 500 (no more
  than one per client), the other replica answers the rest, Serve starts a replacement;
* new versions that are broken (a file missing from the export; user embeddings, or an index
  manifest, of another dimension than the model) are refused with a clear error in ``/healthz``
  while the old version answers every request.

Then the hostile-request strategy of ``tests/unit/serving/test_reliability_fuzz.py`` runs over
real HTTP through Serve's proxy, plus a few malformed HTTP messages sent on a raw socket.
"""

from __future__ import annotations

import random
import shutil
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings

from tests.unit.serving.test_reliability_fuzz import (
    FUZZ,
    MAX_SECONDS,
    FuzzRequest,
    Tally,
    any_request,
    check,
)
from towers.storage.root import Storage

from .test_serving_ray import (  # noqa: F401  (the http fixture, found by name)
    ClientThreads,
    deploy,
    http,
    known_ids,
    wait_for,
    with_two_tower,
)

pytestmark = [pytest.mark.serve, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
APP, TWO_TOWER, INGRESS = "recommender", "TwoTower", "Ingress"
MIN_SUCCESS = 0.999
MIN_REQUESTS = 1000


def two_replicas(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with TwoTower and Ingress at a fixed two replicas each (no autoscaling).

    Requests wait up to 100 ms in a replica for a fuller ``@serve.batch`` (2 ms by default), so
    each replica holds several in flight: the kill below lands on requests being answered, not
    only on an idle replica that Serve's router can simply stop choosing.
    """
    config = with_two_tower(config, batch_wait_timeout_s=0.1)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] in (TWO_TOWER, INGRESS):
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
    return config


def running_replicas(deployment: str = TWO_TOWER) -> list[str]:
    """Actor names of a deployment's replicas that are alive (Serve names them, namespace serve)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return sorted(n for n in names if n.startswith(prefix))


def replica_states(deployment: str = TWO_TOWER) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    return {str(state): n for state, n in status.replica_states.items()}


def two_running(deployment: str) -> bool:
    return len(running_replicas(deployment)) == 2 and replica_states(deployment) == {"RUNNING": 2}


@pytest.fixture(scope="module")
def two_replica_app(serve_app, http):
    """The app with two replicas of TwoTower and of Ingress (left so: the next module applies
    its own config)."""
    base_url, config = serve_app
    deploy(two_replicas(config))
    wait_for(lambda: two_running(TWO_TOWER) and two_running(INGRESS), 120)
    return base_url, two_replicas(config)


class SteadyLoad(ClientThreads):
    """Client threads asking ``GET /recommend/{user}`` for random known users until stopped.

    Every request is recorded as ``(time, outcome)``: the status code, or the exception name of
    a request that got no answer (refused or dropped connection, client timeout).
    """

    def __init__(self, base_url: str, users: list[int], clients: int = 6) -> None:
        self.base_url, self.users = base_url, users
        self.records: list[tuple[float, str, str]] = []  # (time, outcome, model_version)
        super().__init__([(seed,) for seed in range(clients)])

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                user, version = rng.choice(self.users), ""
                try:
                    response = client.get(f"/recommend/{user}", params={"k": 10})
                    outcome = str(response.status_code)
                    if response.status_code == 200:
                        version = response.json()["model_version"]
                except Exception as err:
                    outcome = type(err).__name__
                with self.lock:
                    self.records.append((time.monotonic(), outcome, version))

    @property
    def outcomes(self) -> Counter[str]:
        with self.lock:
            return Counter(o for _, o, _ in self.records)

    def success_rate(self) -> float:
        outcomes = self.outcomes
        return outcomes["200"] / max(1, sum(outcomes.values()))


def all_users(storage: Storage) -> list[int]:
    return storage.read_parquet("data/users.parquet", columns=["user_id"])["user_id"].tolist()


def kill_one_under_load(
    base_url: str, users: list[int], deployment: str
) -> tuple[SteadyLoad, list[tuple[float, str]]]:
    """Kills one of ``deployment``'s two replicas under 16 clients, waits for its successor."""
    import ray

    before = running_replicas(deployment)
    assert len(before) == 2, before
    with SteadyLoad(base_url, users, clients=16) as load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        wait_for(lambda: before[0] not in running_replicas(deployment), 90)
        wait_for(lambda: two_running(deployment), 90)
        replaced_s = time.monotonic() - killed_at
        time.sleep(2.0)
        # The load goes on until there are enough requests for the rates below to mean
        # something, however fast Serve replaced the replica (5.7 s in one run: 532 requests).
        wait_for(lambda: sum(load.outcomes.values()) >= MIN_REQUESTS, 120)
    outcomes, total = load.outcomes, sum(load.outcomes.values())
    failures = [(round(t - killed_at, 2), o) for t, o, _ in load.records if o != "200"]
    print(f"\n{deployment} replica killed, replaced in {replaced_s:.1f}s; {total} requests "
          f"{dict(outcomes)}; failures (seconds after the kill, outcome): {failures}")  # fmt: skip
    assert before[1] in running_replicas(deployment)  # the survivor kept serving
    assert total >= MIN_REQUESTS, outcomes  # enough requests for 99.9% to mean something
    return load, failures


def test_killed_replica_is_replaced_and_requests_succeed(two_replica_app, run_storage):
    base_url, _ = two_replica_app
    load, failures = kill_one_under_load(base_url, all_users(run_storage), TWO_TOWER)
    retried = httpx.get(f"{base_url}/healthz", timeout=30).json()
    print(f"requests the ingress sent once more: {retried['ingress_retries_after_replica_loss']}")
    assert load.success_rate() >= MIN_SUCCESS, (load.outcomes, failures)


def test_killed_ingress_replica_fails_only_the_requests_it_held(two_replica_app, run_storage):
    """Serve's proxy does not re-send a request whose Ingress replica died (a replica is where
    the request runs, and the proxy cannot know it was idempotent): the requests in flight on
    it fail with a 500 (8 of 1,215 and 10 of 1,555 in two runs here, all within 50 ms of the
    kill). Every client had one request in flight, so more failures than clients would mean
    requests kept being routed to the dead replica. GET /recommend is idempotent: a client that
    retries a 5xx loses nothing."""
    base_url, _ = two_replica_app
    load, failures = kill_one_under_load(base_url, all_users(run_storage), INGRESS)
    assert {outcome for _, outcome in failures} <= {"500"}, failures
    assert len(failures) <= len(load.threads), failures


def broken_versions(storage: Storage) -> dict[str, str]:
    """Artifacts that must be refused → a phrase of the refusal: each built once."""
    if not storage.exists("model_nofile"):
        shutil.copytree(storage.path("model"), storage.path("model_nofile"))
        Path(storage.path("model_nofile", "weights.safetensors")).unlink()
    if not storage.exists("index_dim8"):
        # The index of model/ with its user embeddings replaced by 8-dimensional ones and
        # republished: a complete artifact whose arrays do not fit the model's 17 dimensions.
        shutil.copytree(storage.path("index"), storage.path("index_dim8"))
        user_emb = Path(storage.path("index_dim8", "user_embeddings.npy"))
        n_users = np.load(user_emb, allow_pickle=False).shape[0]
        np.save(user_emb, np.zeros((n_users, 8), np.float32), allow_pickle=False)
        manifest = storage.read_manifest("index")
        fields = {k: v for k, v in manifest.items() if k not in ("files", "artifact")}
        storage.publish("index_dim8", fields)
    if not storage.exists("index_dim32"):  # an index whose manifest records another dimension
        shutil.copytree(storage.path("index"), storage.path("index_dim32"))
        manifest = storage.read_manifest("index")
        storage.write_json("index_dim32/manifest.json", {**manifest, "dim": 32})
    dim = storage.read_manifest("model")["dim"]  # 16 + the item-bias coordinate
    return {
        "model_nofile": "lacks file weights.safetensors",
        "index_dim8": f"user_embeddings (120, 8) != (120, {dim})",
        "index_dim32": f"has dimension 32, the model {dim}",
    }


def test_broken_versions_are_refused_and_the_old_one_serves(two_replica_app, http, run_storage):
    base_url, config = two_replica_app
    health = http.get("/healthz").json()["models"]["two_tower"]
    served = health["model_version"]
    cases = broken_versions(run_storage)

    def refused(phrase: str) -> bool:
        model = http.get("/healthz").json()["models"]["two_tower"]
        return phrase in str((model.get("refused_version") or {}).get("error"))

    with SteadyLoad(base_url, all_users(run_storage), clients=4) as load:
        for artifact, phrase in cases.items():
            key = "model_artifact" if artifact.startswith("model") else "index_artifact"
            deploy(with_two_tower(config, **{key: artifact}))
            wait_for(lambda phrase=phrase: refused(phrase), 60)
            model = http.get("/healthz").json()["models"]["two_tower"]
            assert model["model_version"] == served, model
            time.sleep(0.5)
        deploy(config)
        wait_for(lambda: http.get("/healthz").json()["models"]["two_tower"]["refused_version"]
                 is None, 60)  # fmt: skip
    print(f"\nbroken versions under load: {dict(load.outcomes)}")
    assert set(load.outcomes) == {"200"}, load.outcomes
    assert {v for _, _, v in load.records} == {served}


@pytest.fixture(scope="module")
def fuzz_http(serve_app):
    with httpx.Client(base_url=serve_app[0], timeout=MAX_SECONDS, follow_redirects=True) as c:
        yield c


FUZZ_TALLY = Tally()


@given(fuzz=any_request())
@settings(FUZZ, max_examples=250)
def test_generated_requests_over_serve(fuzz_http, fuzz: FuzzRequest) -> None:
    """The in-process fuzz strategy against Serve's proxy (fewer examples: real HTTP)."""
    check(fuzz_http, fuzz, FUZZ_TALLY)


def test_generated_requests_were_sent():
    statuses = FUZZ_TALLY.statuses
    print(f"\nover Serve: {sum(statuses.values())} requests {dict(statuses)}, slowest "
          f"{FUZZ_TALLY.slowest * 1e3:.0f} ms")  # fmt: skip
    assert sum(statuses.values()) >= 200 and max(statuses) < 500


RAW_REQUESTS = [  # bytes on the wire that no HTTP client library would send
    b"GET /recommend/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /similar/..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /recommend/1\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
    b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    + (b"8000\r\n" + b"[" * 0x8000 + b"\r\n") * 3
    + b"0\r\n\r\n",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{}",  # shorter than announced: the client then goes away
]


@pytest.mark.parametrize("raw", RAW_REQUESTS, ids=range(len(RAW_REQUESTS)))
def test_malformed_http_gets_4xx_or_a_closed_connection(serve_app, http, raw):
    host, port = serve_app[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=MAX_SECONDS) as sock:
        sock.settimeout(MAX_SECONDS)
        try:
            sock.sendall(raw)
            if raw.endswith(b"{}"):
                sock.shutdown(socket.SHUT_WR)
            answer = sock.recv(200)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # the server dropped the connection: fine, as long as it is not a 5xx
        except TimeoutError:
            pytest.fail(f"no answer and no close in {MAX_SECONDS}s")
    if answer:  # a 2xx too: a 200 KB header is within what the proxy accepts
        status = int(answer.split(b" ", 2)[1])
        assert 200 <= status < 500 and status // 100 != 3, answer
    assert http.get("/healthz").status_code == 200  # and the server is still fine
