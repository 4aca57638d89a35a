"""Feature encoders fitted on the users and items tables, and the encoded tables the towers read.

Each declared :class:`~towers.data.schema.Feature` is fitted once (vocabulary, statistics) and
encodes a column into one of three model inputs, so the model never sees a data set's kinds:

- ``index`` ``(n,)`` int64 — categorical, bucketised numeric. 0 is reserved for unknown, rare
  (below ``min_count``) and missing values, so a cold-start user always maps to a valid row.
- ``bag`` CSR ``values (nnz,)`` / ``offsets (n + 1,)`` — multi-valued categorical (0 = unknown
  value) and text (lower-cased word tokens hashed into ``buckets``; no model download).
- ``dense`` ``(n, w)`` float32 — numeric (standardised on the table, then a missing flag:
  ``w = 2``) and fixed-width vectors (missing rows are zeros plus a flag: ``w = dim + 1``).

The fitted encoders are plain JSON (``to_dict``) stored in ``data/`` and in every model, so a
checkpoint encodes a new user or item without the training data.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from towers.data.errors import DataError
from towers.data.schema import MAX_PROFILE_VOCABULARY, EntityTable, Feature

INPUT_KINDS = ("index", "bag", "dense")
_TOKEN = re.compile(r"\w+", re.UNICODE)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return value is pd.NA or value is pd.NaT


def _values(value: Any) -> list:
    """A multi-valued cell as a list (lists, tuples and arrays pass; missing is empty)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [v for v in value if not _missing(v)]
    return [] if _missing(value) else [value]


def tokens(text: Any, max_tokens: int) -> list[str]:
    """Lower-cased word tokens of ``text`` (the first ``max_tokens``)."""
    if _missing(text):
        return []
    return _TOKEN.findall(str(text).lower())[:max_tokens]


def hash_token(token: str, buckets: int) -> int:
    """A stable bucket ``1..buckets`` (CRC-32: the same across processes and Python versions)."""
    return zlib.crc32(token.encode()) % buckets + 1


