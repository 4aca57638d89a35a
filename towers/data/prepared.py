"""Prepared data: vocabularies, features and splits, written to and read from ``data/``.

Layout under the storage root::

    data/users.parquet              user_idx, user_id, one column per user feature
    data/items.parquet              item_idx, item_id, one column per item feature / display column
    data/schema.json                the data set's schema (towers.data.schema), canonical names
    data/source_schema.json         the schema as your files name the columns (files only)
    data/features.json              the fitted encoders: vocabularies, statistics
    data/splits/<split>/{train,valid,test}.parquet   user_idx, item_idx, rating, timestamp
                                    (<split>: random, temporal, leave-one-out, or given:
                                    the data's own parts)
    data/manifest.json              counts, split settings, seed, source, schema version (last)

Ids keep their type (integer or string); ``user_idx``/``item_idx`` are positions in the sorted
ids. Implicit data sets store each row's weight (1.0 by default) as its ``rating``.

``train`` excludes the validation rows; models that are tuned on ``valid`` refit on
``train ∪ valid`` (:attr:`PreparedData.full_train`) before being scored on ``test``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from towers.data.features import FeatureTables, FittedFeature, build_feature_tables, fit_table
from towers.data.interactions import Interactions
from towers.data.movielens import movielens_schema
from towers.data.raw import DataError, RawData
from towers.data.schema import Schema
from towers.data.splits import (
    LEAVE_ONE_OUT,
    LOO_MIN_INTERACTIONS,
    PARTS,
    SplitIndices,
    leave_one_out,
    split_given,
    split_interactions,
)
from towers.storage.root import ArtifactError, Storage

log = logging.getLogger(__name__)
ARTIFACT = "data"
DEFAULT_TEST_RATIO = {"random": 0.25, "temporal": 0.2}  # given: the data's own test part
USERS = f"{ARTIFACT}/users.parquet"
ITEMS = f"{ARTIFACT}/items.parquet"
SCHEMA = f"{ARTIFACT}/schema.json"
SOURCE_SCHEMA = f"{ARTIFACT}/source_schema.json"  # your files' own column names
FEATURES = f"{ARTIFACT}/features.json"


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
    schema: Schema = field(default_factory=Schema)

    @property
    def has_ratings(self) -> bool:
        """Explicit ratings (rating metrics apply); False for implicit feedback."""
        return not self.schema.implicit

    @property
    def time_ordered(self) -> bool:
        """The held-out parts are each user's latest interactions: the ``temporal`` and
        ``leave-one-out`` splits, or a given split whose data has timestamps (validation then
        carved as each user's latest).
        A model for such data should weigh recent interests (``history_decay``); under the
        ``random`` split the held-out items are a random draw, and recency tells nothing."""
        if self.split not in ("temporal", LEAVE_ONE_OUT, "given"):
            return False
        stamps = self.train.timestamp
        return bool(len(stamps) and stamps.min() != stamps.max())

    @property
    def next_item(self) -> bool:
        """The held-out part is each user's next interaction (the ``leave-one-out`` split):
        what a sequence user tower is trained to predict."""
        return self.split == LEAVE_ONE_OUT

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


def _index(ids: np.ndarray, vocab: pd.Index, what: str) -> np.ndarray:
    """Raw ids (integer or string) → positions in ``vocab``; every id must be present."""
    pos = vocab.get_indexer(ids)
    if (pos < 0).any():
        raise ValueError(f"{what} ids missing from the vocabulary, e.g. {ids[pos < 0][:3]}")
    return pos.astype(np.int64)


def _column(table: pd.DataFrame | pa.Table, name: str, dtype: type | None = None) -> np.ndarray:
    if isinstance(table, pa.Table):
        values = table.column(name).to_numpy()
    else:
        values = table[name].to_numpy()
    return values if dtype is None else values.astype(dtype, copy=False)


def _read_json(storage: Storage, rel: str, manifest: dict[str, Any]) -> Any:
    """A JSON file of ``data/``, checked against ``manifest`` on the bytes read."""
    return json.loads(storage.read_checked(rel, manifest))


def fit_features(
    schema: Schema, users: pd.DataFrame, items: pd.DataFrame
) -> dict[str, list[FittedFeature]]:
    """Fits the schema's encoders on the (whole) users and items tables."""
    return {"users": fit_table(schema.users, users), "items": fit_table(schema.items, items)}


def movielens_features(users: pd.DataFrame, items: pd.DataFrame) -> FeatureTables:
    """Feature tables of MovieLens-shaped ``users``/``items`` (tests, benchmarks)."""
    fitted = fit_features(movielens_schema(list(users.columns)), users, items)
    return build_feature_tables(users, items, fitted)


def _split(
    kind: str,
    inter: pd.DataFrame | pa.Table,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    ts: np.ndarray,
    timed: bool,
    valid_ratio: float,
    seed: int,
    source: str,
) -> SplitIndices:
    """One split's row positions; ``given`` reads the interactions' ``part`` column."""
    if kind == LEAVE_ONE_OUT:
        try:
            parts, short_users = leave_one_out(user_idx, ts, with_valid=valid_ratio > 0)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
        if short_users:
            log.info(
                "leave-one-out: %d users with fewer than %d interactions stay in train only",
                short_users,
                LOO_MIN_INTERACTIONS,
            )
        return parts
    if kind != "given":
        return split_interactions(
            user_idx, item_idx, ts, kind, DEFAULT_TEST_RATIO[kind], valid_ratio, seed
        )
    has_parts = "part" in (inter.column_names if isinstance(inter, pa.Table) else inter.columns)
    if not has_parts:
        raise DataError(
            f"{source}: the given split needs each row's part, and these data give none (name "
            "the part column in the schema, interactions.part, or give --test-interactions)"
        )
    return split_given(user_idx, ts, _column(inter, "part", np.int8), valid_ratio, seed, timed)


def given_validation(manifest: dict[str, Any]) -> str:
    """How the given split's validation part came about, in words (for manifests and logs)."""
    counts = manifest["split_counts"].get("given", {})
    if manifest.get("given_valid") == "given":
        return "the data's own validation part"
    if not counts.get("valid"):
        return "none (--valid-ratio 0)"
    how = "each user's latest" if manifest.get("given_valid") == "latest" else "a seeded draw of"
    return (
        f"carved out of train: {how} {manifest['valid_ratio']:.0%} of each user's training rows"
        + ("" if manifest.get("given_valid") == "latest" else f" (seed {manifest['seed'] + 1})")
    )


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
    schema = raw.schema or movielens_schema(list(raw.users.columns), raw.rating_scale)
    for kind in {"temporal", LEAVE_ONE_OUT} & set(splits):
        if schema.interactions.timestamp is None:
            raise DataError(
                f"{raw.source}: the {kind} split needs each user's interactions in time order "
                "and the schema names no timestamp (interactions.timestamp), so there is none "
                "to read (file order is not taken for time). Add the timestamp column (where "
                "the file lists each user's items oldest first, a column of their positions "
                "will do: docs/YOUR_DATA.md), or prepare --split random"
            )
    items = raw.items.sort_values("item_id", kind="stable").reset_index(drop=True)
    users = raw.users.sort_values("user_id", kind="stable").reset_index(drop=True)
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    users.insert(0, "user_idx", np.arange(len(users), dtype=np.int64))
    inter = raw.interactions  # a pandas frame, or a pyarrow Table for data past one frame
    user_idx = _index(_column(inter, "user_id"), pd.Index(users["user_id"]), "user")
    item_idx = _index(_column(inter, "item_id"), pd.Index(items["item_id"]), "item")
    rating = _column(inter, "rating", np.float32)
    ts = _column(inter, "timestamp", np.int64)
    fitted = fit_features(schema, users, items)
    timed = schema.interactions.timestamp is not None
    # Every split before the first write: bad input fails with data/ as it was.
    split_rows = {
        kind: _split(kind, inter, user_idx, item_idx, ts, timed, valid_ratio, seed, raw.source)
        for kind in splits
    }

    storage.begin_artifact(ARTIFACT)
    storage.write_parquet(USERS, users)
    storage.write_parquet(ITEMS, items)
    storage.write_json(SCHEMA, schema.to_dict())
    if raw.source_schema is not None:
        storage.write_json(SOURCE_SCHEMA, raw.source_schema.to_dict())
    storage.write_json(FEATURES, {side: [f.to_dict() for f in fs] for side, fs in fitted.items()})
    split_counts = {}
    for kind, parts in split_rows.items():
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
        "test_ratio": {k: DEFAULT_TEST_RATIO.get(k) for k in splits},
        "splits": list(splits),
        "rating_scale": list(raw.rating_scale),
        "n_users": len(users),
        "n_items": len(items),
        "n_interactions": len(inter),
        "implicit": schema.implicit,
        "features": {side: [f.name for f in fs] for side, fs in fitted.items()},
        "split_counts": split_counts,
        "drops": drops or {},
        **(extra or {}),
    }
    if LEAVE_ONE_OUT in splits:  # users too short for a test and a validation row
        counts = np.bincount(user_idx, minlength=len(users))
        short = int(((counts > 0) & (counts < LOO_MIN_INTERACTIONS)).sum())
        manifest["leave_one_out_short_users"] = short
    if "given" in splits:  # the validation part: given, or carved per user (latest or drawn)
        given_valid = np.any(_column(inter, "part", np.int8) == PARTS.index("valid"))
        manifest["given_valid"] = "given" if given_valid else "latest" if timed else "random"
        manifest["given_popularity"] = part_popularity(item_idx, split_rows["given"], len(items))
    return storage.publish(ARTIFACT, manifest)


