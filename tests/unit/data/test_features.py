"""Feature encoders: buckets, vocabularies with unknown 0, bags, hashed text, numeric, vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from towers.data.errors import DataError
from towers.data.features import (
    FeatureTables,
    build_feature_tables,
    denormalize_ratings,
    fit_feature,
    hash_token,
    normalize_ratings,
)
from towers.data.movielens import AGE_EDGES
from towers.data.prepared import movielens_features
from towers.data.schema import Feature


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
            "genres": [["Drama", "Comedy"], []],
            "year": pd.array([1995, None], dtype="Int64"),
        }
    )
    return movielens_features(users, items)


def test_user_features_and_unknowns():
    f = tables()
    arrays = f.users.arrays
    np.testing.assert_array_equal(arrays["age"], [1, 3, 0])  # <18, 25–34, unknown
    np.testing.assert_array_equal(arrays["gender"], [1, 2, 0])  # F, M (sorted), unknown
    np.testing.assert_array_equal(arrays["occupation"], [2, 0, 1])  # artist 1, writer 2
    assert f.users.inputs() == (
        ("age", "index", len(AGE_EDGES) + 2),
        ("gender", "index", 3),
        ("occupation", "index", 3),
    )


def test_item_features_bag_and_profile():
    f = tables()
    values, offsets = f.items.arrays["genres"], f.items.arrays["genres:offsets"]
    assert offsets.tolist() == [0, 2, 2]  # the second item has no genres: an empty bag
    assert sorted(values.tolist()) == [1, 2]  # Comedy 1, Drama 2
    assert f.items.arrays["year"][1] == 0 and f.items.arrays["year"][0] > 0
    assert f.item_profiles() == (("genres", 2),)  # year is declared profile: false


def test_cold_start_encoding_and_round_trip():
    f = tables()
    row = f.encode_user({"age": 30, "gender": "M", "occupation": "writer"})
    assert (row["age"].tolist(), row["gender"].tolist(), row["occupation"].tolist()) == (
        [3],
        [2],
        [2],
    )
    unknown = f.encode_user({"gender": None})  # absent and None: the reserved unknown 0
    assert [unknown[k].tolist() for k in ("age", "gender", "occupation")] == [[0], [0], [0]]
    with pytest.raises(DataError, match="shoe_size"):
        f.encode_user({"shoe_size": 44})
    # A described user is checked strictly (tables map rare and unseen values to 0).
    with pytest.raises(DataError, match="occupation: 'astronaut' is not a known value"):
        f.encode_user({"occupation": "astronaut"})
    with pytest.raises(DataError, match="age: must be a number"):
        f.encode_user({"age": [30]})
    back = FeatureTables.load(f.fitted_dict(), f.to_arrays())
    for side in ("users", "items"):
        a, b = getattr(f, side), getattr(back, side)
        assert a.inputs() == b.inputs() and a.arrays.keys() == b.arrays.keys()
        for key in a.arrays:
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])


def test_min_count_sends_rare_values_to_unknown():
    fitted = fit_feature(Feature("brand", "categorical", min_count=2), pd.Series(["a", "a", "b"]))
    assert fitted.vocabulary == ["a"]
    np.testing.assert_array_equal(fitted.encode(pd.Series(["a", "b", None]))["brand"], [1, 0, 0])


def test_numeric_is_standardised_with_a_missing_flag():
    column = pd.Series([1.0, 3.0, None])
    fitted = fit_feature(Feature("price", "numeric"), column)
    assert (fitted.mean, fitted.std, fitted.size, fitted.input_kind) == (2.0, 1.0, 2, "dense")
    np.testing.assert_allclose(fitted.encode(column)["price"], [[-1, 0], [1, 0], [0, 1]])


def test_text_is_hashed_into_a_bag_of_words():
    feature = Feature("tags", "text", buckets=64, max_tokens=3)
    fitted = fit_feature(feature, pd.Series(["x"]))
    out = fitted.encode(pd.Series(["Red Shoes, red!", None, "a b c d e"]))
    red, shoes = hash_token("red", 64), hash_token("shoes", 64)
    assert out["tags"][:3].tolist() == [red, shoes, red]  # lower-cased, punctuation dropped
    assert out["tags:offsets"].tolist() == [0, 3, 3, 6]  # max_tokens 3; missing text: empty
    assert fitted.size == 65 and not fitted.profiled
    assert hash_token("red", 64) == hash_token("red", 64) and 1 <= red <= 64


def test_vector_column_with_missing_rows():
    fitted = fit_feature(Feature("emb", "vector", dim=2), pd.Series([[0.5, 1.0]]))
    out = fitted.encode(pd.Series([[0.5, 1.0], None, [1.0]]))["emb"]
    np.testing.assert_allclose(out, [[0.5, 1.0, 0.0], [0, 0, 1], [0, 0, 1]])


def test_build_checks_row_order():
    users = pd.DataFrame({"user_idx": [1, 0]})
    with pytest.raises(ValueError, match="contiguous user_idx"):
        build_feature_tables(users, pd.DataFrame({"item_idx": [0]}), {"users": [], "items": []})


def test_rating_normalisation_round_trip():
    r = np.array([1, 3, 5], np.float32)
    np.testing.assert_allclose(normalize_ratings(r, (1, 5)), [0, 0.5, 1])
    np.testing.assert_allclose(denormalize_ratings(normalize_ratings(r, (0.5, 5)), (0.5, 5)), r)
