"""Opportunistic batching for asyncio: requests that arrive while earlier ones are under way go
together in the next round (the event log's group commit; one call between Serve replicas for
many HTTP requests, ``serving.handles``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T, R = TypeVar("T"), TypeVar("R")


class Coalescer(Generic[T, R]):
    """Opportunistic batching: ``submit(item)`` returns ``run([..., item, ...])``'s answer for
    ``item``, where ``run`` gets every item submitted while ``concurrency`` rounds were running.

    A lone item goes at once (no wait for a batch to fill, unlike ``@serve.batch``), and under
    load the rounds grow with the load: the event log's group commit (one round at a time), and
    one call between replicas for many requests (``serving.handles.HandleBackend``). ``run``
    answers one result per item, in order; if it raises, every item of its round gets the error.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], concurrency: int = 1) -> None:
        self.run, self.concurrency = run, concurrency
        self.queue: list[tuple[T, asyncio.Future[R]]] = []
        self.running: set[asyncio.Task] = set()
        self.starting = False
        self.rounds = self.items = 0

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Each of ``items``' answers; they go in one round."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures, strict=True))
        self._start(loop)
        return [await future for future in futures]

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new round for the waiting items, unless one is about to start or all are busy."""
        if self.queue and not self.starting and len(self.running) < self.concurrency:
            self.starting = True  # it takes the queue when it first runs, with later arrivals
            task = loop.create_task(self._round())
            self.running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self._start(task.get_loop())

    async def _round(self) -> None:
        self.starting = False
        taken, self.queue = self.queue, []
        try:
            results = await self.run([item for item, _ in taken])
        except Exception as err:
            for _, future in taken:
                if not future.done():
                    future.set_exception(err)
            return
        self.rounds, self.items = self.rounds + 1, self.items + len(taken)
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():  # not cancelled by its caller meanwhile
                future.set_result(result)