def part_popularity(item_idx: np.ndarray, parts: SplitIndices, n_items: int) -> dict[str, float]:
    """Each part's mean item popularity: over its rows, the training users of the row's item.

    A given split's test part need not be drawn like a part carved out of its train (the
    LightGCN Gowalla split's test leans to popular items: 81.9 against 67.2 for its validation
    part), and settings chosen on validation then need not carry to the test (docs/QUALITY.md).
    """
    degree = np.bincount(item_idx[parts.train], minlength=n_items)
    return {
        part: round(float(degree[item_idx[getattr(parts, part)]].mean()), 1)
        for part in PARTS
        if len(getattr(parts, part))
    }


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
    schema = Schema.from_dict(_read_json(storage, SCHEMA, manifest), f"{storage.uri}/{SCHEMA}")
    fitted = {
        side: [FittedFeature.from_dict(f) for f in fs]
        for side, fs in _read_json(storage, FEATURES, manifest).items()
    }
    for table in (users, items):  # Parquet lists come back as arrays
        for column in table.columns:
            if len(table) and isinstance(table[column].iloc[0], np.ndarray):
                table[column] = table[column].map(list)
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
        features=build_feature_tables(users, items, fitted),
        rating_scale=tuple(manifest["rating_scale"]),  # type: ignore[arg-type]
        split=split,
        manifest=manifest,
        schema=schema,
    )