@dataclass
class FittedFeature:
    """A feature with what was learned from its table: vocabulary or statistics."""

    feature: Feature
    vocabulary: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @property
    def name(self) -> str:
        return self.feature.name

    @property
    def input_kind(self) -> str:
        f = self.feature
        if f.is_categorical:
            return "index"
        return "bag" if f.kind in ("multi_categorical", "text") else "dense"

    @property
    def size(self) -> int:
        """Rows of the embedding table (index, bag) or input width (dense)."""
        f = self.feature
        if f.kind == "numeric" and f.boundaries:
            return len(f.boundaries) + 2  # 0 missing, 1 below the first edge, ...
        if f.kind in ("categorical", "multi_categorical"):
            return len(self.vocabulary) + 1
        if f.kind == "text":
            return f.buckets + 1
        return 2 if f.kind == "numeric" else int(f.dim or 0) + 1

    @property
    def profiled(self) -> bool:
        """Whether the user tower pools this (item) feature over the user's history."""
        if self.input_kind == "dense" or self.feature.kind == "text":
            return False
        if self.feature.profile is not None:
            return self.feature.profile
        return self.size - 1 <= MAX_PROFILE_VOCABULARY

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.feature.to_dict(),
            "vocabulary": self.vocabulary,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FittedFeature:
        values = dict(values)
        fitted = {k: values.pop(k) for k in ("vocabulary", "mean", "std") if k in values}
        return cls(Feature(**values), **fitted)

    def check(self, value: Any) -> None:
        """Raises ``DataError`` naming the feature when ``value`` (one described row's raw
        value, e.g. from an HTTP body) is not of its kind; None is always "unknown"."""
        f = self.feature
        if value is None:
            return
        scalar = (str, int, float)
        if f.kind == "numeric":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = "a number"
        elif f.kind == "text":
            ok, expected = isinstance(value, str), "a string"
        elif f.kind == "vector":
            ok = isinstance(value, list) and len(value) == f.dim
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            expected = f"a list of {f.dim} numbers"
        else:
            cells = value if f.kind == "multi_categorical" else [value]
            ok = isinstance(value, list) if f.kind == "multi_categorical" else True
            ok = ok and all(isinstance(c, scalar) and not isinstance(c, bool) for c in cells)
            expected = "a list of values" if f.kind == "multi_categorical" else "a value"
            known = set(self.vocabulary)
            unknown = [c for c in cells if ok and str(c) not in known]
            if ok and unknown:
                shown = self.vocabulary[:20] + (["..."] if len(self.vocabulary) > 20 else [])
                raise DataError(f"{self.name}: {unknown[0]!r} is not a known value ({shown})")
        if not ok:
            raise DataError(f"{self.name}: must be {expected}, got {value!r}")

    def _index(self, cells: Iterable[Any]) -> np.ndarray:
        lookup = {v: i + 1 for i, v in enumerate(self.vocabulary)}
        return np.fromiter((0 if _missing(c) else lookup.get(str(c), 0) for c in cells), np.int64)

    def encode(self, column: pd.Series) -> dict[str, np.ndarray]:
        """``{name: array}`` (index, dense) or ``{name: values, name + ':offsets': offsets}``."""
        f, name = self.feature, self.name
        if f.kind == "numeric" and f.boundaries:
            numeric = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
            out = np.searchsorted(np.asarray(f.boundaries), numeric, side="right") + 1
            out[np.isnan(numeric)] = 0
            return {name: out.astype(np.int64)}
        if f.kind == "categorical":
            return {name: self._index(column)}
        if f.kind == "numeric":
            numeric = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
            missing = np.isnan(numeric)
            z = np.where(missing, 0.0, (numeric - self.mean) / self.std)
            return {name: np.stack([z, missing], axis=1).astype(np.float32)}
        if f.kind == "vector":
            dim = int(f.dim or 0)
            out = np.zeros((len(column), dim + 1), np.float32)
            for row, cell in enumerate(column):
                if isinstance(cell, (list, tuple, np.ndarray)) and len(cell) == dim:
                    out[row, :dim] = np.asarray(cell, np.float32)
                else:
                    out[row, dim] = 1.0
            return {name: out}
        if f.kind == "multi_categorical":
            bags = [self._index(_values(c)) for c in column]
        else:
            bags = [
                np.asarray([hash_token(t, f.buckets) for t in tokens(c, f.max_tokens)], np.int64)
                for c in column
            ]
        lengths = np.fromiter((len(b) for b in bags), np.int64, len(bags))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate(bags).astype(np.int64) if bags else np.zeros(0, np.int64)
        return {name: values, f"{name}:offsets": offsets}


def fit_feature(feature: Feature, column: pd.Series) -> FittedFeature:
    """Learns ``feature``'s vocabulary (values seen ``min_count`` times) or mean and std."""
    if feature.kind in ("categorical", "multi_categorical"):
        if feature.kind == "categorical":
            cells: Iterable[Any] = column
        else:
            cells = (v for c in column for v in _values(c))
        counts = Counter(str(v) for v in cells if not _missing(v))
        vocabulary = sorted(v for v, n in counts.items() if n >= feature.min_count)
        return FittedFeature(feature, vocabulary=vocabulary)
    if feature.kind == "numeric" and not feature.boundaries:
        numeric = pd.to_numeric(column, errors="coerce").dropna().to_numpy(np.float64)
        mean = float(numeric.mean()) if len(numeric) else 0.0
        std = float(numeric.std()) if len(numeric) else 1.0
        return FittedFeature(feature, mean=mean, std=std if std > 0 else 1.0)
    return FittedFeature(feature)


