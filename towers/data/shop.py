"""An e-commerce-shaped synthetic data set in the contract's form: files plus a schema file.

Customers (string ids ``c00042``) view or buy products (string ids ``p-00017``) with a category,
a brand, a price, free-text tags and a title; there are no ratings (implicit feedback) and the
timestamps are ISO-8601 text. Each customer prefers a few categories and a price band, and picks
popular products within them, so a model that reads the features and the history has something
to learn. A share of the catalog is never bought: items with features only (cold items).

:func:`write_shop` writes ``interactions.<fmt>``, ``items.<fmt>``, ``users.<fmt>`` and
``schema.yaml`` into a folder — the input of ``python -m ray_jobs.prepare --interactions ...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ("shoes", "bags", "skincare", "makeup", "hair", "fragrance", "watches", "books")
WORDS = (
    "red",
    "blue",
    "vegan",
    "classic",
    "travel",
    "mini",
    "gift",
    "organic",
    "leather",
    "matte",
    "waterproof",
    "limited",
)
SCHEMA = """\
# The shop's schema: ids are strings, no rating column (implicit), ISO-8601 timestamps.
interactions:
  user_id: customer_id
  item_id: sku
  timestamp: event_time
items:
  id: sku
  features:
    category: categorical
    brand: {kind: categorical, min_count: 2}
    price: numeric
    tags: {kind: text, buckets: 4096, max_tokens: 16}
  display: [title]
users:
  id: customer_id
  features:
    region: categorical
"""


@dataclass(frozen=True)
class ShopSpec:
    """Sizes and seed of a synthetic shop."""

    n_users: int = 400
    n_items: int = 300
    n_interactions: int = 8_000
    cold_share: float = 0.05  # share of the catalog nobody buys (cold items)
    seed: int = 0


def generate_shop(spec: ShopSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(interactions, items, users)`` frames with the shop's own column names."""
    rng = np.random.default_rng(spec.seed)
    n_cat = len(CATEGORIES)
    category = rng.integers(0, n_cat, spec.n_items)
    brand = rng.integers(0, max(spec.n_items // 10, 2), spec.n_items)
    price = np.round(np.exp(rng.normal(3.0, 0.8, spec.n_items)), 2)
    popularity = 1.0 / np.arange(1, spec.n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(spec.n_items)]
    cold = rng.random(spec.n_items) < spec.cold_share
    popularity[cold] = 0.0
    items = pd.DataFrame(
        {
            "sku": [f"p-{i:05d}" for i in range(spec.n_items)],
            "category": [CATEGORIES[c] for c in category],
            "brand": [f"brand{b:03d}" for b in brand],
            "price": price,
            "tags": [" ".join(rng.choice(WORDS, 3, replace=False)) for _ in range(spec.n_items)],
            "title": [f"{CATEGORIES[c].title()} #{i}" for i, c in enumerate(category)],
        }
    )
    tastes = rng.dirichlet(np.full(n_cat, 0.2), spec.n_users)  # (U, C) category preferences
    budget = rng.normal(3.0, 0.5, spec.n_users)  # log-price each customer is drawn to
    per_user = rng.poisson(spec.n_interactions / spec.n_users, spec.n_users).clip(3)
    rows_u, rows_i = [], []
    log_price = np.log(price)
    for user in range(spec.n_users):
        weight = tastes[user, category] * popularity * np.exp(-((log_price - budget[user]) ** 2))
        n = min(int(per_user[user]), int((weight > 0).sum()))
        chosen = rng.choice(spec.n_items, n, replace=False, p=weight / weight.sum())
        rows_u += [user] * n
        rows_i += chosen.tolist()
    start = np.datetime64("2024-01-01T00:00:00")
    seconds = np.sort(rng.integers(0, 365 * 86400, len(rows_u)))
    order = rng.permutation(len(rows_u))  # file order is not time order
    interactions = pd.DataFrame(
        {
            "customer_id": [f"c{u:05d}" for u in np.asarray(rows_u)[order]],
            "sku": items["sku"].to_numpy()[np.asarray(rows_i)[order]],
            "event_time": [str(start + np.timedelta64(int(s), "s")) + "Z" for s in seconds[order]],
        }
    )
    users = pd.DataFrame(
        {
            "customer_id": [f"c{u:05d}" for u in range(spec.n_users)],
            "region": rng.choice(["north", "south", "east", "west"], spec.n_users),
        }
    )
    return interactions, items, users


def write_shop(folder: str | Path, spec: ShopSpec = ShopSpec(), fmt: str = "parquet") -> Path:
    """Writes the shop's three tables (``fmt`` parquet or csv) and ``schema.yaml``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(("interactions", "items", "users"), generate_shop(spec), strict=True):
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    (folder / "schema.yaml").write_text(SCHEMA)
    return folder
