"""Folding recorded events into ``data/``: the interactions since the last fold join the train
part of every prepared split, and ``data/`` is replaced whole.

``POST /events`` stores interactions in the event log (``towers.storage.events``) with raw ids;
``ray_jobs.pipeline --update`` reads those after ``data/``'s ``events_seq`` (the last event
folded; 0 or absent: none yet) and calls :func:`fold_events`:

- users first seen through events join the users table (their features unknown) and the user
  vocabulary grows; ``user_idx`` stays the position in the sorted ids, so the split files are
  rewritten with the new positions (a warm start maps rows by raw id, not position);
- an event's latest (user, item) pair is appended to ``train``, or replaces the rating and time
  of that pair already there; a pair in ``valid`` or ``test`` stays held out (counted);
- an item ``data/`` lacks (added to a served index by ``build_index --items``: its features are
  not in ``data/``) is a counted drop; those events stay in the log;
- the fitted encoders (``features.json``) are kept: the model's feature inputs do not change.

Everything is computed before the first write. A local ``data/`` is written complete beside the
storage root's ``data/`` and renamed into place (the previous one is deleted after); on object
storage the files are rewritten and the manifest published last (readers refuse ``data/`` until
it is, as during ``prepare``).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from towers.data import prepared
from towers.data.events import events_frame
from towers.data.splits import PARTS
from towers.storage.events import StoredEvent
from towers.storage.root import MANIFEST, Storage

EVENTS_SEQ = "events_seq"  # data/ manifest: the last event folded in
# Manifest fields that publish() writes itself.
_OWN_FIELDS = ("files", "sha256", "created_at", "schema_version", "artifact")
# data/'s files a fold copies unchanged.
_KEPT = (prepared.ITEMS, prepared.SCHEMA, prepared.SOURCE_SCHEMA, prepared.FEATURES)


def folded_seq(storage: Storage) -> int:
    """The ``seq`` of the last event folded into ``storage``'s ``data/`` (0: none)."""
    return int(storage.read_manifest(prepared.ARTIFACT, checksums=False).get(EVENTS_SEQ, 0))


def fold_events(storage: Storage, events: Sequence[StoredEvent]) -> dict[str, Any] | None:
    """Appends the events after ``data/``'s ``events_seq`` to every split's train part.

    Returns:
        The new ``data/`` manifest (its ``fold`` field counts what happened), or None when no
        event is newer than the last fold.
    """
    manifest = storage.read_manifest(prepared.ARTIFACT)
    events = [e for e in events if e.seq > int(manifest.get(EVENTS_SEQ, 0))]
    if not events:
        return None
    users = storage.read_parquet(prepared.USERS, manifest=manifest)
    items = storage.read_parquet(prepared.ITEMS, ["item_idx", "item_id"], manifest)
    frame = events_frame(events).drop_duplicates(["user_id", "item_id"], keep="last")
    item_idx = pd.Index(items["item_id"]).get_indexer(frame["item_id"])
    unknown_items = int((item_idx < 0).sum())
    frame = frame[item_idx >= 0].assign(item_idx=item_idx[item_idx >= 0])

    # The grown user vocabulary, sorted as prepare sorts it; old positions -> new positions.
    new_ids = pd.Index(frame["user_id"].unique()).difference(pd.Index(users["user_id"]))
    grown = pd.concat([users.drop(columns="user_idx"), pd.DataFrame({"user_id": new_ids})])
    grown = grown.sort_values("user_id", kind="stable").reset_index(drop=True)
    grown.insert(0, "user_idx", np.arange(len(grown), dtype=np.int64))
    vocab = pd.Index(grown["user_id"])
    moved = vocab.get_indexer(users["user_id"]).astype(np.int64)  # (old n_users,)
    frame["user_idx"] = vocab.get_indexer(frame["user_id"]).astype(np.int64)

    counts: dict[str, Any] = {"events": len(events), "new_users": len(new_ids)}
    counts["unknown_items"] = unknown_items
    split_counts, parts = {}, {}
    for split in manifest["splits"]:
        tables = {
            part: storage.read_parquet(prepared.split_file(split, part), manifest=manifest)
            for part in PARTS
        }
        for table in tables.values():
            table["user_idx"] = moved[table["user_idx"].to_numpy()]
        tables["train"], held_out = _merge_train(tables, frame)
        counts[f"held_out_{split}"] = held_out
        parts[split] = tables
        split_counts[split] = {part: len(t) for part, t in tables.items()}

    new_manifest = {k: v for k, v in manifest.items() if k not in _OWN_FIELDS}
    new_manifest.update(
        n_users=len(grown),
        n_interactions=sum(next(iter(split_counts.values())).values()),
        split_counts=split_counts,
        fold=counts,
        **{EVENTS_SEQ: events[-1].seq},
        events_folded=int(manifest.get("events_folded", 0)) + len(events),
    )
    if unknown_items:
        drops = dict(manifest.get("drops", {}))
        drops["events_unknown_items"] = drops.get("events_unknown_items", 0) + unknown_items
        new_manifest["drops"] = drops
    return _write(storage, manifest, grown, parts, new_manifest)


