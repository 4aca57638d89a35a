"""MovieLens-shaped synthetic data at any size, seeded and deterministic.

Items have 1–3 genres and a long-tail (Zipf) popularity; users have a latent taste over genres.
Each interaction picks, with probability ``taste_weight``, a genre from the user's taste and then an
item of that genre by popularity, otherwise an item by global popularity — O(log n_items) per
interaction, so 10M+ interactions stream out in user-range chunks without a users × items matrix.
Ratings are higher where the item's genres match the user's taste; timestamps increase per user.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from towers.data.movielens import ML100K_GENRES, RATING_SCALES
from towers.data.raw import RawData

GENRES = ML100K_GENRES[1:]  # 18 real genres
OCCUPATIONS = ("student", "engineer", "educator", "artist", "writer", "other")
T0 = 874_000_000  # Sept 1997, the ML-100K period
# Named sizes shaped like the real MovieLens sets: (users, items with a rating, ratings).
PRESETS: dict[str, tuple[int, int, int]] = {
    "small": (1_000, 2_000, 100_000),  # the default of ray_jobs.prepare and SyntheticSpec
    "ml-100k": (943, 1_682, 100_000),
    "ml-1m": (6_040, 3_706, 1_000_209),
    "ml-10m": (69_878, 10_677, 10_000_054),
    "ml-25m": (162_541, 59_047, 25_000_095),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic data set."""

    n_users: int = 1_000  # users, each with at least ``min_per_user`` interactions
    n_items: int = 2_000  # items in the catalog
    n_interactions: int = 100_000  # approximate total after de-duplicating (user, item) pairs
    zipf_a: float = 1.1  # popularity exponent: larger → longer tail
    taste_weight: float = 0.8  # share of picks guided by the user's genre taste
    min_per_user: int = 5  # floor on interactions per user
    seed: int = 0  # everything is a function of this seed

    def __post_init__(self) -> None:
        if min(self.n_users, self.n_items, self.n_interactions) <= 0:
            raise ValueError(f"synthetic sizes must be positive: {self}")
        if self.n_interactions > self.n_users * self.n_items:
            raise ValueError("n_interactions exceeds n_users * n_items")


