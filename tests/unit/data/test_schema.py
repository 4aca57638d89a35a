"""The schema file: every kind and key parsed, every bad key reported at once with its path."""

from __future__ import annotations

import json

import pytest

from towers.data.movielens import movielens_schema
from towers.data.schema import Feature, Schema, SchemaError

SHOP = """
interactions:
  user_id: customer
  item_id: sku
  timestamp: ts
items:
  id: sku
  features:
    category: categorical
    brand: {kind: categorical, min_count: 2}
    tags: {kind: multi_categorical, delimiter: "|"}
    price: numeric
    description: {kind: text, buckets: 1024, max_tokens: 16}
    image: {kind: vector, dim: 8}
  display: [title, url]
users:
  id: customer
  features:
    age: {kind: numeric, boundaries: [18, 30, 50]}
"""


def test_a_yaml_schema_parses_every_kind(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(SHOP)
    schema = Schema.load(path)
    assert schema.implicit and schema.interactions.timestamp == "ts"
    assert schema.items is not None and schema.users is not None
    kinds = {f.name: f.kind for f in schema.items.features}
    assert kinds == {
        "category": "categorical",
        "brand": "categorical",
        "tags": "multi_categorical",
        "price": "numeric",
        "description": "text",
        "image": "vector",
    }
    assert schema.items.feature("brand").min_count == 2
    assert schema.items.display == ("title", "url")
    age = schema.users.feature("age")
    assert age.boundaries == (18.0, 30.0, 50.0) and age.is_categorical


def test_json_round_trip_and_json_files(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SHOP)
    schema = Schema.load(path)
    as_json = tmp_path / "s.json"
    as_json.write_text(schema.to_json())
    assert Schema.load(as_json) == schema
    ml = movielens_schema(["user_id", "age", "gender", "occupation"])
    assert Schema.from_dict(json.loads(ml.to_json())) == ml and not ml.implicit


def test_every_bad_key_is_reported_with_its_path():
    bad = {
        "interactions": {"user_id": "u", "rating_scale": [5, 1], "colour": "red"},
        "items": {
            "features": {
                "brand": {"kind": "categorial"},
                "price": {"kind": "numeric", "boundaries": [3, 1]},
                "emb": {"kind": "vector"},
                "tags": {"kind": "multi_categorical", "min_count": 0, "buckets": 4},
            },
        },
        "extra": 1,
        "uncovered": "ignore",
    }
    with pytest.raises(SchemaError) as err:
        Schema.from_dict(bad, "shop.yaml")
    message = str(err.value)
    for expected in (
        "shop.yaml: invalid schema",
        "extra: unknown key",
        "interactions.colour: unknown key",
        "interactions.rating_scale: must be [low, high] with low < high",
        "items.id: the id column's name is required",
        "items.features.brand.kind: 'categorial' is not one of",
        "items.features.price.boundaries: must be a non-empty list of increasing numbers",
        "items.features.emb.dim: a vector feature needs its width",
        "items.features.tags.min_count: must be >= 1",
        "items.features.tags.buckets: unknown key",
        "uncovered: 'ignore' is not one of error, drop",
    ):
        assert expected in message, (expected, message)


def test_a_missing_or_unparsable_file_is_a_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="schema file not found"):
        Schema.load(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("items: [unclosed")
    with pytest.raises(SchemaError, match="not valid YAML/JSON"):
        Schema.load(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(SchemaError, match="must be a mapping"):
        Schema.load(listed)


def test_feature_defaults_and_columns():
    f = Feature("brand", "categorical", column="Brand Name")
    assert f.column == "Brand Name" and f.to_dict() == {
        "kind": "categorical",
        "column": "Brand Name",
    }
    assert Feature("x", "numeric").to_dict() == {"kind": "numeric"}
