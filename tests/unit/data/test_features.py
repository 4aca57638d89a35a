"""Feature tables: buckets, multi-hot genres, unknowns at index 0, cold-start encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from towers.data.features import (
    AGE_EDGES,
    FeatureTables,
    build_feature_tables,
    denormalize_ratings,
    normalize_ratings,
)


def tables() -> FeatureTables:
    users = pd.DataFrame(
        {
            "user_idx": [0, 1, 2],
            "age": pd.array([17, 30, None], dtype="Int64"),
            "gender": ["F", "M", None],
            "occupation": ["writer", None, "artist"],
        }
    )
    items = pd.DataFrame(
        {
            "item_idx": [0, 1],
            "genres": [["Drama", "Comedy"], ["(no genres listed)"]],
            "year": pd.array([1995, None], dtype="Int64"),
        }
    )
    return build_feature_tables(users, items)


def test_user_features_and_unknowns():
    f = tables()
    np.testing.assert_array_equal(f.user_features[:, 0], [1, 3, 0])  # <18, 25–34, unknown
    np.testing.assert_array_equal(f.user_features[:, 1], [2, 1, 0])  # F, M, unknown
    assert f.occupations == ["artist", "writer"]
    np.testing.assert_array_equal(f.user_features[:, 2], [2, 0, 1])
    assert f.user_cardinalities == (len(AGE_EDGES) + 2, 3, 3)
    assert f.user_features.max(axis=0).tolist() < list(f.user_cardinalities)


def test_item_features():
    f = tables()
    assert f.genre_names == ["Comedy", "Drama"]  # "(no genres listed)" is not a genre
    np.testing.assert_array_equal(f.item_genres, [[1, 1], [0, 0]])
    assert f.item_year_bucket[1] == 0 and f.item_year_bucket[0] > 0


def test_cold_start_encoding_and_round_trip():
    f = tables()
    np.testing.assert_array_equal(f.encode_user(30, "M", "writer"), [3, 1, 2])
    np.testing.assert_array_equal(f.encode_user(None, "x", "astronaut"), [0, 0, 0])
    back = FeatureTables.from_arrays(f.to_arrays(), f.genre_names, f.occupations)
    np.testing.assert_array_equal(back.user_features, f.user_features)
    assert back.user_cardinalities == f.user_cardinalities


def test_rating_normalisation_round_trip():
    r = np.array([1, 3, 5], np.float32)
    np.testing.assert_allclose(normalize_ratings(r, (1, 5)), [0, 0.5, 1])
    np.testing.assert_allclose(denormalize_ratings(normalize_ratings(r, (0.5, 5)), (0.5, 5)), r)