def preset_spec(
    name: str,
    n_users: int | None = None,
    n_items: int | None = None,
    n_interactions: int | None = None,
    seed: int = 0,
) -> SyntheticSpec:
    """The :data:`PRESETS` size ``name``; a size given explicitly overrides the preset's.

    Raises:
        ValueError: ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose from {sorted(PRESETS)}")
    users, items, interactions = PRESETS[name]
    return SyntheticSpec(
        users if n_users is None else n_users,
        items if n_items is None else n_items,
        interactions if n_interactions is None else n_interactions,
        seed=seed,
    )


class _World:
    """The fixed latent structure: item genres/popularity and user tastes."""

    def __init__(self, spec: SyntheticSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        n_genres = len(GENRES)
        self.spec = spec
        # Long tail: item rank r gets weight 1 / r^a, ranks shuffled so ids carry no signal.
        weights = 1.0 / np.arange(1, spec.n_items + 1) ** spec.zipf_a
        self.popularity = rng.permutation(weights / weights.sum())
        n_gen = rng.integers(1, 4, spec.n_items)
        self.item_genres = np.zeros((spec.n_items, n_genres), bool)
        for i, g in enumerate(n_gen):
            self.item_genres[i, rng.choice(n_genres, g, replace=False)] = True
        # Per-genre item samplers: cumulative popularity among the genre's items.
        self.genre_items = [np.flatnonzero(self.item_genres[:, g]) for g in range(n_genres)]
        self.genre_cdf = []
        for items in self.genre_items:
            p = self.popularity[items] if len(items) else np.ones(1)
            self.genre_cdf.append(np.cumsum(p) / p.sum())
        self.global_cdf = np.cumsum(self.popularity)
        self.tastes = rng.dirichlet(np.full(n_genres, 0.3), spec.n_users)  # (U, G)
        # Activity: a long tail too, scaled to the requested total.
        activity = rng.lognormal(0.0, 1.0, spec.n_users)
        extra = max(spec.n_interactions - spec.min_per_user * spec.n_users, 0)
        self.counts = spec.min_per_user + np.floor(extra * activity / activity.sum()).astype(int)
        self.counts = np.minimum(self.counts, spec.n_items)

    def items_for(self, rng: np.random.Generator, user: int, n: int) -> np.ndarray:
        """Samples ``n`` distinct items for ``user`` (oversampling, then de-duplicating)."""
        picked: np.ndarray = np.empty(0, np.int64)
        while len(picked) < n:
            m = 2 * (n - len(picked)) + 4
            guided = rng.random(m) < self.spec.taste_weight
            genres = rng.choice(len(GENRES), m, p=self.tastes[user])
            u = rng.random(m)
            out = np.searchsorted(self.global_cdf, u).clip(max=self.spec.n_items - 1)
            for g in np.unique(genres[guided]):
                sel = guided & (genres == g)
                items = self.genre_items[g]
                if len(items):
                    pos = np.searchsorted(self.genre_cdf[g], u[sel]).clip(max=len(items) - 1)
                    out[sel] = items[pos]
            picked = pd.unique(np.concatenate([picked, out]))
        return np.asarray(picked[:n], np.int64)


def iter_interaction_chunks(
    spec: SyntheticSpec, users_per_chunk: int = 50_000
) -> Iterator[pd.DataFrame]:
    """Yields canonical interaction frames for consecutive user ranges (ids start at 1)."""
    world = _World(spec)
    lo_r, hi_r = RATING_SCALES["synthetic"]
    for start in range(0, spec.n_users, users_per_chunk):
        stop = min(start + users_per_chunk, spec.n_users)
        users, items, noise, times = [], [], [], []
        for u in range(start, stop):
            rng = np.random.default_rng([spec.seed, u])  # per user: same output at any chunking
            picked = world.items_for(rng, u, int(world.counts[u]))
            users.append(np.full(len(picked), u, np.int64))
            items.append(picked)
            noise.append(rng.normal(0, 0.8, len(picked)))
            steps = rng.exponential(3_600.0, len(picked)).astype(np.int64) + 1
            times.append(T0 + rng.integers(0, 180 * 86_400) + np.cumsum(steps))
        user_arr, item_arr = np.concatenate(users), np.concatenate(items)
        match = (world.item_genres[item_arr] * world.tastes[user_arr]).sum(1)  # (N,) in [0, 1]
        raw = 2.2 + 6.0 * match + np.concatenate(noise)
        rating = np.clip(np.rint(raw), lo_r, hi_r).astype(np.float32)
        yield pd.DataFrame(
            {
                "user_id": user_arr + 1,
                "item_id": item_arr + 1,
                "rating": rating,
                "timestamp": np.concatenate(times),
            }
        )


def synthetic_items_users(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The item table (titles, years, genres) and user table (age, gender, occupation)."""
    world = _World(spec)
    rng = np.random.default_rng([spec.seed, -1 % 2**32])
    genres = [[GENRES[g] for g in np.flatnonzero(row)] for row in world.item_genres]
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, spec.n_items + 1, dtype=np.int64),
            "title": [f"Synthetic Movie {i}" for i in range(1, spec.n_items + 1)],
            "year": pd.array(rng.integers(1930, 2000, spec.n_items), dtype="Int64"),
            "genres": genres,
        }
    )
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, spec.n_users + 1, dtype=np.int64),
            "age": pd.array(rng.integers(7, 74, spec.n_users), dtype="Int64"),
            "gender": rng.choice(["M", "F"], spec.n_users),
            "occupation": rng.choice(OCCUPATIONS, spec.n_users),
        }
    )
    return items, users


def generate(spec: SyntheticSpec) -> RawData:
    """The whole data set in memory (fine up to a few million interactions)."""
    inter = pd.concat(list(iter_interaction_chunks(spec)), ignore_index=True)
    items, users = synthetic_items_users(spec)
    return RawData(inter, items, users, RATING_SCALES["synthetic"], f"synthetic:{spec}")
