"""Ray Serve deployments: one per model, and a FastAPI ingress that calls them through handles.

Each model deployment wraps a ``serving.recommenders`` service and adds only what Serve brings:

* ``@serve.batch`` on known-user requests: concurrent requests' user embeddings and index search
  run as one ``(B, D)`` batch (size and wait come from ``user_config``);
* ``reconfigure(user_config)``: loads the artifacts it names in a worker thread while the current
  version keeps answering, then swaps them in. A version that does not load or does not match
  is refused: the replica logs the error, keeps serving the old version and reports the refusal
  in ``/healthz`` (raising would make Serve replace the replica with one that cannot start, and
  requests would fail). Only a replica with nothing to serve yet fails to start.

Answers cross the handles as ``(status, JSON bytes)``: no exception has to be pickled, and the
ingress copies bytes instead of unpickling and re-encoding nested dicts.

Events: one ``EventStore`` replica owns the event log (``serving.event_feed``); ``POST /events``
is checked by a TwoTower replica (the served catalog and schema), then appended through the
store's handle. Every model replica follows the store's change feed (a long poll that also
acknowledges what it applied), so the store answers a ``POST`` once every replica has the events.
The ingress's calls (``serving.handles``) carry every request that arrived while earlier ones
were under way: known users' GETs (``recommend_list``), posts' checks and appends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.artifacts import load_two_tower_service, load_user_knn_service, settle_heap
from serving.event_feed import EventFeed
from serving.fresh import UserEvents
from serving.handles import HandleBackend
from serving.http import create_app, encode
from serving.recommenders import ModelService, answer
from serving.schemas import K_MAX, MAX_BODY_BYTES, ModelSettings
from towers.storage.events import EventLog

log = logging.getLogger("ray.serve")
RELOAD_KEYS = ("storage", "model_artifact", "index_artifact", "model_version", "new_items")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# A follower's long poll of the event feed (an empty answer after this long). Also how long the
# EventStore replica's shutdown waits: Serve drains the polls it holds before it stops it (an
# app deleted, redeployed, Ctrl-C); 10 s made each of those ~6 s slower than 2 s.
POLL_S = 2.0
# How long a stopping model replica waits for the EventStore to forget it: ~10-40 ms when the
# store runs (a scale-down), never when the whole app is deleted, the store stopping too; each
# replica's stop takes that much longer then (2 s made deleting the app 3.0 s → 5.0 s).
LEAVE_S = 0.5


def keep_replica_grpc_on_loopback() -> None:
    """On a loopback-only node (``towers.launch.ray_init.loopback_node``), the inter-deployment
    gRPC server this replica starts after its constructor binds the node's address, not ``[::]``.

    Ray Serve 2.60 hard-codes ``[::]:0`` for that server (``replica.py``), so every replica
    would listen on all interfaces while the rest of a local instance is on 127.0.0.1; on a node
    with a reachable address nothing changes. Called first in every deployment's constructor;
    ``tests/unit/serving/test_security.py`` checks the sockets of a live server."""
    import ray
    from ray.serve._private import replica

    node_ip = ray.util.get_node_ip_address()
    add_port = replica.add_port_to_grpc_server
    if node_ip not in LOOPBACK or getattr(add_port, "loopback", False):
        return

    def add_port_on_node_ip(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{node_ip}:{address.removeprefix('[::]:')}"
        return add_port(server, address)

    add_port_on_node_ip.loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_node_ip


class ModelDeployment:
    """Base of the model deployments: the served version, its reload and the request methods."""

    def __init__(self, storage: str, event_store: DeploymentHandle | None = None) -> None:
        import torch

        keep_replica_grpc_on_loopback()
        torch.set_num_threads(1)  # small per-request work; parallelism comes from replicas
        self.default_storage = storage
        self.event_store, self.events = event_store, UserEvents()
        self.follower, self.following = uuid.uuid4().hex, None  # this replica on the feed
        self.service: ModelService | None = None
        self.settings: ModelSettings | None = None
        self.refused: dict[str, Any] | None = None  # last version reconfigure refused
        self.batches = self.batched_requests = 0  # how much @serve.batch merges, for /healthz

    @staticmethod
    def load(storage: str, settings: ModelSettings) -> ModelService:
        raise NotImplementedError

    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        """Known users' ``(user_id, k)`` requests; subclasses decorate it with ``@serve.batch``."""
        raise NotImplementedError

    def _answer_batch(self, requests: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        self.batches += 1
        self.batched_requests += len(requests)
        return [encode(a) for a in self._require().recommend_many(requests)]

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Loads the version ``user_config`` names (``ModelSettings``) and swaps it in."""
        try:
            settings = ModelSettings.model_validate(user_config or {})
        except ValueError as err:
            return self._refuse(user_config, f"invalid user_config: {err}")
        batched: Any = self.recommend_batch  # each subclass's own @serve.batch queue
        batched.set_max_batch_size(settings.max_batch_size)
        batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        same = self.settings is not None and all(
            getattr(settings, k) == getattr(self.settings, k) for k in RELOAD_KEYS
        )
        if self.service is not None and same:  # only batch settings changed, or a roll-back
            self.settings, self.refused = settings, None  # to the version being served
            return None
        start = time.perf_counter()
        try:  # a thread: requests keep being answered by the current version meanwhile
            service = await asyncio.to_thread(self.load, self.default_storage, settings)
        except Exception as err:
            return self._refuse(user_config, str(err))
        old = self.service.version if self.service is not None else None
        service.events = self.events
        if self.event_store is not None and self.following is None:  # first load: catch up
            self.events.apply(await self.event_store.changes.remote(self.follower, 0, 0.0))
            self.following = asyncio.get_running_loop().create_task(self._follow_events())
        self.service, self.settings, self.refused = service, settings, None
        settle_heap()  # the new version out of the collector's walks, the old one collectable
        log.info(
            "%s: serving version %s (was %s), loaded in %.2fs",
            service.name,
            service.version,
            old,
            time.perf_counter() - start,
        )
        return None

    async def _follow_events(self) -> None:
        """Applies the store's new events as they commit, for as long as the replica lives."""
        assert self.event_store is not None
        while True:
            try:
                changes = self.event_store.changes.remote(self.follower, self.events.seq, POLL_S)
                self.events.apply(await changes)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the store restarting: ask again shortly
                log.warning("event feed: %s: %s; retrying", type(err).__name__, err)
                await asyncio.sleep(0.5)

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful stop of this replica (scale-down, a redeploy, the app deleted): Serve
        calls ``__del__`` once its requests have drained and awaits what it returns. Leaving the
        event feed then keeps the store from making the next ``POST /events`` wait
        ``events_ack_timeout_s`` for a replica that is gone. A plain method, not ``async def``:
        Python's own finalizer also calls ``__del__`` (a replica object collected outside Serve,
        as in the unit tests), and a coroutine made there would never be awaited."""
        if self.event_store is None or self.following is None:
            return None
        return self._leave_feed(self.event_store, self.following)

    async def _leave_feed(self, event_store: DeploymentHandle, following: asyncio.Task) -> None:
        """Stops polling first, so that no poll of this replica reaches the store after it has
        forgotten it (the store answers the one in flight then). A store that does not answer
        within ``LEAVE_S`` (stopping too, or restarting) stops waiting for this replica by
        itself: ``events_ack_timeout_s`` after its last poll."""
        self.following = None
        following.cancel()
        await asyncio.wait([following])
        try:
            await asyncio.wait_for(event_store.forget.remote(self.follower), LEAVE_S)
        except Exception as err:  # every app deletion: debug, not a warning per replica
            log.debug("event feed: left unanswered: %s: %s", type(err).__name__, err)

    def _refuse(self, user_config: Any, message: str) -> None:
        if self.service is None:  # nothing to fall back to: fail the replica, Serve shows why
            raise RuntimeError(message)
        log.error("refused new version, still serving %s: %s", self.service.version, message)
        self.refused = {"user_config": user_config, "error": message}

    def _require(self) -> ModelService:
        if self.service is None:
            raise RuntimeError("no model loaded: reconfigure was never called")
        return self.service

    async def recommend_list(self, requests: list[tuple[Any, int]]) -> list[tuple[int, bytes]]:
        """Known users' answers for the ingress's coalesced requests, through the replica's
        ``@serve.batch`` queue (its size and wait apply, and the lists of several ingress
        replicas merge into one batch)."""
        batched: Any = self.recommend_batch  # takes one request, returns its answer
        return list(await asyncio.gather(*(batched(request) for request in requests)))

    async def recommend_cold_start(self, body: dict[str, Any], k: int) -> tuple[int, bytes]:
        return encode(answer(self._require().recommend_cold_start, body, k))

    async def similar(self, item_id: Any, k: int) -> tuple[int, bytes]:
        return encode(answer(self._require().similar_items, item_id, k))

    async def user_features(self) -> dict[str, dict[str, Any]]:
        return self._require().user_features()

    async def history(self, user_id: Any, k: int) -> tuple[int, bytes]:
        return encode(answer(self._require().history, user_id, k))

    async def users(self, k: int) -> tuple[int, bytes]:
        return encode(answer(self._require().users, k))

    async def health(self) -> dict[str, Any]:
        mean_batch = self.batched_requests / self.batches if self.batches else None
        return {
            **self._require().health(),
            "refused_version": self.refused,
            "replica_mean_batch_size": mean_batch,
        }


# Half a CPU each by default, so the three replicas fit a 2-core laptop; the YAML can change it.
@serve.deployment(name="TwoTower", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class TwoTowerDeployment(ModelDeployment):
    """User tower (or precomputed user embeddings) + item index + seen-item filter."""

    @staticmethod
    def load(storage: str, settings: ModelSettings) -> ModelService:
        return load_two_tower_service(storage, settings)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        return self._answer_batch(requests)

    async def check_events(
        self, batches: list[list[dict[str, Any]]], now: int
    ) -> list[tuple[int, Any]]:
        """For each ``POST /events`` batch, ``(200, rows to store)`` or ``(4xx, error body)``:
        checked by the served model, each batch on its own."""
        check = self._require().check_events  # type: ignore[attr-defined]
        return [answer(check, events, now) for events in batches]


@serve.deployment(name="UserKNN", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
class UserKNNDeployment(ModelDeployment):
    """The UserKNN baseline (known users only)."""

    @staticmethod
    def load(storage: str, settings: ModelSettings) -> ModelService:
        return load_user_knn_service(storage, settings)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def recommend_batch(self, requests: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        return self._answer_batch(requests)


# One replica: the only process that writes the log. On a cluster it stays on the head node,
# whose disk holds the log (docs/ARCHITECTURE.md); every other replica reaches it by handle.
@serve.deployment(
    name="EventStore",
    num_replicas=1,
    max_ongoing_requests=1024,  # each model replica's long poll holds one
    ray_actor_options={"num_cpus": 0.1, "resources": {"node:__internal_head__": 0.001}},
)
class EventStoreDeployment:
    """The event log's single writer and the change feed the model replicas follow."""

    def __init__(self, path: str, ack_timeout_s: float = 1.0) -> None:
        keep_replica_grpc_on_loopback()
        self.feed = EventFeed(EventLog(path), ack_timeout_s)
        settle_heap()
        log.info("event log %s: %d events", path, len(self.feed.events))

    async def append(self, batches: list[list[tuple]]) -> list[tuple[int, dict[str, Any]]]:
        """Each checked batch's answer: stored in one commit, then applied by the followers."""
        return await self.feed.append_many(batches)

    async def changes(self, follower: str, since: int, wait_s: float) -> list:
        return await self.feed.changes(follower, since, wait_s)

    async def forget(self, follower: str) -> None:
        """A model replica that Serve stops leaves the feed (``EventFeed.forget``)."""
        await self.feed.forget(follower)

    async def health(self) -> dict[str, Any]:
        return {**self.feed.health(), "pid": os.getpid()}


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class Ingress:
    """FastAPI routes (``serving.http.create_app``) over the model deployments' handles."""

    def __init__(
        self,
        two_tower: DeploymentHandle,
        user_knn: DeploymentHandle,
        k_max: int = K_MAX,
        max_body_bytes: int = MAX_BODY_BYTES,
        request_timeout_s: float = 10.0,
        event_store: DeploymentHandle | None = None,
    ) -> None:
        keep_replica_grpc_on_loopback()
        # Only HTTP settings: a model roll-out changes the models' user_config, not these, so
        # the ingress replica is never replaced by one.
        self.k_max, self.max_body_bytes = k_max, max_body_bytes
        models = {"two_tower": two_tower, "user_knn": user_knn}
        self.backend = HandleBackend(models, request_timeout_s, event_store)
        settle_heap()

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, self.k_max, self.max_body_bytes)