def _merge_train(tables: dict[str, pd.DataFrame], events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``(train with the events, events held out)``: a pair in valid/test stays held out; a pair
    in train takes the event's rating and time; any other pair is appended."""
    n_items = int(max(events["item_idx"].max(), *(t["item_idx"].max() for t in tables.values())))
    n_items += 1

    def keys(table: pd.DataFrame) -> pd.Index:
        return pd.Index(table["user_idx"].to_numpy() * n_items + table["item_idx"].to_numpy())

    event_keys = keys(events)
    held = event_keys.isin(keys(tables["valid"])) | event_keys.isin(keys(tables["test"]))
    fresh = events[~held]
    train = tables["train"]
    in_train = keys(train).get_indexer(keys(fresh))
    train = train.copy()
    rows = in_train[in_train >= 0]
    train.loc[train.index[rows], "rating"] = fresh["rating"].to_numpy()[in_train >= 0]
    train.loc[train.index[rows], "timestamp"] = fresh["timestamp"].to_numpy()[in_train >= 0]
    columns = ["user_idx", "item_idx", "rating", "timestamp"]
    appended = fresh[in_train < 0][columns].astype(train.dtypes[columns].to_dict())
    return pd.concat([train, appended], ignore_index=True), int(held.sum())


def _write(
    storage: Storage,
    old: dict[str, Any],
    users: pd.DataFrame,
    parts: dict[str, dict[str, pd.DataFrame]],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Publishes the new ``data/`` (staged and renamed into place on a local root)."""
    target = storage
    staging = None
    if storage.is_local:
        staging = Path(tempfile.mkdtemp(prefix=".fold-", dir=storage.path()))
        target = Storage(staging)
    try:
        target.begin_artifact(prepared.ARTIFACT)
        for rel in _KEPT:
            if rel.split("/", 1)[1] in old["files"]:
                target.write_bytes(rel, storage.read_checked(rel, old))
        target.write_parquet(prepared.USERS, users)
        for split, tables in parts.items():
            for part, table in tables.items():
                target.write_parquet(prepared.split_file(split, part), table)
        published = target.publish(prepared.ARTIFACT, manifest)
        if staging is not None:
            _swap(staging / prepared.ARTIFACT, Path(storage.path(prepared.ARTIFACT)))
        return published
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _swap(staged: Path, target: Path) -> None:
    """Renames ``staged`` onto ``target`` (the previous one moved aside, then deleted)."""
    if not (staged / MANIFEST).is_file():
        raise RuntimeError(f"{staged}: no manifest; not swapping it in")
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(aside)
    staged.rename(target)
    shutil.rmtree(aside, ignore_errors=True)
