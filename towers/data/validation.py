"""Checks on canonical tables: clear errors, or counted drops where users expect one."""

from __future__ import annotations

import logging

import numpy as np

from towers.data.raw import DataError, RawData

log = logging.getLogger(__name__)


def check_ratings(
    rating: np.ndarray, scale: tuple[float, float], implicit: bool, where: str
) -> None:
    """Raises ``DataError`` unless every rating is finite and, for explicit data, inside
    ``scale`` (implicit data's weights have no scale). The one check of a rating, whether it
    comes from the interactions file or from ``POST /events``.

    Args:
        rating: ``(N,)`` float64 ratings (weights for implicit data).
        scale: the data set's ``(lowest, highest)`` rating.
        implicit: whether the values are implicit feedback's weights.
        where: what the message names first (the source, or the event).
    """
    if not np.isfinite(rating).all():
        raise DataError(f"{where}: {int((~np.isfinite(rating)).sum())} ratings are not finite")
    lo, hi = scale
    out = (rating < lo) | (rating > hi)
    if out.any() and not implicit:
        rows = np.flatnonzero(out)[:5].tolist()
        raise DataError(
            f"{where}: {int(out.sum())} ratings outside [{lo}, {hi}] "
            f"(e.g. {rating[out][:3].tolist()} at rows {rows})"
        )


def validate_raw(raw: RawData) -> tuple[RawData, dict[str, int]]:
    """Validates and cleans ``raw``; returns the cleaned data and counts of dropped rows.

    Errors (``DataError`` naming the source and the problem): empty tables, ratings outside the data
    set's scale, non-finite ratings, duplicate item or user ids in the item/user tables, interaction
    ids absent from the item or user table.

    Drops (counted, logged): duplicate ``(user, item)`` pairs keep the latest by timestamp (the
    file's
    last row among equal timestamps) — MovieLens users can re-rate a film, and the last word counts.
    """
    src = raw.source
    inter, items, users = raw.interactions, raw.items, raw.users
    for name, table in (("interactions", inter), ("items", items), ("users", users)):
        if table.empty:
            raise DataError(f"{src}: {name} table is empty")

    implicit = raw.schema is not None and raw.schema.implicit  # weights, not ratings
    check_ratings(inter["rating"].to_numpy(np.float64), raw.rating_scale, implicit, src)

    for name, table, key in (("items", items, "item_id"), ("users", users, "user_id")):
        dup = table[key].duplicated()
        if dup.any():
            raise DataError(
                f"{src}: {name} table repeats {key} {table.loc[dup, key].head(5).tolist()}"
            )

    unknown_items = ~inter["item_id"].isin(items["item_id"])
    if unknown_items.any():
        raise DataError(
            f"{src}: {int(unknown_items.sum())} interactions name item ids absent from the items "
            f"table (e.g. {inter.loc[unknown_items, 'item_id'].unique()[:5].tolist()})"
        )
    unknown_users = ~inter["user_id"].isin(users["user_id"])
    if unknown_users.any():
        raise DataError(
            f"{src}: {int(unknown_users.sum())} interactions name user ids absent from the users "
            f"table (e.g. {inter.loc[unknown_users, 'user_id'].unique()[:5].tolist()})"
        )

    drops = {"duplicate_pairs": 0}
    # Stable sort by time keeps file order among equal timestamps, so "last" is well defined.
    order = np.argsort(inter["timestamp"].to_numpy(), kind="stable")
    dup = inter.iloc[order].duplicated(["user_id", "item_id"], keep="last")
    if dup.any():
        n_dup = int(dup.sum())
        drops["duplicate_pairs"] = n_dup
        keep_rows = np.sort(order[~dup.to_numpy()])
        inter = inter.iloc[keep_rows].reset_index(drop=True)
        log.warning("%s: dropped %d duplicate (user, item) pairs, keeping the latest", src, n_dup)
    cleaned = RawData(
        inter, items, users, raw.rating_scale, raw.source, raw.schema, raw.source_schema
    )
    return cleaned, drops
