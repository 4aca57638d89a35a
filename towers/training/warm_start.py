"""Warm starts: a previous model's weights as the initial weights of a model for grown data.

Between two trainings the vocabularies may grow (events bring new users, a new catalog new
items), so a row of an id table means a raw id, not a position. A warm start maps each new row to
the old row of the same raw id (:func:`map_rows`), copies the old rows bit for bit, leaves new rows
at the fresh model's own initialisation, and copies every other tensor whose shape still matches
(the MLPs, the feature encoders, the temperature, the rating head):

    old model + old vocabularies ──check_compatible──▶ new config (old architecture, new sizes)
                                 ──transplant──▶ initial weights of a fresh ``LoopState``

Tables indexed by user or item rows are named in :data:`ROW_TABLES`; any other tensor whose
shape differs is an incompatibility, reported with the config fields that differ. Optimizer state
is not carried: a model export holds weights only, so Adam's moments restart from zero (the
first steps move every row at the full learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from towers.data.features import FeatureTables
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower

# A warm start's default epoch budget (the search phase; refit retrains its best count): the old
# model already holds what the old data taught, a few passes fold in what is new -- a third of
# the old model's epochs, 1 to WARM_START_EPOCHS, so that it costs at most a third of training
# afresh (ML-100K's 20 epochs: 3; Amazon Beauty's 8: 2; docs/BENCHMARKS.md, the replay).
WARM_START_EPOCHS = 3


def warm_start_epochs(old_epochs: int | None) -> int:
    """The default epochs of a warm start from a model trained for ``old_epochs``."""
    if not old_epochs:
        return WARM_START_EPOCHS
    return max(1, min(WARM_START_EPOCHS, old_epochs // 3))


ROWS = ("users", "items")  # the two vocabularies a warm start maps by raw id
# State-dict entries with one row per user or item: (vocabulary, has a trailing "unknown" row).
ROW_TABLES: dict[str, tuple[str, bool]] = {
    "user_tower.user_id.weight": ("users", True),
    "item_tower.item_id.weight": ("items", True),
    "user_tower.history.weight": ("items", False),
    "user_tower.recent_history.weight": ("items", False),
    "user_tower.rated_history.weight": ("items", False),
    "rating_head.user_bias.weight": ("users", True),
    "rating_head.item_bias.weight": ("items", True),
    "item_bias.weight": ("items", True),
}
# Config fields a warm start takes from the data rather than from the old model.
DATA_SIZES = ("n_users", "n_items")
# Config fields that shape the weights: a warm start keeps them; a different value is an error.
ARCHITECTURE = (
    "embedding_dim",
    "id_dim",
    "feature_dim",
    "hidden_dims",
    "item_hidden_dims",
    "use_user_id",
    "use_item_id",
    "use_features",
    "use_history",
    "share_history_embeddings",
    "recent_history",
    "use_profiles",
    "use_rating_history",
    "user_inputs",
    "item_inputs",
    "item_profiles",
    "has_ratings",
    "learn_temperature",
    "item_bias",
    "sequence_model",
    "sequence_length",
    "sequence_layers",
    "sequence_heads",
)


class WarmStartError(ValueError):
    """The previous model cannot seed a model for these data (the message says what differs)."""


@dataclass(frozen=True)
class Vocabularies:
    """Raw ids (integers or strings, as the prepared data has them) by ``user_idx``/``item_idx``."""

    users: np.ndarray  # (n_users,)
    items: np.ndarray  # (n_items,)

    @classmethod
    def of_tables(cls, users: pd.DataFrame, items: pd.DataFrame) -> Vocabularies:
        """From ``data/``'s users and items tables (sorted by ``user_idx``/``item_idx``)."""
        return cls(users["user_id"].to_numpy(), items["item_id"].to_numpy())


@dataclass
class WarmStartReport:
    """What a transplant kept, added and dropped."""

    kept: dict[str, int] = field(default_factory=dict)  # vocabulary -> rows carried over
    added: dict[str, int] = field(default_factory=dict)  # vocabulary -> new rows (fresh init)
    dropped: dict[str, int] = field(default_factory=dict)  # vocabulary -> old rows without a row
    copied: list[str] = field(default_factory=list)  # tensors copied whole
    mapped: list[str] = field(default_factory=list)  # row tables copied row by row

    def summary(self) -> str:
        parts = [
            f"{side}: {self.kept.get(side, 0):,} kept, {self.added.get(side, 0):,} new"
            + (f", {self.dropped[side]:,} dropped" if self.dropped.get(side) else "")
            for side in ("users", "items")
        ]
        return (
            f"warm start: {'; '.join(parts)}; {len(self.copied)} tensors copied, "
            f"{len(self.mapped)} row tables mapped by id (Adam restarts)"
        )


