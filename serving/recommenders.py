"""Request handling without Ray: raw ids ↔ indices, validation, top-k, the response JSON.

The Serve deployments (``serving.deployments``) and the bare in-process app (``serving.http``)
both call these classes, so everything a request can get wrong is tested here in milliseconds.

* :class:`Catalog` maps raw MovieLens ``user_id``/``item_id`` to the row indices the models use
  and holds each item's title and genres.
* :class:`TwoTowerService` answers known users (their precomputed embedding, or the user tower,
  then the index with their seen items excluded), cold-start users (the user tower on features
  and liked items) and similar items (the item's embedding as the query).
* :class:`UserKNNService` answers known users only.

Every request method returns a JSON-ready ``dict`` or raises :class:`ServingError` (a 4xx with
an error code and a message); :func:`answer` turns either into ``(status, body)``, the shape that
crosses a ``DeploymentHandle``, so no exception has to be pickled between replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from serving.schemas import ColdStartRequest

Answer = tuple[int, dict[str, Any]]  # (HTTP status, JSON body)


class ServingError(Exception):
    """A request the server understood but cannot answer: an HTTP 4xx with a JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


def answer(handler: Callable[..., dict[str, Any]], *args: Any) -> Answer:
    """``(200, handler(*args))``, or ``(status, error body)`` when it raises ``ServingError``."""
    try:
        return 200, handler(*args)
    except ServingError as err:
        return err.status, err.body()


def check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ServingError(422, "invalid_k", f"k must be a positive integer, got {k!r}")
    return int(k)


