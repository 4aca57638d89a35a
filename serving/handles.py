"""The ingress's client of the model deployments: ``serving.http.Backend`` over Serve handles.

Every call has a deadline and is sent once more if its replica was lost while answering it.
Requests that arrive while earlier ones are under way share one call
(``serving.coalesce.Coalescer``): a call between replicas costs the ingress and the model
replica more CPU than answering a known user does (``bench/serving_cpu.py``), so one call for
several requests is the cheapest way to more requests a second (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from serving.coalesce import Coalescer
from serving.http import Reply

log = logging.getLogger("ray.serve")

# Known-user calls the ingress keeps in flight to each model (each carries every request that
# arrived meanwhile): at 16 connections ~4 requests a call. What Serve's autoscaling counts as
# a replica's ongoing requests (serving/config.yaml sets its target to match).
ROUNDS = 4


class HandleBackend:
    """``serving.http.Backend`` over the model deployments' handles, with a deadline per call.

    A call whose replica was lost while answering it (``RayActorError``: the actor was killed,
    crashed or its node went away) is sent once more within the same deadline; Serve routes the
    repeat to a replica that is still alive. Every model method only reads, so a repeat is safe,
    and a replica's death costs no request. ``/healthz`` reports how often that happened.
    """

    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        timeout_s: float,
        event_store: DeploymentHandle | None = None,
    ) -> None:
        self.models, self.timeout_s = models, timeout_s
        self.handles = {**models, **({"event_store": event_store} if event_store else {})}
        self.retries_after_replica_loss = 0
        # POST /events: the batches of concurrent posts go to the TwoTower check, and then to
        # the store, as one call each (a hop between replicas is the event path's main cost)
        self.checks: Coalescer[list[dict[str, Any]], Reply] = Coalescer(self._check_round)
        self.appends: Coalescer[list[tuple], Reply] = Coalescer(
            functools.partial(self._call_each, "event_store", "append")
        )
        # GET /recommend likewise, with up to ROUNDS calls in flight a model, so that Serve
        # still spreads them over the model's replicas
        self.known = {
            m: Coalescer(functools.partial(self._call_each, m, "recommend_list"), ROUNDS)
            for m in models
        }

    async def _call(self, model: str, method: str, *args: Any) -> Any:
        """``models[model].method.remote(*args)``'s result, or a ``(status, error body)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for attempt in (1, 2):
            response: DeploymentResponse = getattr(self.handles[model], method).remote(*args)
            try:
                return await asyncio.wait_for(_awaited(response), max(0, deadline - loop.time()))
            except asyncio.TimeoutError:
                response.cancel()
                return 504, {"error": "timeout", "message": f"no answer in {self.timeout_s:g}s"}
            except Exception as err:
                if attempt == 1 and _replica_lost(err):
                    self.retries_after_replica_loss += 1
                    log.warning("%s.%s: replica lost (%s); sending once more", model, method, err)
                    continue
                return _failure(err)
        raise AssertionError("unreachable")

    async def recommend(self, model: str, user_id: Any, k: int) -> Reply:
        return await self.known[model].submit((user_id, k))

    async def recommend_cold_start(self, model: str, body: dict[str, Any], k: int) -> Reply:
        return await self._call(model, "recommend_cold_start", body, k)

    async def similar(self, item_id: Any, k: int) -> Reply:
        return await self._call("two_tower", "similar", item_id, k)

    async def history(self, user_id: Any, k: int) -> Reply:
        return await self._call("two_tower", "history", user_id, k)

    async def users(self, k: int) -> Reply:
        return await self._call("two_tower", "users", k)

    async def post_events(self, events: list[dict[str, Any]]) -> Reply:
        """Checked by a TwoTower replica, then stored; a repeat after a lost replica is safe
        (a replayed event_id is a duplicate). Each call's deadline counts from the round."""
        if "event_store" not in self.handles:
            return 400, {"error": "events_unsupported", "message": "no EventStore deployment"}
        status, checked = await self.checks.submit(events)
        if status != 200:
            return status, checked
        return await self.appends.submit(checked)

    async def _check_round(self, batches: list[list[dict[str, Any]]]) -> list[Reply]:
        return await self._call_each("two_tower", "check_events", batches, int(time.time()))

    async def _call_each(self, model: str, method: str, items: list, *args: Any) -> list[Reply]:
        """``method(items, *args)``'s answer for each item, or the call's failure for each."""
        result = await self._call(model, method, items, *args)
        return result if isinstance(result, list) else [result] * len(items)

    async def user_features(self) -> dict[str, dict[str, Any]]:
        result = await self._call("two_tower", "user_features")
        return {} if isinstance(result, tuple) else result  # a failed call: no enum, no error

    async def health(self) -> Reply:
        names = list(self.models)
        results = await asyncio.gather(*(self._call(n, "health") for n in names))
        models, ok = {}, True
        for name, result in zip(names, results, strict=True):
            if isinstance(result, tuple):  # (status, error body) from _call
                ok, models[name] = False, result[1]
            else:
                models[name] = result
        body = {"status": "ok" if ok else "degraded", "models": models}
        if "event_store" in self.handles:
            events = await self._call("event_store", "health")
            body["events"] = events[1] if isinstance(events, tuple) else events
        body["ingress_retries_after_replica_loss"] = self.retries_after_replica_loss
        return (200 if ok else 503), body


async def _awaited(response: DeploymentResponse) -> Any:
    return await response


def _replica_lost(err: Exception) -> bool:
    """The replica died or cannot be reached (also when Ray wraps that in a task error)."""
    cause = err.cause if isinstance(err, RayTaskError) else err
    return isinstance(cause, RayActorError)


def _failure(err: Exception) -> tuple[int, dict[str, str]]:
    """A model call's exception as an HTTP error: 500 for a bug in the model code, else 503."""
    if isinstance(err, RayTaskError) and not _replica_lost(err):
        log.error("model call raised: %s", err)
        return 500, {"error": "internal_error", "message": str(err.cause)[:300]}
    # A replica lost twice, back-pressure, Serve shutting down: the client may retry.
    log.warning("model call failed: %s: %s", type(err).__name__, err)
    message = f"model unavailable ({type(err).__name__}); retry"
    return 503, {"error": "unavailable", "message": message}
