"""Most-popular baseline: the same list for every user, ranked by training interactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from towers.data.interactions import Interactions
from towers.recommenders.base import Recommender
from towers.storage.formats import read_model_dir, write_model_dir


class PopularityRecommender(Recommender):
    """Ranks items by how many training interactions they have, the same list for every user.

    ``score(u)[i] = |{(v, i) in train}|``; ties go to the lower item index (``top_k_excluding``).
    """

    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self.item_counts_: np.ndarray | None = None  # (n_items,) float32

    def fit(self, train: Interactions) -> PopularityRecommender:
        self._set_train(train)
        counts = np.bincount(train.item_idx, minlength=train.n_items)
        self.item_counts_ = counts.astype(np.float32)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` user indices → ``(U, n_items)`` float32 interaction counts."""
        user_idx = self.check_users(user_idx)
        assert self.item_counts_ is not None
        return np.broadcast_to(self.item_counts_, (len(user_idx), self.n_items)).copy()

    def save(self, path: str | Path) -> None:
        train = self._require_fitted()
        config = {"n_users": train.n_users, "n_items": train.n_items}
        write_model_dir(path, self.name, config, train.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> PopularityRecommender:
        config, arrays = read_model_dir(path, cls.name)
        train = Interactions.from_arrays(arrays, config["n_users"], config["n_items"])
        return cls().fit(train)
