"""Prepared data: vocabularies, features and splits, written to and read from ``data/``.

Layout under the storage root::

    data/users.parquet              user_idx, user_id, [age, gender, occupation]
    data/items.parquet              item_idx, item_id, title, year, genres
    data/splits/<split>/{train,valid,test}.parquet   user_idx, item_idx, rating, timestamp
    data/manifest.json              counts, split settings, seed, source, schema version (last)

``train`` excludes the validation rows; models that are tuned on ``valid`` refit on
``train ∪ valid`` (:attr:`PreparedData.full_train`) before being scored on ``test``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from towers.data.features import FeatureTables, build_feature_tables
from towers.data.interactions import Interactions
from towers.data.raw import RawData
from towers.data.splits import split_interactions
from towers.data.validation import genre_count
from towers.storage.root import ArtifactError, Storage

log = logging.getLogger(__name__)
ARTIFACT = "data"
PARTS = ("train", "valid", "test")
DEFAULT_TEST_RATIO = {"random": 0.25, "temporal": 0.2}
USERS = f"{ARTIFACT}/users.parquet"
ITEMS = f"{ARTIFACT}/items.parquet"


def split_file(split: str, part: str) -> str:
    """Path under the storage root of one part (train, valid, test) of a prepared split."""
    return f"{ARTIFACT}/splits/{split}/{part}.parquet"


@dataclass
class PreparedData:
    """Everything a model needs from ``data/`` for one split."""

    users: pd.DataFrame
    items: pd.DataFrame
    train: Interactions
    valid: Interactions
    test: Interactions
    features: FeatureTables
    rating_scale: tuple[float, float]
    split: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def full_train(self) -> Interactions:
        """Train plus validation: what final models are fitted on."""
        return self.train.concat(self.valid)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def _index(ids: np.ndarray, vocab: np.ndarray, what: str) -> np.ndarray:
    """Raw ids → positions in the sorted ``vocab``; every id must be present."""
    pos = np.searchsorted(vocab, ids)
    pos = pos.clip(max=len(vocab) - 1)
    if not np.array_equal(vocab[pos], ids):
        raise ValueError(f"{what} ids missing from the vocabulary")
    return pos.astype(np.int64)


def _column(table: pd.DataFrame | pa.Table, name: str, dtype: type) -> np.ndarray:
    if isinstance(table, pa.Table):
        return table.column(name).to_numpy().astype(dtype, copy=False)
    return table[name].to_numpy(dtype)


def write_prepared(
    storage: Storage,
    raw: RawData,
    dataset: str,
    splits: list[str],
    seed: int = 42,
    valid_ratio: float = 0.1,
    drops: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds vocabularies and splits from validated ``raw`` data and publishes ``data/``.

    Returns:
        The published manifest.
    """
    items = raw.items.sort_values("item_id", kind="stable").reset_index(drop=True)
    users = raw.users.sort_values("user_id", kind="stable").reset_index(drop=True)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    users.insert(0, "user_idx", np.arange(len(users), dtype=np.int64))
    inter = raw.interactions  # a pandas frame, or a pyarrow Table for data past one frame
    user_idx = _index(_column(inter, "user_id", np.int64), users["user_id"].to_numpy(), "user")
    item_idx = _index(_column(inter, "item_id", np.int64), items["item_id"].to_numpy(), "item")
    rating = _column(inter, "rating", np.float32)
    ts = _column(inter, "timestamp", np.int64)

    storage.begin_artifact(ARTIFACT)
    storage.write_parquet(USERS, users)
    storage.write_parquet(ITEMS, items)
    split_counts = {}
    for kind in splits:
        parts = split_interactions(
            user_idx, item_idx, ts, kind, DEFAULT_TEST_RATIO[kind], valid_ratio, seed
        )
        split_counts[kind] = {}
        for part in PARTS:
            rows = getattr(parts, part)
            table = pa.table(
                {
                    "user_idx": user_idx[rows],
                    "item_idx": item_idx[rows],
                    "rating": rating[rows],
                    "timestamp": ts[rows],
                }
            )
            storage.write_parquet(split_file(kind, part), table)
            split_counts[kind][part] = len(rows)
    manifest = {
        "dataset": dataset,
        "source": raw.source,
        "seed": seed,
        "valid_ratio": valid_ratio,
        "test_ratio": {k: DEFAULT_TEST_RATIO[k] for k in splits},
        "splits": list(splits),
        "rating_scale": list(raw.rating_scale),
        "n_users": len(users),
        "n_items": len(items),
        "n_interactions": len(inter),
        "n_genres": genre_count(items),
        "split_counts": split_counts,
        "drops": drops or {},
        **(extra or {}),
    }
    return storage.publish(ARTIFACT, manifest)


def load_prepared(storage: Storage, split: str | None = None) -> PreparedData:
    """Reads ``data/`` for ``split`` (default: the first prepared split)."""
    # Sizes here; each file's digest is checked on the bytes read_parquet reads (read once).
    manifest = storage.read_manifest(ARTIFACT, checksums=False)
    split = split or manifest["splits"][0]
    if split not in manifest["splits"]:
        raise ArtifactError(
            f"{storage.uri}: split {split!r} was not prepared (have {manifest['splits']}); "
            f"rerun prepare with --split {split}"
        )
    users = storage.read_parquet(USERS, manifest=manifest)
    items = storage.read_parquet(ITEMS, manifest=manifest)
    items["genres"] = items["genres"].map(list)
    n_users, n_items = len(users), len(items)
    parts = {
        part: Interactions.from_frame(
            storage.read_parquet(split_file(split, part), manifest=manifest), n_users, n_items
        )
        for part in PARTS
    }
    return PreparedData(
        users=users,
        items=items,
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        features=build_feature_tables(users, items),
        rating_scale=tuple(manifest["rating_scale"]),  # type: ignore[arg-type]
        split=split,
        manifest=manifest,
    )


def read_catalog_tables(storage: Storage) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(users, items)`` id tables for serving: ``user_idx, user_id`` and ``item_idx, item_id,
    title, genres``, after checking ``data/``'s manifest."""
    manifest = storage.read_manifest(ARTIFACT, checksums=False)  # digests: in read_parquet
    users = storage.read_parquet(USERS, ["user_idx", "user_id"], manifest)
    items = storage.read_parquet(ITEMS, ["item_idx", "item_id", "title", "genres"], manifest)
    return users, items


def summary(manifest: dict[str, Any]) -> str:
    """A few human-readable lines about a prepared data set."""
    lines = [
        f"{manifest['dataset']}: {manifest['n_interactions']:,} ratings, "
        f"{manifest['n_users']:,} users, {manifest['n_items']:,} items, "
        f"{manifest['n_genres']} genres (source {manifest['source']})"
    ]
    for kind, counts in manifest["split_counts"].items():
        lines.append(
            f"  split {kind:<8} train {counts['train']:>9,}  valid {counts['valid']:>8,}  "
            f"test {counts['test']:>8,}"
        )
    if any(manifest.get("drops", {}).values()):
        lines.append(f"  dropped: {manifest['drops']}")
    return "\n".join(lines)
