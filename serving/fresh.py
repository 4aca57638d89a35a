"""Fresh answers: the events a replica holds, and each model's top-k over a history they extend.

A replica keeps every stored event in a :class:`UserEvents`, by raw user id, fed in commit order
(``serving.deployments`` follows the ``EventStore``; ``python -m serving --no-ray`` appends to
it directly). A request for a user without events takes the known-user path untouched (one
dictionary lookup); a user with events is answered here, from their training history (none for
a user first seen through events) extended by the events' items:

* two-tower: the user tower embeds that history at request time through the cold-start path
  (``TwoTowerRecommender.user_embedding_cold_start``: the user's features, the pooled items
  and their ratings, an event's rating replacing an older one of the same item, as a training
  user's history is pooled), cached until the user's next event;
* UserKNN: the user's row (training ratings, an event's rating replacing an older one of the
  same item) is scored by ``UserKNN.score_history``, also cached until the next event.

Both exclude every item of that history from the answer. An event whose item the served catalog
lacks (a roll-back to an index without the items added later) is left out of that model's answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from towers.data.errors import DataError
from towers.metrics.top_k import top_k_excluding
from towers.storage.events import StoredEvent

CACHED_USERS = 10_000  # fresh embeddings / score rows kept per replica (least recently used go)


class UserEvents:
    """Every applied event by raw user id, in commit order; ``seq``: the last one applied."""

    def __init__(self) -> None:
        self.by_user: dict[Any, list[StoredEvent]] = {}
        self.seq = 0

    def apply(self, events: Iterable[StoredEvent]) -> None:
        """Adds events in commit order; ones already applied (``seq`` not newer) are skipped."""
        for event in events:
            if event.seq > self.seq:
                self.by_user.setdefault(event.user_id, []).append(event)
                self.seq = event.seq

    def get(self, user_id: Any) -> list[StoredEvent] | None:
        return self.by_user.get(user_id)

    def __len__(self) -> int:
        return len(self.by_user)


class FreshCache:
    """Per-user values computed from a history, valid until the user's next event (LRU)."""

    def __init__(self, size: int = CACHED_USERS) -> None:
        self.size, self.values = size, OrderedDict[Any, tuple[int, Any]]()

    def get(self, user_id: Any, seq: int) -> Any:
        hit = self.values.get(user_id)
        if hit is None or hit[0] != seq:
            return None
        self.values.move_to_end(user_id)
        return hit[1]

    def put(self, user_id: Any, seq: int, value: Any) -> Any:
        self.values[user_id] = (seq, value)
        self.values.move_to_end(user_id)
        if len(self.values) > self.size:
            self.values.popitem(last=False)
        return value


def event_items(catalog: Any, events: Sequence[StoredEvent]) -> tuple[np.ndarray, np.ndarray]:
    """``(item_idx, rating)`` of the events whose item the catalog has, in commit order."""
    pairs = [(catalog.find_item(e.item_id), e.rating) for e in events]
    kept = [(i, r) for i, r in pairs if i is not None]
    return np.array([i for i, _ in kept], np.int64), np.array([r for _, r in kept], np.float64)


def extend_history(
    items: np.ndarray, ratings: np.ndarray, new_items: np.ndarray, new_ratings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(items, ratings)`` oldest first, extended by the newer ones: an item once, at its last
    position (order = recency), with its latest rating."""
    all_items = np.concatenate([items, new_items])
    last = {item: pos for pos, item in enumerate(all_items.tolist())}
    keep = np.array(sorted(last.values()), np.int64)
    return all_items[keep], np.concatenate([ratings, new_ratings])[keep]


def two_tower_top_k(
    service: Any, user_id: Any, events: Sequence[StoredEvent], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(item_idx, scores)``, each ``(k,)``: the user tower over the training history plus the
    events' items, searched in the index with all of them excluded."""
    rec, known = service.recommender, service.catalog.find_user(user_id)
    # Oldest first, so that a decayed history pool weighs the newest items (events last) most.
    if known is not None:
        train, train_ratings = rec.rated_history_in_time_order(known)
    else:
        train, train_ratings = np.zeros(0, np.int64), np.zeros(0)
    # (H,) oldest training item first; an event's rating replaces an older one of the item.
    history, ratings = extend_history(train, train_ratings, *event_items(service.catalog, events))
    query = service.fresh_queries.get(user_id, events[-1].seq)
    if query is None:
        known_item = history < rec.n_items  # items added after training have no bag row
        pooled, pooled_ratings = history[known_item], ratings[known_item]
        features = service.user_rows[known] if known is not None else None
        try:
            query = rec.user_embedding_cold_start(features, pooled, pooled_ratings)  # (D,)
        except DataError:  # a stored value the fitted encoders refuse: the features unknown
            query = rec.user_embedding_cold_start(None, pooled, pooled_ratings)
        service.fresh_queries.put(user_id, events[-1].seq, query)
    items, scores = service._search(query[None, :], k, [history])
    return items[0], scores[0]


def user_knn_top_k(
    service: Any, user_id: Any, events: Sequence[StoredEvent], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(item_idx, scores)``, each ``(k,)``: UserKNN over the training row with the events'
    ratings (the latest rating of an item counts), that row excluded."""
    knn, known = service.knn, service.catalog.find_user(user_id)
    scores = service.fresh_scores.get(user_id, events[-1].seq)
    row: dict[int, float] = {}
    if known is not None:
        ratings = service.train_ratings()[known]
        row.update(zip(ratings.indices.tolist(), ratings.data.tolist(), strict=True))
    items, ratings = event_items(service.catalog, events)
    row.update(zip(items.tolist(), ratings.tolist(), strict=True))
    row = {i: r for i, r in row.items() if i < knn.n_items}
    if scores is None:
        idx = np.fromiter(row, np.int64, len(row))
        values = np.fromiter(row.values(), np.float64, len(row))
        scores = knn.score_history(idx, values, exclude_user=known)  # (I,)
        service.fresh_scores.put(user_id, events[-1].seq, scores)
    cols = np.fromiter(row, np.int64, len(row))
    exclude = sp.csr_matrix((np.ones(len(cols)), (np.zeros(len(cols)), cols)), (1, knn.n_items))
    top, best = top_k_excluding(scores[None, :].copy(), k, exclude)
    return top[0], best[0]


def history_entries(catalog: Any, events: Sequence[StoredEvent]) -> list[dict[str, Any]]:
    """The events as ``/history`` items (newest first): the item's display columns, rating,
    timestamp, ``source: "event"`` and the ``event_id``."""
    out = []
    for event in reversed(events):
        idx = catalog.find_item(event.item_id)
        shown = catalog.items[idx] if idx is not None else {"item_id": event.item_id}
        out.append(
            {
                **shown,
                "rating": float(event.rating),
                "timestamp": int(event.timestamp),
                "source": "event",
                "event_id": event.event_id,
            }
        )
    return out