class Catalog:
    """Raw ids ↔ indices and item metadata, aligned with ``data/users.parquet``/``items.parquet``.

    Args:
        user_ids: ``(n_users,)`` raw user id of ``user_idx`` ``i``.
        item_ids: ``(n_items,)`` raw item id of ``item_idx`` ``i``.
        titles: ``n_items`` titles.
        genres: ``n_items`` genre lists.
    """

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        titles: Sequence[str],
        genres: Sequence[Sequence[str]],
    ) -> None:
        if not len(item_ids) == len(titles) == len(genres):
            raise ValueError(f"{len(item_ids)} items, {len(titles)} titles, {len(genres)} genres")
        self._user_idx = {int(u): i for i, u in enumerate(user_ids)}
        self._item_idx = {int(v): i for i, v in enumerate(item_ids)}
        if len(self._user_idx) != len(user_ids) or len(self._item_idx) != len(item_ids):
            raise ValueError("user and item ids must be distinct")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        # Built once: each response copies these dicts and adds a score.
        self.items = [
            {"item_id": int(i), "title": str(t), "genres": [str(g) for g in gs]}
            for i, t, gs in zip(item_ids, titles, genres, strict=True)
        ]

    @classmethod
    def from_frames(cls, users: pd.DataFrame, items: pd.DataFrame) -> Catalog:
        """From the ``data/`` tables; their ``*_idx`` columns must be ``0..n-1`` in order."""
        for frame, name in ((users, "user_idx"), (items, "item_idx")):
            if not np.array_equal(frame[name].to_numpy(), np.arange(len(frame))):
                raise ValueError(f"data/: {name} is not 0..{len(frame) - 1} in row order")
        return cls(
            users["user_id"].to_numpy(np.int64),
            items["item_id"].to_numpy(np.int64),
            items["title"].fillna("").astype(str).tolist(),
            [list(g) if g is not None else [] for g in items["genres"]],
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, user_id: int) -> int:
        """Raises a 404 naming ``user_id`` when it is not in the training data."""
        idx = self._user_idx.get(user_id)
        if idx is None:
            raise ServingError(
                404,
                "unknown_user",
                f"user_id {user_id} is not in the training data ({self.n_users} users); "
                "describe a new user with POST /recommend",
            )
        return idx

    def item_index(self, item_id: int) -> int:
        idx = self._item_idx.get(item_id)
        if idx is None:
            raise ServingError(
                404, "unknown_item", f"item_id {item_id} is not in the catalog ({self.n_items})"
            )
        return idx

    def item_indices(self, item_ids: Sequence[int]) -> np.ndarray:
        """``(n,)`` distinct indices; a 422 listing the unknown ids if any."""
        unknown = sorted({i for i in item_ids if i not in self._item_idx})
        if unknown:
            raise ServingError(
                422,
                "unknown_item",
                f"liked_item_ids not in the catalog: {unknown[:10]}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            )
        return np.unique(np.array([self._item_idx[i] for i in item_ids], dtype=np.int64))

    def ranked_items(self, item_idx: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """``[{item_id, title, genres, score}]`` in the given order, padding (-1 / -inf) dropped."""
        return [
            {**self.items[i], "score": round(float(s), 6)}
            for i, s in zip(item_idx.tolist(), scores.tolist(), strict=True)
            if i >= 0 and np.isfinite(s)
        ]


class ModelService:
    """What every served model answers; subclasses implement ``_top_k``.

    Attributes:
        name: model name in the API (``two_tower``, ``user_knn``).
        version: short content hash of the served artifact.
        catalog: id maps and item metadata of the data the model was trained on.
        info: extra facts for ``/healthz`` (artifact names, storage, index kind).
    """

    name = "model"

    def __init__(self, version: str, catalog: Catalog, info: dict[str, Any]) -> None:
        self.version, self.catalog, self.info = version, catalog, info

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` known users → ``(item_idx, scores)``, each ``(B, k)``, seen items excluded."""
        raise NotImplementedError

    def recommend_many(self, requests: Sequence[tuple[int, int]]) -> list[Answer]:
        """Answers ``(user_id, k)`` requests with one ``_top_k`` call for all valid ones."""
        out: list[Answer | None] = [None] * len(requests)
        valid, users = [], []
        for i, (user_id, k) in enumerate(requests):
            try:
                check_k(k)
                users.append(self.catalog.user_index(user_id))
                valid.append(i)
            except ServingError as err:
                out[i] = (err.status, err.body())
        if valid:
            depth = max(requests[i][1] for i in valid)
            items, scores = self._top_k(np.asarray(users, dtype=np.int64), depth)  # (B, depth)
            for row, i in enumerate(valid):
                user_id, k = requests[i]
                ranked = self.catalog.ranked_items(items[row, :k], scores[row, :k])
                out[i] = (200, self._response(user_id, k, ranked))
        return [a for a in out if a is not None]

    def recommend(self, user_id: int, k: int) -> dict[str, Any]:
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

    def similar_items(self, item_id: int, k: int) -> dict[str, Any]:
        raise ServingError(
            400, "similar_unsupported", f"model {self.name!r} has no item embeddings"
        )

    def feature_values(self) -> dict[str, list[str]]:
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

    def _response(self, user_id: int | None, k: int, items: list[dict[str, Any]]) -> dict[str, Any]:
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
    """

    name = "two_tower"

    def __init__(
        self,
        recommender: Any,
        index: Any,
        catalog: Catalog,
        user_embeddings: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(recommender.version, catalog, dict(info or {}))
        sizes = (recommender.n_users, recommender.n_items, index.size)
        if sizes != (catalog.n_users, catalog.n_items, catalog.n_items):
            raise ValueError(
                f"model has {sizes[0]} users x {sizes[1]} items, index {sizes[2]} items, but "
                f"data/ has {catalog.n_users} x {catalog.n_items}: artifacts of different runs"
            )
        dim = recommender.config.embedding_dim
        if index.dim != dim:
            raise ValueError(f"index dimension {index.dim} != model embedding_dim {dim}")
        if user_embeddings is not None and user_embeddings.shape != (catalog.n_users, dim):
            raise ValueError(
                f"user_embeddings {user_embeddings.shape} != ({catalog.n_users}, {dim})"
            )
        self.recommender, self.index, self.user_embeddings = recommender, index, user_embeddings
        self.item_embeddings = recommender.item_embeddings()  # (N, D), the /similar queries
        self.info.setdefault("index_kind", index.kind)
        self.info["user_embeddings"] = "precomputed" if user_embeddings is not None else "tower"

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.user_embeddings is not None:
            queries = self.user_embeddings[user_idx]  # (B, D)
        else:
            queries = self.recommender.user_embeddings(user_idx)  # (B, D), user tower
        seen = self.recommender.seen_matrix()[user_idx]  # (B, n_items), columns = item ids
        scores, items = self.index.search(queries, k, exclude=seen)
        return items, scores

    def feature_values(self) -> dict[str, list[str]]:
        return {"occupation": list(self.recommender.features.occupations)}

    def history(self, user_id: int, k: int) -> dict[str, Any]:
        """A known user's ``k`` most recent training items (what the model knows of them)."""
        k, user = check_k(k), self.catalog.user_index(user_id)
        train = self.recommender.train_
        mine = np.flatnonzero(train.user_idx == user)  # (n,) this user's training rows
        rows = mine[np.lexsort((train.item_idx[mine], -train.timestamp[mine]))][:k]  # newest
        items = [
            {
                **self.catalog.items[int(train.item_idx[r])],
                "rating": float(train.rating[r]),
                "timestamp": int(train.timestamp[r]),
            }
            for r in rows
        ]
        return {"user_id": user_id, "k": k, "n_interactions": len(mine), "items": items}

    def users(self, k: int) -> dict[str, Any]:
        """The first ``k`` known user ids (by id), to pick from."""
        ids = np.sort(self.catalog.user_ids)[: check_k(k)]
        return {"n_users": self.catalog.n_users, "user_ids": ids.tolist()}

    def recommend_cold_start(self, request: ColdStartRequest | dict, k: int) -> dict[str, Any]:
        """Top-``k`` for a user outside the training data; liked items are excluded."""
        k = check_k(k)
        req = ColdStartRequest.model_validate(request)
        liked = self.catalog.item_indices(req.liked_item_ids)
        features = req.features
        described = features is not None and any(
            v is not None for v in (features.age, features.gender, features.occupation)
        )
        if not described and liked.size == 0:
            raise ServingError(
                422,
                "empty_user",
                "describe the user by features {age, gender, occupation} and/or liked_item_ids",
            )
        row = None
        if features is not None:
            occupations = self.recommender.features.occupations
            if features.occupation is not None and features.occupation not in occupations:
                raise ServingError(
                    422,
                    "unknown_occupation",
                    f"occupation {features.occupation!r} is not one of {list(occupations)}",
                )
            row = self.recommender.features.encode_user(
                features.age, features.gender, features.occupation
            )
        query = self.recommender.user_embedding_cold_start(row, liked)  # (D,)
        scores, items = self.index.search(query[None, :], k, exclude=[liked])
        return self._response(None, k, self.catalog.ranked_items(items[0], scores[0]))

    def similar_items(self, item_id: int, k: int) -> dict[str, Any]:
        """Nearest items to ``item_id`` by inner product of item embeddings, itself excluded."""
        k = check_k(k)
        idx = self.catalog.item_index(item_id)
        query = self.item_embeddings[idx : idx + 1]  # (1, D)
        scores, items = self.index.search(query, k, exclude=[np.array([idx])])
        return {
            "item_id": item_id,
            "title": self.catalog.items[idx]["title"],
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

    def _top_k(self, user_idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.knn.recommend(user_idx, k, exclude_seen=True)
