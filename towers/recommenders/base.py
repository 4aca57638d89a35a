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

from towers.data.interactions import Interactions
from towers.metrics.top_k import top_k_excluding


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
