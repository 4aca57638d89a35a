"""Seeded MovieLens-shaped feature tables for model and training tests (no files, no Ray)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from towers.data.features import FeatureTables
from towers.data.prepared import movielens_features

GENRES = ("a", "b", "c", "d")


def random_features(n_users: int, n_items: int, seed: int = 0) -> FeatureTables:
    """Users with an age, a gender and one of 4 occupations; items with 0-3 of 4 genres and a
    year; encoded as the MovieLens adapter's schema says."""
    return movielens_features(*random_tables(n_users, n_items, seed))


def random_tables(n_users: int, n_items: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``(users, items)`` frames behind :func:`random_features`."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_idx": np.arange(n_users),
            "age": rng.integers(10, 70, n_users),
            "gender": rng.choice(["M", "F"], n_users),
            "occupation": rng.choice(["w", "x", "y", "z"], n_users),
        }
    )
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items),
            "genres": [[g for g in GENRES if rng.random() < 0.3] for _ in range(n_items)],
            "year": rng.integers(1940, 2020, n_items),
        }
    )
    return users, items
