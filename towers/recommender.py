"""One interface for every recommender (two-tower, UserKNN, popularity).

After benfred/implicit and LensKit: ``fit`` on training interactions, ``recommend(user_idx, k,
exclude_seen)`` returning ``(item_idx, scores)`` for a batch of users (a single user is a batch of
one, on the same code path), ``predict_ratings`` for rating metrics, and ``save``/``load``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from towers.interactions import Interactions


def top_k_excluding(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns of each row of ``scores``, skipping the nonzeros of ``exclude``.

    Args:
        scores: ``(U, I)`` float scores; higher is better. Modified in place where excluded.
        k: number of items per row.
        exclude: ``(U, I)`` sparse mask of items never to return (e.g. already seen), or None.

    Returns:
        ``(item_idx, scores)``, both ``(U, min(k, I))``, sorted by descending score (ties broken by
        lower item index). Where fewer than ``k`` items are allowed, the tail is padded with
        item ``-1`` and score ``-inf``.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (U, I), got shape {scores.shape}")
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if exclude is not None and exclude.nnz:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude shape {exclude.shape} != scores shape {scores.shape}")
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Stable order: by score descending, then item index ascending (lexsort's last key is primary).
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top = np.take_along_axis(part_scores, order, axis=1)
    items[~np.isfinite(top)] = -1
    return items, top


class Recommender(ABC):
    """Base class: subclasses implement ``fit``, ``score`` and persistence.

    ``recommend`` is shared so that every model excludes seen items and breaks ties the same way.
    """

    #: Short stable name used in reports and the HTTP API.
    name: str = "recommender"

    def __init__(self) -> None:
        self.train_: Interactions | None = None
        self._seen: sp.csr_matrix | None = None

    @property
    def n_users(self) -> int:
        return self._require_fitted().n_users

    @property
    def n_items(self) -> int:
        return self._require_fitted().n_items

    def _require_fitted(self) -> Interactions:
        if self.train_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load() first")
        return self.train_

    def _set_train(self, train: Interactions) -> None:
        self.train_ = train
        self._seen = train.to_csr(binary=True)

    def seen_matrix(self) -> sp.csr_matrix:
        """``(n_users, n_items)`` 0/1 matrix of training interactions."""
        self._require_fitted()
        assert self._seen is not None
        return self._seen

    def check_users(self, user_idx: np.ndarray) -> np.ndarray:
        """Validates a batch of user indices; raises ``KeyError`` naming the unknown ones."""
        user_idx = np.asarray(user_idx, dtype=np.int64).reshape(-1)
        bad = user_idx[(user_idx < 0) | (user_idx >= self.n_users)]
        if bad.size:
            raise KeyError(f"unknown user index {bad[:5].tolist()} (known: 0..{self.n_users - 1})")
        return user_idx

    @abstractmethod
    def fit(self, train: Interactions) -> Recommender:
        """Fits on training interactions and returns self."""

    @abstractmethod
    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` user indices → ``(U, n_items)`` float32 scores, higher is better."""

    def recommend(
        self, user_idx: np.ndarray, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each user.

        Args:
            user_idx: ``(U,)`` user indices (a scalar is treated as one user).
            k: items per user.
            exclude_seen: drop items the user interacted with in training.

        Returns:
            ``(item_idx, scores)``, each ``(U, min(k, n_items))``, padded with ``-1``/``-inf``.
        """
        user_idx = self.check_users(user_idx)
        if user_idx.size == 0:
            k_eff = min(k, self.n_items)
            return np.empty((0, k_eff), np.int64), np.empty((0, k_eff), np.float32)
        scores = self.score(user_idx)
        exclude = self.seen_matrix()[user_idx] if exclude_seen else None
        return top_k_excluding(scores, k, exclude)

    def predict_ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings, on the data set's scale, for ``(N,)`` pairs (not every model)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict ratings")

    @property
    def predicts_ratings(self) -> bool:
        return type(self).predict_ratings is not Recommender.predict_ratings

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Writes the fitted model under directory ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Recommender:
        """Reads a model written by ``save``."""