def map_rows(old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """``(n_new,)`` int64: each new id's row in ``old_ids``, or -1 for an id the old one lacks.

    Ids compare by value and type, as the prepared data stores them (an integer 5 is not "5").
    """
    old = pd.Index(np.asarray(old_ids, dtype=object))
    if not old.is_unique:
        raise WarmStartError(f"the old vocabulary repeats ids, e.g. {old[old.duplicated()][:3]}")
    return old.get_indexer(np.asarray(new_ids, dtype=object)).astype(np.int64)


def warm_config(
    old: TwoTowerConfig,
    features: FeatureTables,
    has_ratings: bool,
    time_ordered: bool,
    overrides: dict[str, Any] | None = None,
) -> TwoTowerConfig:
    """The old model's config sized for ``features``, with ``overrides`` (lr, epochs, …) on top.

    The architecture is the old model's, whatever today's defaults are; an override or a data
    set that would change it (another dimension, other features) raises :class:`WarmStartError`.
    """
    # The temperature and loss the old model trained with (chosen on validation or given): no
    # new search.
    overrides = {"temperature_candidates": (), "ranking_loss_candidates": (), **(overrides or {})}
    new = replace(old, **overrides).sized_for(features, has_ratings, time_ordered)
    check_compatible(old, new)
    return new


def check_compatible(old: TwoTowerConfig, new: TwoTowerConfig) -> None:
    """Raises :class:`WarmStartError` naming every weight-shaping field that differs."""
    differ = [
        f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in ARCHITECTURE
        if getattr(old, name) != getattr(new, name)
    ]
    if old.has_rating_head != new.has_rating_head:
        differ.append(f"loss: {old.loss!r} -> {new.loss!r} (the rating head)")
    if differ:
        raise WarmStartError(
            "the previous model cannot seed this one, its architecture differs (old -> new): "
            + "; ".join(differ)
        )


def transplant(
    old_state: dict[str, torch.Tensor],
    new_state: dict[str, torch.Tensor],
    rows: dict[str, np.ndarray],
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """New weights: ``new_state`` (a fresh init) with the old model's rows and tensors copied in.

    Args:
        old_state: the previous model's state dict.
        new_state: a freshly initialised model's state dict for the new sizes (not modified).
        rows: ``{"users": (n_new_users,), "items": (n_new_items,)}`` old row of each new row, or
            -1 (:func:`map_rows`).

    Returns:
        ``(state, report)``: a new state dict (CPU tensors) and what was kept, added, dropped.

    Raises:
        WarmStartError: a tensor only one side has, or one whose shape differs outside the row
            axis of a :data:`ROW_TABLES` entry (names each, with both shapes).
    """
    report = WarmStartReport()
    for side, old_rows in rows.items():
        known = old_rows >= 0
        report.kept[side], report.added[side] = int(known.sum()), int((~known).sum())
    problems = [f"{k} only in the old model" for k in sorted(set(old_state) - set(new_state))]
    problems += [f"{k} only in the new model" for k in sorted(set(new_state) - set(old_state))]
    out: dict[str, torch.Tensor] = {}
    for name, fresh in new_state.items():
        target = fresh.detach().cpu().clone()
        out[name] = target
        if name not in old_state:
            continue
        old = old_state[name].detach().cpu()
        if name in ROW_TABLES:
            side, unknown_row = ROW_TABLES[name]
            old_rows = rows[side]
            extra = int(unknown_row)
            if old.shape[1:] != target.shape[1:] or target.shape[0] != len(old_rows) + extra:
                problems.append(
                    f"{name}: old {tuple(old.shape)}, new {tuple(target.shape)} for "
                    f"{len(old_rows)} {side} (+{extra} unknown row)"
                )
                continue
            n_old = old.shape[0] - extra
            if old_rows.size and old_rows.max() >= n_old:
                problems.append(f"{name}: old table has {n_old} {side} rows, ids point past it")
                continue
            known = torch.from_numpy(old_rows >= 0)
            source = torch.from_numpy(old_rows[old_rows >= 0])
            target[: len(old_rows)][known] = old[source].to(target.dtype)
            if unknown_row:
                target[-1] = old[-1]
            report.dropped[side] = n_old - len(np.unique(old_rows[old_rows >= 0]))
            report.mapped.append(name)
        elif old.shape != target.shape:
            problems.append(f"{name}: old {tuple(old.shape)}, new {tuple(target.shape)}")
        else:
            out[name] = old.clone()
            report.copied.append(name)
    if problems:
        raise WarmStartError("the previous model's weights do not fit: " + "; ".join(problems))
    return out, report


def warm_start_weights(
    old_model: TwoTower,
    old_vocab: Vocabularies,
    config: TwoTowerConfig,
    new_vocab: Vocabularies,
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """Initial weights for a model of ``config`` (sized for ``new_vocab``) from ``old_model``.

    New rows get exactly the initialisation a fresh ``TwoTower(config)`` seeded with
    ``config.seed`` gives them, as the training loop would.
    """
    check_compatible(old_model.config, config)
    for side in ("users", "items"):
        old_n = getattr(old_model.config, f"n_{side}")
        if len(getattr(old_vocab, side)) != old_n:
            raise WarmStartError(
                f"the old model has {old_n} {side} but its vocabulary lists "
                f"{len(getattr(old_vocab, side))}"
            )
        new_n = getattr(config, f"n_{side}")
        if len(getattr(new_vocab, side)) != new_n:
            raise WarmStartError(
                f"the new config has {new_n} {side}, the vocabulary {len(getattr(new_vocab, side))}"
            )
    rows = {side: map_rows(getattr(old_vocab, side), getattr(new_vocab, side)) for side in ROWS}
    if old_model.config.n_items and not (rows["items"] >= 0).any():
        raise WarmStartError(
            "no item of the data is in the previous model's vocabulary (ids of another data set, "
            f"or of another type: old {old_vocab.items[:3].tolist()}, "
            f"new {new_vocab.items[:3].tolist()})"
        )
    torch.manual_seed(config.seed)
    fresh = TwoTower(config).state_dict()
    return transplant(old_model.state_dict(), fresh, rows)
