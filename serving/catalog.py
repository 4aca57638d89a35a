"""Raw ids ↔ indices and item display columns (:class:`Catalog`), and the error a request gets.

Every request method of ``serving.recommenders`` returns a JSON-ready ``dict`` or raises
:class:`ServingError` (a 4xx with an error code and a message); :func:`answer` turns either into
``(status, body)``, the shape that crosses a ``DeploymentHandle``, so no exception has to be
pickled between replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

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


def json_value(value: Any) -> Any:
    """A display cell as JSON: arrays to lists, NaN and NA to None, NumPy scalars to Python."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_value(v) for v in value]
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


class Catalog:
    """Raw ids ↔ indices and item display columns, aligned with ``data/users.parquet`` and
    ``data/items.parquet``. Ids are integers or strings, as the data set has them.

    Args:
        user_ids: ``(n_users,)`` raw user id of ``user_idx`` ``i``.
        item_ids: ``(n_items,)`` raw item id of ``item_idx`` ``i``.
        display: column name → ``n_items`` values shown with each item (title, genres, URL…).
    """

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        display: dict[str, Sequence[Any]] | None = None,
    ) -> None:
        display = display or {}
        for name, values in display.items():
            if len(values) != len(item_ids):
                raise ValueError(f"{len(item_ids)} items but {len(values)} {name!r} values")
        self.user_ids = np.asarray([json_value(u) for u in user_ids], dtype=object)
        self.item_ids = np.asarray([json_value(i) for i in item_ids], dtype=object)
        self._user_idx = {u: i for i, u in enumerate(self.user_ids)}
        self._item_idx = {v: i for i, v in enumerate(self.item_ids)}
        if len(self._user_idx) != len(user_ids) or len(self._item_idx) != len(item_ids):
            raise ValueError("user and item ids must be distinct")
        self.int_ids = {
            "user": all(isinstance(u, int) for u in self.user_ids),
            "item": all(isinstance(i, int) for i in self.item_ids),
        }
        # Built once: each response copies these dicts and adds a score.
        columns = {name: [json_value(v) for v in values] for name, values in display.items()}
        self.items = [
            {"item_id": item_id, **{name: values[i] for name, values in columns.items()}}
            for i, item_id in enumerate(self.item_ids)
        ]

    @classmethod
    def from_frames(
        cls, users: pd.DataFrame, items: pd.DataFrame, display: Sequence[str] = ()
    ) -> Catalog:
        """From the ``data/`` tables; their ``*_idx`` columns must be ``0..n-1`` in order."""
        for frame, name in ((users, "user_idx"), (items, "item_idx")):
            if not np.array_equal(frame[name].to_numpy(), np.arange(len(frame))):
                raise ValueError(f"data/: {name} is not 0..{len(frame) - 1} in row order")
        shown = {column: items[column].tolist() for column in display}
        return cls(users["user_id"].to_numpy(), items["item_id"].to_numpy(), shown)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def id_types(self) -> dict[str, str]:
        """``{"user": "integer"|"string", "item": ...}``: how this catalog's ids are written."""
        return {k: "integer" if v else "string" for k, v in self.int_ids.items()}

    def parse_id(self, raw: Any, side: str, strict: bool = False) -> Any:
        """A raw id as this catalog writes them; 422 when it cannot be. A path's text ``"42"``
        is the integer id 42; in a JSON body (``strict``) only a JSON integer is."""
        if self.int_ids[side]:
            if isinstance(raw, str) and not strict:
                try:
                    return int(raw)
                except ValueError:
                    pass
            elif isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            raise ServingError(
                422, "invalid_request", f"{side}_id must be an integer id, got {raw!r}"
            )
        if isinstance(raw, str):
            return raw
        raise ServingError(422, "invalid_request", f"{side}_id must be a string id, got {raw!r}")

    def user_index(self, user_id: Any) -> int:
        """Raises a 404 naming ``user_id`` when it is not in the training data."""
        idx = self._user_idx.get(self.parse_id(user_id, "user"))
        if idx is None:
            raise ServingError(
                404,
                "unknown_user",
                f"user_id {user_id} is not in the training data ({self.n_users} users); "
                "describe a new user with POST /recommend",
            )
        return idx

    def item_index(self, item_id: Any) -> int:
        idx = self._item_idx.get(self.parse_id(item_id, "item"))
        if idx is None:
            raise ServingError(
                404, "unknown_item", f"item_id {item_id} is not in the catalog ({self.n_items})"
            )
        return idx

    def find_user(self, user_id: Any) -> int | None:
        """The index of an already parsed raw user id, or None (events name users outside the
        training data)."""
        return self._user_idx.get(user_id)

    def find_item(self, item_id: Any) -> int | None:
        """The index of an already parsed raw item id, or None."""
        return self._item_idx.get(item_id)

    def item_indices(self, item_ids: Sequence[Any]) -> np.ndarray:
        """``(n,)`` distinct indices; a 422 listing the unknown ids if any."""
        parsed = [self.parse_id(i, "item", strict=True) for i in item_ids]
        unknown = sorted({i for i in parsed if i not in self._item_idx}, key=str)
        if unknown:
            raise ServingError(
                422,
                "unknown_item",
                f"liked_item_ids not in the catalog: {unknown[:10]}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            )
        return np.unique(np.array([self._item_idx[i] for i in parsed], dtype=np.int64))

    def ranked_items(self, item_idx: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """``[{item_id, <display columns>, score}]`` in order, padding (-1 / -inf) dropped."""
        return [
            {**self.items[i], "score": round(float(s), 6)}
            for i, s in zip(item_idx.tolist(), scores.tolist(), strict=True)
            if i >= 0 and np.isfinite(s)
        ]
