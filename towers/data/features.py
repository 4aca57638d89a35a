"""Feature tables for the towers: user demographics, item genres and release years, as indices.

Every categorical feature reserves index 0 for "unknown", so a cold-start user with no age or an
item with no year still maps to a valid embedding row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# MovieLens-1M's own age groups; ML-100K's exact ages fall into them too.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
# Release-year buckets: old films pooled, then decades, 1990s split (ML-100K is 1990s-heavy).
YEAR_EDGES = (1950, 1960, 1970, 1980, 1990, 1995, 2000, 2010, 2020)
GENDERS = ("M", "F")
NO_GENRE = "(no genres listed)"


def bucketize(values: pd.Series, edges: Sequence[int]) -> np.ndarray:
    """Maps numbers to ``1..len(edges)+1`` by ``edges``; missing values map to 0 (unknown)."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    out = np.searchsorted(np.asarray(edges, np.float64), numeric, side="right") + 1
    out[np.isnan(numeric)] = 0
    return out.astype(np.int64)


def normalize_ratings(rating: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Ratings on ``[lo, hi]`` → ``[0, 1]``, as the paper's binary cross-entropy target."""
    lo, hi = scale
    return ((np.asarray(rating, np.float32) - lo) / (hi - lo)).astype(np.float32)


def denormalize_ratings(value: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    lo, hi = scale
    return (np.asarray(value, np.float32) * (hi - lo) + lo).astype(np.float32)


@dataclass
class FeatureTables:
    """Per-user and per-item feature indices, aligned with ``user_idx``/``item_idx``.

    Attributes:
        user_features: ``(n_users, 3)`` int64 columns ``age_bucket, gender, occupation``.
        user_cardinalities: number of distinct values (incl. unknown 0) of each user column.
        item_genres: ``(n_items, G)`` float32 genre multi-hot.
        item_year_bucket: ``(n_items,)`` int64 release-year bucket (0 = unknown).
        n_year_buckets: number of year buckets incl. unknown.
        genre_names: the ``G`` genre names, column order of ``item_genres``.
        occupations: occupation names; index ``i + 1`` in ``user_features[:, 2]``.
    """

    user_features: np.ndarray
    user_cardinalities: tuple[int, int, int]
    item_genres: np.ndarray
    item_year_bucket: np.ndarray
    n_year_buckets: int
    genre_names: list[str]
    occupations: list[str] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return len(self.user_features)

    @property
    def n_items(self) -> int:
        return len(self.item_year_bucket)

    def encode_user(
        self, age: float | None = None, gender: str | None = None, occupation: str | None = None
    ) -> np.ndarray:
        """Feature row ``(3,)`` for a user described by raw values (cold start); unknown → 0."""
        age_b = int(bucketize(pd.Series([age], dtype="float64"), AGE_EDGES)[0])
        gender_i = GENDERS.index(gender) + 1 if gender in GENDERS else 0
        occ_i = self.occupations.index(occupation) + 1 if occupation in self.occupations else 0
        return np.array([age_b, gender_i, occ_i], np.int64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez``/safetensors; inverse of :meth:`from_arrays`."""
        return {
            "user_features": self.user_features,
            "user_cardinalities": np.asarray(self.user_cardinalities, np.int64),
            "item_genres": self.item_genres,
            "item_year_bucket": self.item_year_bucket,
            "n_year_buckets": np.asarray([self.n_year_buckets], np.int64),
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], genre_names: list[str], occupations: list[str]
    ) -> FeatureTables:
        return cls(
            user_features=np.asarray(arrays["user_features"], np.int64),
            user_cardinalities=tuple(int(x) for x in arrays["user_cardinalities"]),  # type: ignore[arg-type]
            item_genres=np.asarray(arrays["item_genres"], np.float32),
            item_year_bucket=np.asarray(arrays["item_year_bucket"], np.int64),
            n_year_buckets=int(np.asarray(arrays["n_year_buckets"]).reshape(-1)[0]),
            genre_names=list(genre_names),
            occupations=list(occupations),
        )


def build_feature_tables(users: pd.DataFrame, items: pd.DataFrame) -> FeatureTables:
    """Builds features from canonical ``users``/``items`` tables in ``user_idx``/``item_idx`` order.

    Args:
        users: columns ``user_idx`` and optionally ``age, gender, occupation``.
        items: columns ``item_idx, genres`` (list of names) and optionally ``year``.
    """
    n_users = len(users)
    if "user_idx" in users and not np.array_equal(users["user_idx"].to_numpy(), np.arange(n_users)):
        raise ValueError("users must be sorted by a contiguous user_idx 0..n-1")
    if "item_idx" in items and not np.array_equal(
        items["item_idx"].to_numpy(), np.arange(len(items))
    ):
        raise ValueError("items must be sorted by a contiguous item_idx 0..n-1")

    age = bucketize(users["age"], AGE_EDGES) if "age" in users else np.zeros(n_users, np.int64)
    if "gender" in users:
        gender = users["gender"].map({g: i + 1 for i, g in enumerate(GENDERS)}).fillna(0)
        gender = gender.to_numpy(np.int64)
    else:
        gender = np.zeros(n_users, np.int64)
    occupations: list[str] = []
    if "occupation" in users:
        occupations = sorted(users["occupation"].dropna().astype(str).unique().tolist())
        occ_map = {o: i + 1 for i, o in enumerate(occupations)}
        occupation = users["occupation"].map(occ_map).fillna(0).to_numpy(np.int64)
    else:
        occupation = np.zeros(n_users, np.int64)
    user_features = np.stack([age, gender, occupation], axis=1).astype(np.int64)

    genre_lists = items["genres"].tolist()
    genre_names = sorted({g for gs in genre_lists for g in gs if g != NO_GENRE})
    col = {g: j for j, g in enumerate(genre_names)}
    item_genres = np.zeros((len(items), len(genre_names)), np.float32)
    for i, gs in enumerate(genre_lists):
        for g in gs:
            if g in col:
                item_genres[i, col[g]] = 1.0
    year = items["year"] if "year" in items else pd.Series([None] * len(items), dtype="float64")
    return FeatureTables(
        user_features=user_features,
        user_cardinalities=(len(AGE_EDGES) + 2, len(GENDERS) + 1, len(occupations) + 1),
        item_genres=item_genres,
        item_year_bucket=bucketize(year, YEAR_EDGES),
        n_year_buckets=len(YEAR_EDGES) + 2,
        genre_names=genre_names,
        occupations=occupations,
    )