@dataclass
class EncodedTable:
    """One side's fitted features and their encoded arrays, rows aligned with ``user_idx`` or
    ``item_idx``."""

    features: list[FittedFeature]
    arrays: dict[str, np.ndarray]
    n_rows: int

    @classmethod
    def build(cls, fitted: list[FittedFeature], table: pd.DataFrame) -> EncodedTable:
        arrays: dict[str, np.ndarray] = {}
        for f in fitted:
            arrays.update(f.encode(table[f.name]))
        return cls(fitted, arrays, len(table))

    def feature(self, name: str) -> FittedFeature:
        return next(f for f in self.features if f.name == name)

    def inputs(self) -> tuple[tuple[str, str, int], ...]:
        """``(name, input kind, size)`` of each feature: what the model is built from."""
        return tuple((f.name, f.input_kind, f.size) for f in self.features)

    def encode_one(self, values: Mapping[str, Any], side: str) -> dict[str, np.ndarray]:
        """Encodes one described row (cold start); a name not in the schema, a value of the
        wrong kind or a categorical value outside the vocabulary is a ``DataError``."""
        known = {f.name: f for f in self.features}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DataError(
                f"{side} features {unknown} are not in the schema (known: {sorted(known)})"
            )
        out: dict[str, np.ndarray] = {}
        for name, f in known.items():
            f.check(values.get(name))
            out.update(f.encode(pd.Series([values.get(name)], dtype=object)))
        return out


def fit_table(entity: EntityTable | None, table: pd.DataFrame) -> list[FittedFeature]:
    """Fits every declared feature of ``entity`` on ``table`` (feature columns named by feature)."""
    if entity is None:
        return []
    return [fit_feature(f, table[f.name]) for f in entity.features]


@dataclass
class FeatureTables:
    """Encoded user and item features, aligned with ``user_idx`` / ``item_idx``."""

    users: EncodedTable
    items: EncodedTable

    @property
    def n_users(self) -> int:
        return self.users.n_rows

    @property
    def n_items(self) -> int:
        return self.items.n_rows

    def item_profiles(self) -> tuple[tuple[str, int], ...]:
        """``(name, width)`` of the item features pooled over a user's history."""
        return tuple((f.name, f.size - 1) for f in self.items.features if f.profiled)

    def encode_user(self, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.users.encode_one(values, "user")

    def fitted_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {
            side: [f.to_dict() for f in getattr(self, side).features] for side in ("users", "items")
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (keys ``users/…``, ``items/…``); see :meth:`load`."""
        out = {"n_users": np.asarray([self.n_users]), "n_items": np.asarray([self.n_items])}
        for side in ("users", "items"):
            out.update({f"{side}/{k}": v for k, v in getattr(self, side).arrays.items()})
        return out

    @classmethod
    def load(cls, fitted: Mapping[str, list], arrays: Mapping[str, np.ndarray]) -> FeatureTables:
        """Inverse of ``fitted_dict`` + ``to_arrays``."""
        sides = {}
        for side in ("users", "items"):
            prefix = f"{side}/"
            sides[side] = EncodedTable(
                [FittedFeature.from_dict(v) for v in fitted[side]],
                {
                    k[len(prefix) :]: np.asarray(v)
                    for k, v in arrays.items()
                    if k.startswith(prefix)
                },
                int(np.asarray(arrays[f"n_{side}"]).reshape(-1)[0]),
            )
        return cls(**sides)


def build_feature_tables(
    users: pd.DataFrame,
    items: pd.DataFrame,
    fitted: Mapping[str, list[FittedFeature]],
) -> FeatureTables:
    """Encodes ``users``/``items`` (sorted by a contiguous ``user_idx``/``item_idx``)."""
    for name, table in (("user", users), ("item", items)):
        key = f"{name}_idx"
        if key in table and not np.array_equal(table[key].to_numpy(), np.arange(len(table))):
            raise ValueError(f"{name}s must be sorted by a contiguous {key} 0..n-1")
    return FeatureTables(
        users=EncodedTable.build(list(fitted["users"]), users),
        items=EncodedTable.build(list(fitted["items"]), items),
    )


def normalize_ratings(rating: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Ratings on ``[lo, hi]`` → ``[0, 1]``, as the paper's binary cross-entropy target."""
    lo, hi = scale
    return ((np.asarray(rating, np.float32) - lo) / (hi - lo)).astype(np.float32)


def denormalize_ratings(value: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    lo, hi = scale
    return (np.asarray(value, np.float32) * (hi - lo) + lo).astype(np.float32)
