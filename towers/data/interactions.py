"""The in-memory form of a user–item interaction log, indexed by contiguous ids.

Every model and metric in ``towers`` speaks in *indices*: ``user_idx`` in ``[0, n_users)`` and
``item_idx`` in ``[0, n_items)``. Raw MovieLens ids live only in the vocabularies (``users`` and
``items`` tables) and are mapped at the edges (prepare, serving).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

COLUMNS = ("user_idx", "item_idx", "rating", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """A set of (user, item, rating, timestamp) rows over a fixed user and item vocabulary.

    Attributes:
        user_idx: ``(N,)`` int64 contiguous user indices.
        item_idx: ``(N,)`` int64 contiguous item indices.
        rating: ``(N,)`` float32 ratings on the data set's own scale (1–5 for ML-100K).
        timestamp: ``(N,)`` int64 Unix seconds.
        n_users: size of the user vocabulary (not just the users present here).
        n_items: size of the item vocabulary.
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        n = len(self.user_idx)
        for name in ("item_idx", "rating", "timestamp"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Interactions: {name} has {len(getattr(self, name))} rows, user_idx has {n}"
                )
        if n and (self.user_idx.min() < 0 or self.user_idx.max() >= self.n_users):
            raise ValueError(f"Interactions: user_idx outside [0, {self.n_users})")
        if n and (self.item_idx.min() < 0 or self.item_idx.max() >= self.n_items):
            raise ValueError(f"Interactions: item_idx outside [0, {self.n_items})")

    def __len__(self) -> int:
        return len(self.user_idx)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, n_users: int, n_items: int) -> Interactions:
        """Builds from a frame with columns ``user_idx, item_idx, rating[, timestamp]``."""
        missing = [c for c in COLUMNS[:3] if c not in frame.columns]
        if missing:
            raise ValueError(f"Interactions.from_frame: missing columns {missing}")
        ts = frame["timestamp"] if "timestamp" in frame.columns else np.zeros(len(frame))
        return cls(
            user_idx=frame["user_idx"].to_numpy(np.int64),
            item_idx=frame["item_idx"].to_numpy(np.int64),
            rating=frame["rating"].to_numpy(np.float32),
            timestamp=np.asarray(ts, dtype=np.int64),
            n_users=int(n_users),
            n_items=int(n_items),
        )

    def to_arrays(self, prefix: str = "train_") -> dict[str, np.ndarray]:
        """The four columns as ``{prefix + column: array}`` (for ``np.savez``)."""
        return {prefix + column: getattr(self, column) for column in COLUMNS}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], n_users: int, n_items: int, prefix: str = "train_"
    ) -> Interactions:
        """Inverse of :meth:`to_arrays`."""
        return cls(
            user_idx=np.asarray(arrays[prefix + "user_idx"], np.int64),
            item_idx=np.asarray(arrays[prefix + "item_idx"], np.int64),
            rating=np.asarray(arrays[prefix + "rating"], np.float32),
            timestamp=np.asarray(arrays[prefix + "timestamp"], np.int64),
            n_users=int(n_users),
            n_items=int(n_items),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in COLUMNS})

    def to_csr(self, binary: bool = False) -> sp.csr_matrix:
        """Returns the ``(n_users, n_items)`` matrix of ratings (or 1s when ``binary``)."""
        values = np.ones(len(self), np.float32) if binary else self.rating.astype(np.float32)
        return sp.csr_matrix(
            (values, (self.user_idx, self.item_idx)), shape=(self.n_users, self.n_items)
        )

    def subset(self, mask: np.ndarray) -> Interactions:
        """Rows where ``mask`` is true, over the same vocabularies."""
        return Interactions(
            self.user_idx[mask],
            self.item_idx[mask],
            self.rating[mask],
            self.timestamp[mask],
            self.n_users,
            self.n_items,
        )

    def concat(self, other: Interactions) -> Interactions:
        """Rows of both; the vocabularies must match."""
        if (self.n_users, self.n_items) != (other.n_users, other.n_items):
            raise ValueError(
                f"cannot concat interactions over ({self.n_users}, {self.n_items}) and "
                f"({other.n_users}, {other.n_items}) vocabularies"
            )
        cat = np.concatenate
        return Interactions(
            cat([self.user_idx, other.user_idx]),
            cat([self.item_idx, other.item_idx]),
            cat([self.rating, other.rating]),
            cat([self.timestamp, other.timestamp]),
            self.n_users,
            self.n_items,
        )