def read_catalog_tables(storage: Storage) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(users, items, display)`` for serving: ``user_idx, user_id``; ``item_idx, item_id`` and
    the schema's display columns (``display``), after checking ``data/``'s manifest."""
    manifest = storage.read_manifest(ARTIFACT, checksums=False)  # digests: checked on read
    schema = Schema.from_dict(_read_json(storage, SCHEMA, manifest), f"{storage.uri}/{SCHEMA}")
    display = list(schema.items.display) if schema.items is not None else []
    users = storage.read_parquet(USERS, ["user_idx", "user_id"], manifest)
    items = storage.read_parquet(ITEMS, ["item_idx", "item_id", *display], manifest)
    return users, items, display


def read_source_schema(storage: Storage) -> Schema:
    """The schema as the data set's own files name their columns (prepared from files)."""
    if not storage.exists(SOURCE_SCHEMA):
        raise ArtifactError(
            f"{storage.uri}/{ARTIFACT} was not prepared from your own files (no "
            f"{SOURCE_SCHEMA}): a new items table needs the schema it was read with"
        )
    return Schema.from_dict(storage.read_json(SOURCE_SCHEMA), f"{storage.uri}/{SOURCE_SCHEMA}")


def summary(manifest: dict[str, Any]) -> str:
    """A few human-readable lines about a prepared data set."""
    lines = [
        f"{manifest['dataset']}: {manifest['n_interactions']:,} "
        f"{'interactions (implicit)' if manifest.get('implicit') else 'ratings'}, "
        f"{manifest['n_users']:,} users, {manifest['n_items']:,} items "
        f"(source {manifest['source']})"
    ]
    for side, names in manifest.get("features", {}).items():
        lines.append(f"  {side} features: {', '.join(names) or '(none)'}")
    for kind, counts in manifest["split_counts"].items():
        lines.append(
            f"  split {kind:<8} train {counts['train']:>9,}  valid {counts['valid']:>8,}  "
            f"test {counts['test']:>8,}"
        )
    if manifest.get("leave_one_out_short_users"):
        lines.append(
            f"  leave-one-out: {manifest['leave_one_out_short_users']:,} users with fewer than "
            f"{LOO_MIN_INTERACTIONS} interactions stay in train only"
        )
    if "given" in manifest["split_counts"]:
        lines.append(f"  given split's validation: {given_validation(manifest)}")
    if manifest.get("given_popularity"):  # manifests before it have none
        shown = ", ".join(f"{p} {v:,.1f}" for p, v in manifest["given_popularity"].items())
        lines.append(f"  given split's items, mean training users of a row's item: {shown}")
    if any(manifest.get("drops", {}).values()):
        lines.append(f"  dropped: {manifest['drops']}")
    return "\n".join(lines)
