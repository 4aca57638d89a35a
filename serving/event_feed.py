"""The ``EventStore``'s logic without Ray: group commit, the change feed, the replicas' acks.

One process writes the event log (``towers.storage.events.EventLog``); in Serve that is the
single ``EventStore`` replica, which every other replica reaches through a handle:

* ``append_many(batches)``: the batches join those waiting for the next commit; one writer
  thread commits all of them in one transaction (one fsync: group commit), and ``append_many``
  answers only after its commit. Then it waits, at most ``ack_timeout_s``, until every replica that
  follows the feed has applied the new events, so the client's next ``GET /recommend`` reflects
  them on whichever replica it lands (``applied: true``). A follower that does not confirm in
  time is presumed gone and dropped until it polls again (``applied: false``; the events are
  stored either way and it catches up from its own ``seq``). So is, before the wait, one that
  has had no poll in flight for ``ack_timeout_s`` (a replica killed without a word: a live one
  polls again as soon as its poll is answered), without making the answer ``false``.
* ``changes(follower, since, wait_s)``: a long poll. It records that ``follower`` has applied
  everything up to ``since`` (its acknowledgement), then returns the events after ``since``,
  waiting up to ``wait_s`` for some when there are none.
* ``forget(follower)``: a replica that Serve stops says so on its way out, so that no append
  waits ``ack_timeout_s`` for it first; its long poll is answered at once. One that polls
  again is followed again.

All stored events are kept in memory (the feed's source, and each replica's copy): the events
since the last training run, which ``--update`` folds into ``data/`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

from serving.catalog import Answer
from serving.coalesce import Coalescer
from towers.storage.events import BatchOutcome, EventLog, EventRow, StoredEvent
from towers.storage.root import Storage

EVENTS_FILE = "events/events.sqlite"


def resolve_events_path(storage: str, events_path: str | None) -> str:
    """The event log's file: ``events_path``; else ``events/events.sqlite`` under a local
    storage root, or, for a storage URI (SQLite needs a local disk), a file named after the URI
    under the EventStore node's ``~/.local/share/ray_two_tower/events/`` (the head node's)."""
    if events_path is not None:
        return events_path
    root = Storage(storage)
    if root.is_local:
        return root.path(EVENTS_FILE)
    digest = hashlib.sha256(root.uri.encode()).hexdigest()[:16]
    return f"~/.local/share/ray_two_tower/events/{digest}.sqlite"


class EventFeed:
    """Group-committed appends to ``log`` and the change feed that replicas follow."""

    def __init__(self, log: EventLog, ack_timeout_s: float = 1.0) -> None:
        self.log, self.ack_timeout_s = log, ack_timeout_s
        self.events: list[StoredEvent] = log.since(0)  # every stored event, in seq order
        self.followers: dict[str, int] = {}  # follower id → the last seq it has applied
        self.idle: dict[str, float] = {}  # follower id → when its last poll ended (none since)
        self.writes: Coalescer[Sequence[EventRow], BatchOutcome] = Coalescer(self._write)
        self._changed: asyncio.Condition | None = None  # created on the serving event loop

    @property
    def changed(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    @property
    def commits(self) -> int:
        return self.writes.rounds

    @property
    def committed_batches(self) -> int:
        return self.writes.items

    async def append(self, rows: Sequence[EventRow]) -> Answer:
        """Stores a checked batch (durable when this returns) and waits for the followers."""
        return (await self.append_many([rows]))[0]

    async def append_many(self, batches: Sequence[Sequence[EventRow]]) -> list[Answer]:
        """``append`` of each batch, committed together, with one wait for the followers."""
        outcomes = await self.writes.submit_many(batches)
        stored = any(outcome.error is None for outcome in outcomes)
        applied = await self._wait_for_followers(self.last_seq) if stored else False
        return [_reply(outcome, applied) for outcome in outcomes]

    async def _write(self, batches: list[Sequence[EventRow]]) -> list[BatchOutcome]:
        """One round of the group commit: ``batches`` in one transaction."""
        try:  # in a thread (one hop a round): the fsync must not stall the event loop
            outcomes, new = await asyncio.to_thread(self._commit, batches, self.last_seq)
        except Exception as err:  # the disk, the database: no batch of the round is stored
            return [BatchOutcome(error=f"{type(err).__name__}: {err}")] * len(batches)
        self.events.extend(new)
        return outcomes

    def _commit(
        self, batches: list[Sequence[EventRow]], last_seq: int
    ) -> tuple[list[BatchOutcome], list[StoredEvent]]:
        """One transaction for ``batches``, then the events it stored (after ``last_seq``)."""
        return self.log.append_batches(batches), self.log.since(last_seq)

    async def _wait_for_followers(self, seq: int) -> bool:
        """True once every follower has applied ``seq``; False (and the laggards dropped) after
        ``ack_timeout_s``. A follower without a poll for ``ack_timeout_s`` already is dropped
        first: a replica killed without leaving (``forget``) would cost every append that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout_s
        async with self.changed:
            quiet_since = loop.time() - self.ack_timeout_s
            for follower in [f for f, ended in self.idle.items() if ended < quiet_since]:
                self._drop(follower)  # gone before this append: not worth waiting for
            self.changed.notify_all()  # wakes the followers' long polls
            while True:
                behind = [f for f, applied in self.followers.items() if applied < seq]
                remaining = deadline - loop.time()
                if not behind:
                    return True
                if remaining <= 0:
                    for follower in behind:
                        self._drop(follower)
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), remaining)

    async def changes(self, follower: str, since: int, wait_s: float) -> list[StoredEvent]:
        """The events after ``since`` (waiting up to ``wait_s`` for some); ``follower`` has
        applied everything up to ``since``."""

        def news_or_gone() -> bool:
            # A follower forgotten meanwhile is answered at once, while its replica can still
            # take the answer: a poll answered after its replica had exited held up the store's
            # other replies, and with them the next append's acknowledgements, for ~1 s.
            return self.last_seq > since or follower not in self.followers

        async with self.changed:
            self.followers[follower] = since
            self.idle.pop(follower, None)
            self.changed.notify_all()  # an append may be waiting for this acknowledgement
            try:
                if self.last_seq <= since and wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait_for(news_or_gone), wait_s)
                return self.after(since)
            finally:  # answered, or its caller gone: silent from now until its next poll
                if follower in self.followers:
                    self.idle[follower] = asyncio.get_running_loop().time()

    async def forget(self, follower: str) -> None:
        """Stops waiting for ``follower``'s acknowledgements: a model replica that Serve stops
        (scale-down, a redeploy with fewer replicas) would otherwise keep the next append
        waiting ``ack_timeout_s`` for it and answering ``applied: false``. An unknown follower
        is nothing to forget; a forgotten one that polls again (it did not stop after all) is
        followed again from that poll, as a dropped one is."""
        async with self.changed:
            if follower in self.followers:
                self._drop(follower)
                self.changed.notify_all()  # its own long poll, and an append waiting for it

    def _drop(self, follower: str) -> None:
        del self.followers[follower]
        self.idle.pop(follower, None)

    def after(self, seq: int) -> list[StoredEvent]:
        """The stored events after ``seq``, in commit order."""
        return self.events[bisect.bisect_right(self.events, seq, key=lambda e: e.seq) :]

    def health(self) -> dict[str, Any]:
        mean = self.committed_batches / self.commits if self.commits else None
        return {
            "path": str(self.log.path),
            "events": len(self.events),
            "last_seq": self.last_seq,
            "followers": len(self.followers),
            "mean_batches_per_commit": mean,
        }


def _reply(outcome: BatchOutcome, applied: bool) -> Answer:
    if outcome.error is not None:
        return 503, {"error": "events_unavailable", "message": outcome.error[:300]}
    body = {"accepted": outcome.accepted, "duplicates": outcome.duplicates, "applied": applied}
    return 200, body
