"""Request handling without Ray: raw ids ↔ indices, validation, top-k, the response JSON.

The Serve deployments (``serving.deployments``) and the bare in-process app (``serving.http``)
both call these classes, so everything a request can get wrong is tested here in milliseconds.

* :class:`Catalog` maps raw ``user_id``/``item_id`` (integers or strings) to the row indices the
  models use and holds each item's display columns (title, genres, ...).
* :class:`TwoTowerService` answers known users (their precomputed embedding, or the user tower,
  then the index with their seen items excluded), cold-start users (the user tower on features
  and liked items) and similar items (the item's embedding as the query).
* :class:`UserKNNService` answers known users only.

A user with events (``serving.fresh``: ``POST /events``) is answered from their history extended
by those events; every other request takes the known-user path as before.

Every request method returns a JSON-ready ``dict`` or raises :class:`ServingError` (a 4xx with
an error code and a message); :func:`answer` turns either into ``(status, body)``, the shape that
crosses a ``DeploymentHandle``, so no exception has to be pickled between replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from serving.catalog import Answer, Catalog, ServingError, answer, check_k
from serving.fresh import (
    FreshCache,
    UserEvents,
    history_entries,
    two_tower_top_k,
    user_knn_top_k,
)
from serving.schemas import ColdStartRequest, feature_json_schema
from towers.data.contract import IMPLICIT_SCALE
from towers.data.errors import DataError
from towers.data.events import check_events
from towers.data.schema import Schema
from towers.storage.events import EventRow, StoredEvent

__all__ = ["Answer", "Catalog", "ModelService", "ServingError", "TwoTowerService", "answer"]


class ModelService:
    """What every served model answers; subclasses implement ``_top_k``.

    Attributes:
        name: model name in the API (``two_tower``, ``user_knn``).
        version: short content hash of the served artifact.
        catalog: id maps and item metadata of the data the model was trained on.
        info: extra facts for ``/healthz`` (artifact names, storage, index kind).
        events: the events the replica holds (set by whoever feeds them); None: none.
    """

    name = "model"

    def __init__(self, version: str, catalog: Catalog, info: dict[str, Any]) -> None:
        self.version, self.catalog, self.info = version, catalog, info
        self.events: UserEvents | None = None

    def _fresh_top_k(
        self, user_id: Any, events: list[StoredEvent], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(item_idx, scores)``, each ``(k,)``, for a user with events (``serving.fresh``)."""
        raise NotImplementedError

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` known users → ``(item_idx, scores)``, each ``(B, k)``, seen items excluded."""
        raise NotImplementedError

    def recommend_many(self, requests: Sequence[tuple[int, int]]) -> list[Answer]:
        """Answers ``(user_id, k)`` requests with one ``_top_k`` call for all valid ones."""
        out: list[Answer | None] = [None] * len(requests)
        valid, users = [], []
        parsed: dict[int, Any] = {}
        events = self.events if self.events else None  # no events at all: nothing to look up
        for i, (user_id, k) in enumerate(requests):
            try:
                check_k(k)
                if events is not None:
                    user = self.catalog.parse_id(user_id, "user")
                    mine = events.get(user)
                    if mine:  # the user's history grew after training: a fresh answer
                        ranked = self.catalog.ranked_items(*self._fresh_top_k(user, mine, k))
                        out[i] = (200, self._response(user, k, ranked))
                        continue
                users.append(self.catalog.user_index(user_id))
                parsed[i] = self.catalog.parse_id(user_id, "user")  # "42" in a path: 42
                valid.append(i)
            except ServingError as err:
                out[i] = (err.status, err.body())
        if valid:
            depth = max(requests[i][1] for i in valid)
            items, scores = self._top_k(np.asarray(users, dtype=np.int64), depth)  # (B, depth)
            for row, i in enumerate(valid):
                k = requests[i][1]
                ranked = self.catalog.ranked_items(items[row, :k], scores[row, :k])
                out[i] = (200, self._response(parsed[i], k, ranked))
        return [a for a in out if a is not None]

    def recommend(self, user_id: Any, k: int) -> dict[str, Any]:
        """One known user's top-``k`` (the batch path with a batch of one)."""
        status, body = self.recommend_many([(user_id, k)])[0]
        if status != 200:
            raise ServingError(status, body["error"], body["message"])
        return body

    def recommend_cold_start(self, request: ColdStartRequest | dict, k: int) -> dict[str, Any]:
        raise ServingError(
            400,
            "cold_start_unsupported",
            f"model {self.name!r} can only recommend for users in its training data; "
            "use model=two_tower for a user described by features or liked items",
        )

    def similar_items(self, item_id: Any, k: int) -> dict[str, Any]:
        raise ServingError(
            400, "similar_unsupported", f"model {self.name!r} has no item embeddings"
        )

    def user_features(self) -> dict[str, dict[str, Any]]:
        """The values each categorical user feature of a cold-start body can take (none here)."""
        return {}

    def health(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_version": self.version,
            "n_users": self.catalog.n_users,
            "n_items": self.catalog.n_items,
            **self.info,
        }

    def _response(self, user_id: Any, k: int, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "cold_start": user_id is None,
            "model": self.name,
            "model_version": self.version,
            "k": k,
            "items": items,
        }


class TwoTowerService(ModelService):
    """The two-tower model behind an item index.

    Args:
        recommender: a loaded ``towers.recommenders.two_tower.TwoTowerRecommender`` (user
            tower, features, training interactions for the seen-item filter).
        index: a ``towers.index.ItemIndex`` over its item embeddings, ids = ``item_idx``.
        catalog: ids and metadata; sizes must match the model.
        user_embeddings: optional ``(n_users, D)`` precomputed known-user embeddings.
        info: extra ``/healthz`` facts.
        item_embeddings: ``(N, D)`` embeddings of an index built over a larger catalog than the
            model's (items added after training, ``build_index --items``); None: the model's.
        new_items: whether items added after training are recommended (False: left out).
        schema: the data set's canonical schema, which events are checked against; None: the
            service takes no events.
        user_rows: each known user's raw feature values by name (the fresh answers' features).
    """

    name = "two_tower"

    def __init__(
        self,
        recommender: Any,
        index: Any,
        catalog: Catalog,
        user_embeddings: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        item_embeddings: np.ndarray | None = None,
        new_items: bool = True,
        schema: Schema | None = None,
        user_rows: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(recommender.version, catalog, dict(info or {}))
        self.schema, self.user_rows = schema, user_rows
        self.fresh_queries = FreshCache()  # user → (D,) embedding of their extended history
        sizes = (recommender.n_users, recommender.n_items, index.size)
        grown = item_embeddings is not None  # an index over the model's items and newer ones
        if (
            sizes[0] != catalog.n_users
            or sizes[2] != catalog.n_items
            or (sizes[1] != catalog.n_items if not grown else sizes[1] > catalog.n_items)
        ):
            raise ValueError(
                f"model has {sizes[0]} users x {sizes[1]} items, index {sizes[2]} items, but "
                f"the catalog has {catalog.n_users} x {catalog.n_items}: artifacts of different "
                "runs"
            )
        dim = recommender.config.retrieval_dim
        if index.dim != dim:
            raise ValueError(f"index dimension {index.dim} != model's retrieval dimension {dim}")
        if user_embeddings is not None and user_embeddings.shape != (catalog.n_users, dim):
            raise ValueError(
                f"user_embeddings {user_embeddings.shape} != ({catalog.n_users}, {dim})"
            )
        self.recommender, self.index, self.user_embeddings = recommender, index, user_embeddings
        # (N, D), the /similar queries; an index over a grown catalog brings its own.
        self.item_embeddings = recommender.item_embeddings() if not grown else item_embeddings
        self.n_new_items = catalog.n_items - recommender.n_items  # added after training
        self.new_items = new_items
        self.info.setdefault("index_kind", index.kind)
        self.info["user_embeddings"] = "precomputed" if user_embeddings is not None else "tower"
        self.info.update(new_items=self.n_new_items, new_items_served=new_items)

    def _search(self, queries: np.ndarray, k: int, exclude: Any) -> tuple[np.ndarray, np.ndarray]:
        """``index.search``; items added after training left out unless ``new_items``."""
        if self.new_items or self.n_new_items == 0:
            scores, items = self.index.search(queries, k, exclude=exclude)
            return items, scores
        scores, items = self.index.search(queries, k + self.n_new_items, exclude=exclude)
        old = items < self.recommender.n_items  # (B, k + new): drop the new ones, keep order
        order = np.argsort(~old, axis=1, kind="stable")[:, :k]
        items = np.where(np.take_along_axis(old, order, 1), np.take_along_axis(items, order, 1), -1)
        scores = np.where(items >= 0, np.take_along_axis(scores, order, 1), -np.inf)
        return items, scores

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.user_embeddings is not None:
            queries = self.user_embeddings[user_idx]  # (B, D)
        else:
            queries = self.recommender.user_embeddings(user_idx)  # (B, D), user tower
        seen = self.recommender.seen_matrix()[user_idx]  # (B, n_items), columns = item ids
        return self._search(queries, k, seen)

    def _fresh_top_k(
        self, user_id: Any, events: list[StoredEvent], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return two_tower_top_k(self, user_id, events, k)

    def check_events(self, events: list[dict[str, Any]], now: int) -> list[EventRow]:
        """A ``POST /events`` batch as rows to store, checked as rows of the interactions file
        (``towers.data.events``) and against the served catalog: a 422 names the first bad
        event and field; an item outside the catalog (and the index's added items) is one."""
        if self.schema is None:
            raise ServingError(400, "events_unsupported", "this server was loaded without data/")
        scale = self.schema.interactions.rating_scale or IMPLICIT_SCALE
        try:
            rows = check_events(events, self.schema, scale, self.catalog.id_types(), now)
        except DataError as err:
            raise ServingError(422, "invalid_event", str(err)) from err
        for i, (event_id, _, item_id, _, _) in enumerate(rows):
            if self.catalog.find_item(item_id) is None:
                raise ServingError(
                    422,
                    "unknown_item",
                    f"POST /events: field 'item_id': event {i} (event_id {event_id!r}): item_id "
                    f"{item_id!r} is not in the catalog ({self.catalog.n_items} items); add new "
                    "items with build_index --items and roll that index out",
                )
        return rows

    def user_features(self) -> dict[str, dict[str, Any]]:
        features = self.recommender.features.users.features
        return {f.name: feature_json_schema(f.to_dict()) for f in features}

    def history(self, user_id: Any, k: int) -> dict[str, Any]:
        """A user's ``k`` most recent interactions: their events (newest first), then their
        training items; a user known only through events has only those."""
        k, parsed = check_k(k), self.catalog.parse_id(user_id, "user")
        events = (self.events.get(parsed) if self.events else None) or []
        user = self.catalog.find_user(parsed)
        if user is None and not events:
            self.catalog.user_index(user_id)  # the 404 of an unknown user
        train = self.recommender.train_
        mine = np.flatnonzero(train.user_idx == user) if user is not None else np.zeros(0, int)
        rows = mine[np.lexsort((train.item_idx[mine], -train.timestamp[mine]))][:k]  # newest
        items = history_entries(self.catalog, events)[:k] + [
            {
                **self.catalog.items[int(train.item_idx[r])],
                "rating": float(train.rating[r]),
                "timestamp": int(train.timestamp[r]),
                "source": "training",
            }
            for r in rows
        ]
        return {
            "user_id": parsed,
            "k": k,
            "n_interactions": len(mine),
            "n_events": len(events),
            "items": items[:k],
        }

    def users(self, k: int) -> dict[str, Any]:
        """The first ``k`` known user ids (by id), to pick from."""
        ids = sorted(self.catalog.user_ids.tolist())[: check_k(k)]
        types = self.catalog.id_types()
        return {
            "n_users": self.catalog.n_users,
            "user_ids": ids,
            "user_id_type": types["user"],
            "item_id_type": types["item"],
        }

    def recommend_cold_start(self, request: ColdStartRequest | dict, k: int) -> dict[str, Any]:
        """Top-``k`` for a user outside the training data; liked items are excluded."""
        k = check_k(k)
        req = ColdStartRequest.model_validate(request)
        liked = self.catalog.item_indices(req.liked_item_ids)
        values = dict(req.features.model_extra or {}) if req.features is not None else {}
        if all(v is None for v in values.values()) and liked.size == 0:
            names = ", ".join(f.name for f in self.recommender.features.users.features)
            raise ServingError(
                422,
                "empty_user",
                f"describe the user by features {{{names}}} and/or liked_item_ids",
            )
        # Items added after training are not in the history vocabulary: excluded, not pooled.
        known = liked[liked < self.recommender.n_items]
        try:
            query = self.recommender.user_embedding_cold_start(values, known)  # (D,)
        except DataError as err:  # a feature the schema lacks, a value of the wrong kind
            raise ServingError(422, "bad_feature", f"features.{err}") from err
        items, scores = self._search(query[None, :], k, [liked])
        return self._response(None, k, self.catalog.ranked_items(items[0], scores[0]))

    def similar_items(self, item_id: Any, k: int) -> dict[str, Any]:
        """Nearest items to ``item_id`` by inner product of item embeddings, itself excluded."""
        k = check_k(k)
        idx = self.catalog.item_index(item_id)
        query = self.item_embeddings[idx : idx + 1]  # (1, D)
        items, scores = self._search(query, k, [np.array([idx])])
        return {
            **self.catalog.items[idx],  # the item's id and display columns (title, ...)
            "model": self.name,
            "model_version": self.version,
            "k": k,
            "items": self.catalog.ranked_items(items[0], scores[0]),
        }


class UserKNNService(ModelService):
    """The UserKNN baseline: known users only; scores are its predicted ratings or similarities.

    Args:
        knn: a loaded ``towers.recommenders.user_knn.UserKNN``.
        catalog: ids and metadata; sizes must match the model.
        version: short content hash of the saved model.
        info: extra ``/healthz`` facts.
    """

    name = "user_knn"

    def __init__(
        self, knn: Any, catalog: Catalog, version: str, info: dict[str, Any] | None = None
    ) -> None:
        super().__init__(version, catalog, dict(info or {}))
        if (knn.n_users, knn.n_items) != (catalog.n_users, catalog.n_items):
            raise ValueError(
                f"UserKNN has {knn.n_users} users x {knn.n_items} items but data/ has "
                f"{catalog.n_users} x {catalog.n_items}: artifacts of different runs"
            )
        self.knn = knn
        self.info.setdefault("params", knn.params)
        self.fresh_scores = FreshCache()  # user → (I,) scores of their extended row
        self._train_ratings: sp.csr_matrix | None = None

    def train_ratings(self) -> sp.csr_matrix:
        """``(n_users, n_items)`` training ratings (built on the first fresh answer)."""
        if self._train_ratings is None:
            self._train_ratings = self.knn.train_.to_csr()
        return self._train_ratings

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.knn.recommend(user_idx, k, exclude_seen=True)

    def _fresh_top_k(
        self, user_id: Any, events: list[StoredEvent], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return user_knn_top_k(self, user_id, events, k)
