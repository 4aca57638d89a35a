"""The synthetic generator: seeded, MovieLens-shaped, chunking-independent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers.data.synthetic import SyntheticSpec, generate, iter_interaction_chunks, preset_spec
from towers.data.validation import validate_raw

SPEC = SyntheticSpec(n_users=300, n_items=500, n_interactions=20_000, seed=3)


def test_deterministic_and_seed_sensitive():
    a, b = generate(SPEC), generate(SPEC)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    other = generate(SyntheticSpec(300, 500, 20_000, seed=4))
    assert not a.interactions.equals(other.interactions)


def test_chunking_does_not_change_the_data():
    whole = pd.concat(list(iter_interaction_chunks(SPEC, users_per_chunk=300)), ignore_index=True)
    parts = pd.concat(list(iter_interaction_chunks(SPEC, users_per_chunk=70)), ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts)


def test_movielens_shape():
    raw = generate(SPEC)
    inter = raw.interactions
    cleaned, drops = validate_raw(raw)  # no errors: ids known, ratings in range, no duplicates
    assert drops["duplicate_pairs"] == 0
    assert 0.9 * SPEC.n_interactions <= len(inter) <= 1.05 * SPEC.n_interactions
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter.groupby("user_id").size().min() >= SPEC.min_per_user
    # Long tail: the top 10% of items take far more than 10% of interactions.
    counts = np.sort(inter["item_id"].value_counts().to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.3
    # Timestamps increase within each user.
    assert inter.groupby("user_id")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert all(1 <= len(g) <= 3 for g in raw.items["genres"])
    assert set(raw.users.columns) == {"user_id", "age", "gender", "occupation"}


def test_tastes_drive_ratings():
    """Ratings of items in a user's favourite genre are higher than the rest: learnable signal."""
    raw = generate(SPEC)
    inter = raw.interactions.merge(raw.items[["item_id", "genres"]], on="item_id")
    fav = inter.explode("genres").groupby(["user_id", "genres"]).size().groupby("user_id").idxmax()
    fav_genre = {u: g for u, (_, g) in fav.items()}
    in_fav = inter.apply(lambda r: fav_genre[r.user_id] in r.genres, axis=1)
    assert inter.loc[in_fav, "rating"].mean() > inter.loc[~in_fav, "rating"].mean() + 0.3


def test_bad_spec():
    with pytest.raises(ValueError, match="must be positive"):
        SyntheticSpec(n_users=0)
    with pytest.raises(ValueError, match="exceeds"):
        SyntheticSpec(n_users=2, n_items=2, n_interactions=5)


def test_presets_have_the_movielens_shapes_and_explicit_sizes_override_them():
    assert preset_spec("ml-1m") == SyntheticSpec(6_040, 3_706, 1_000_209)
    assert preset_spec("ml-25m", seed=2) == SyntheticSpec(162_541, 59_047, 25_000_095, seed=2)
    assert preset_spec("ml-10m", n_users=5_000) == SyntheticSpec(5_000, 10_677, 10_000_054)
    with pytest.raises(ValueError, match="unknown synthetic preset 'ml-5m'"):
        preset_spec("ml-5m")


def test_prepare_takes_a_preset_with_overrides(capsys: pytest.CaptureFixture[str]):
    from ray_jobs import prepare

    def spec(*argv: str) -> SyntheticSpec:
        return prepare.parse_config(prepare.PrepareConfig, ["--dataset", "synthetic", *argv])

    assert spec("--synthetic-preset", "ml-10m").synthetic_spec == preset_spec("ml-10m")
    given = spec(
        "--synthetic-preset", "ml-25m", "--synthetic-items", "700", "--synthetic-seed", "5"
    )
    assert given.synthetic_spec == SyntheticSpec(162_541, 700, 25_000_095, seed=5)
    assert spec().synthetic_spec == SyntheticSpec()  # no preset: the old defaults
    with pytest.raises(SystemExit):  # an argparse error: exit status 2 and the message
        spec("--synthetic-preset", "ml-2m")
    assert "--synthetic-preset: unknown 'ml-2m'" in capsys.readouterr().err
