"""Your own data through the contract: three shapes prepared, and every bad input named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_jobs import prepare
from towers.data.contract import load_dataset
from towers.data.errors import DataError
from towers.data.prepared import load_prepared
from towers.data.schema import Schema
from towers.data.shop import ShopSpec, write_shop
from towers.data.synthetic import SyntheticSpec, generate
from towers.storage.root import ArtifactError, Storage

SPEC = ShopSpec(n_users=120, n_items=90, n_interactions=2_000, seed=3)


def run_prepare(tmp_path, *args: str) -> dict:
    storage = str(tmp_path / "run")
    return prepare.run(prepare.parse_config(prepare.PrepareConfig, [*args, "--storage", storage]))


@pytest.fixture(params=["parquet", "csv"])
def shop(tmp_path, request):
    return write_shop(tmp_path / "shop", SPEC, request.param), request.param


def test_implicit_shop_with_string_ids(tmp_path, shop):
    folder, fmt = shop
    manifest = run_prepare(
        tmp_path,
        *("--interactions", str(folder / f"interactions.{fmt}")),
        *("--items", str(folder / f"items.{fmt}"), "--users", str(folder / f"users.{fmt}")),
        *("--schema", str(folder / "schema.yaml"), "--split", "random,temporal"),
    )
    assert manifest["implicit"] and manifest["dataset"] == "interactions"
    assert manifest["n_items"] == SPEC.n_items  # cold items (no interactions) are kept
    data = load_prepared(Storage(str(tmp_path / "run")), "temporal")
    assert not data.has_ratings and set(data.train.rating.tolist()) == {1.0}
    assert data.items["item_id"].iloc[0] == "p-00000" and data.users["user_id"].iloc[0] == "c00000"
    inputs = dict((n, k) for n, k, _ in data.features.items.inputs())
    assert inputs == {"category": "index", "brand": "index", "price": "dense", "tags": "bag"}
    profiled = [name for name, _ in data.features.item_profiles()]
    assert profiled == ["category", "brand"]  # small vocabularies; not text or numbers
    # Temporal: each user's test rows are no older than their training rows.
    last_train = pd.Series(data.train.timestamp).groupby(data.train.user_idx).max()
    first_test = pd.Series(data.test.timestamp).groupby(data.test.user_idx).min()
    both = last_train.index.intersection(first_test.index)
    assert (first_test[both] >= last_train[both]).all() and data.train.timestamp.min() > 1.7e9


def test_interactions_only_and_an_inferred_schema(tmp_path, caplog):
    frame = pd.DataFrame(
        {"userId": [1, 1, 2, 2, 3, 3] * 4, "movieId": list(range(24)), "rating": [4.0, 2.0] * 12}
    )
    path = tmp_path / "ratings.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level("WARNING"):
        manifest = run_prepare(tmp_path, "--interactions", str(path), "--split", "random")
    assert "inferred" in caplog.text and "user_id: userId" in caplog.text
    assert "rating scale inferred from the data: [2, 4]" in caplog.text
    assert not manifest["implicit"] and manifest["rating_scale"] == [2.0, 4.0]
    assert manifest["features"] == {"users": [], "items": []}
    with pytest.raises(DataError, match="temporal split needs each user.s interactions in time"):
        run_prepare(tmp_path, "--interactions", str(path), "--split", "temporal")


def test_explicit_movielens_like_tables_with_demographics(tmp_path):
    raw = generate(SyntheticSpec(n_users=60, n_items=80, n_interactions=1_500, seed=1))
    raw.interactions.to_parquet(tmp_path / "ratings.parquet")
    items = raw.items.assign(genres=raw.items["genres"].map("|".join))
    items.to_csv(tmp_path / "movies.csv", index=False)
    raw.users.to_parquet(tmp_path / "people.parquet")
    (tmp_path / "schema.yaml").write_text(
        "interactions: {user_id: user_id, item_id: item_id, rating: rating,"
        " rating_scale: [1, 5], timestamp: timestamp}\n"
        "items: {id: item_id, features: {genres: {kind: multi_categorical, delimiter: '|'},"
        " year: {kind: numeric, boundaries: [1970, 1990, 2000]}}, display: [title]}\n"
        "users: {id: user_id, features: {age: numeric, gender: categorical,"
        " occupation: categorical}}\n"
    )
    manifest = run_prepare(
        tmp_path,
        *("--interactions", str(tmp_path / "ratings.parquet")),
        *("--items", str(tmp_path / "movies.csv"), "--users", str(tmp_path / "people.parquet")),
        *("--schema", str(tmp_path / "schema.yaml"), "--split", "random"),
    )
    data = load_prepared(Storage(str(tmp_path / "run")))
    assert data.has_ratings and manifest["rating_scale"] == [1.0, 5.0]
    kinds = [(n, k) for n, k, _ in data.features.users.inputs()]
    assert kinds == [("age", "dense"), ("gender", "index"), ("occupation", "index")]
    genres = data.features.items.feature("genres")
    assert set(genres.vocabulary) == {g for gs in raw.items["genres"] for g in gs}


# --- Bad input: a clear error naming file, column and row; nothing written ----------------------


def shop_tables(tmp_path):
    folder = write_shop(tmp_path / "src", SPEC, "parquet")
    return [pd.read_parquet(folder / f"{n}.parquet") for n in ("interactions", "items", "users")]


def check_bad(tmp_path, inter, items, match, schema_text=None, fmt="parquet"):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    paths = []
    for name, frame in (("interactions", inter), ("items", items)):
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif isinstance(frame, pa.Table):
            pq.write_table(frame, path)
        else:
            frame.to_parquet(path, index=False)
        paths.append(str(path))
    schema_path = folder / "schema.yaml"
    schema_path.write_text(schema_text or SHOP_SCHEMA)
    storage = tmp_path / "run"
    with pytest.raises(DataError, match=match):
        run_prepare(
            tmp_path, "--interactions", paths[0], "--items", paths[1],
            "--schema", str(schema_path), "--split", "random",
        )  # fmt: skip
    with pytest.raises(ArtifactError):  # nothing half-written: no data/ was published
        Storage(str(storage)).read_manifest("data")


SHOP_SCHEMA = """
interactions: {user_id: customer_id, item_id: sku, timestamp: event_time}
items: {id: sku, features: {category: categorical, brand: categorical, price: numeric}}
"""


def test_a_column_the_schema_names_is_missing(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    check_bad(
        tmp_path, inter, items.drop(columns="brand"),
        r"items.parquet: column 'brand' named by the schema \(items.features.brand\) is missing",
    )  # fmt: skip


def test_wrong_type_names_the_line(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    items["price"] = items["price"].astype(object)
    items.loc[5, "price"] = "cheap"
    check_bad(
        tmp_path, inter, items, r"column 'price' .* line 7: 'cheap' is not a number", fmt="csv"
    )


def test_null_and_empty_ids(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    nulls = inter.copy()
    nulls.loc[3, "customer_id"] = None
    check_bad(tmp_path, nulls, items, r"column 'customer_id' .* row 3: the id is empty")
    empty = inter.copy()
    empty.loc[4, "sku"] = "  "
    check_bad(tmp_path, empty, items, r"column 'sku' .* row 4: the id is an empty string")
    floats = inter.assign(customer_id=np.arange(len(inter)) + 0.5)
    check_bad(tmp_path, floats, items, r"ids must be integers or strings, got double")


def test_a_list_in_a_scalar_column(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    items["category"] = [[c] for c in items["category"]]
    check_bad(tmp_path, inter, items, r"column 'category' .* row 0: a list \['\w+'\] in a scalar")


def test_a_timestamp_that_does_not_parse(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    inter.loc[9, "event_time"] = "yesterday"
    check_bad(tmp_path, inter, items, r"event_time.* row 9: 'yesterday' is not a timestamp")


def test_items_table_must_cover_the_interactions_or_drop_them(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    bought = inter["sku"].value_counts().index[0]
    fewer = items[items["sku"] != bought]
    check_bad(
        tmp_path, inter, fewer, rf"rows name a item_id absent from the items table .*{bought}"
    )
    folder = tmp_path / "bad"
    (folder / "schema.yaml").write_text(SHOP_SCHEMA + "uncovered: drop\n")
    manifest = run_prepare(
        tmp_path, "--interactions", str(folder / "interactions.parquet"),
        "--items", str(folder / "items.parquet"), "--schema", str(folder / "schema.yaml"),
        "--split", "random",
    )  # fmt: skip
    assert manifest["drops"]["uncovered_items"] == int((inter["sku"] == bought).sum())
    assert manifest["n_interactions"] == len(inter) - manifest["drops"]["uncovered_items"]


def test_repeated_item_ids_and_mixed_id_types(tmp_path):
    inter, items, _ = shop_tables(tmp_path)
    check_bad(tmp_path, inter, pd.concat([items, items.head(2)]), r"items table: ids repeat")
    numeric = items.assign(sku=np.arange(len(items)))
    check_bad(tmp_path, inter, numeric, r"items table ids are int64, the interactions' item_id")


def test_schema_and_tables_must_agree(tmp_path):
    inter, _, _ = shop_tables(tmp_path)
    inter.to_parquet(tmp_path / "i.parquet")
    schema = Schema.from_dict(
        {"interactions": {"user_id": "customer_id", "item_id": "sku"}, "items": {"id": "sku"}}
    )
    with pytest.raises(DataError, match="the schema describes items but no items table"):
        load_dataset(str(tmp_path / "i.parquet"), schema=schema)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="cannot tell which column holds the user ids"):
        pd.DataFrame({"a": [1], "sku": ["x"]}).to_parquet(tmp_path / "j.parquet")
        load_dataset(str(tmp_path / "j.parquet"))


def test_timestamps_in_every_accepted_form(tmp_path):
    from towers.data import columns
    from towers.data.files import TableFile

    when = 1_714_564_800  # 2024-05-01T12:00:00Z
    forms = {
        "seconds": pa.array([when]),
        "milliseconds": pa.array([when * 1000]),
        "iso": pa.array(["2024-05-01T12:00:00Z"]),
        "iso_offset": pa.array(["2024-05-01T14:00:00+02:00"]),
        "arrow": pa.array([pd.Timestamp(when, unit="s")], pa.timestamp("ms")),
        "text_seconds": pa.array([str(when)]),
    }
    file = TableFile("t.parquet", pa.table(forms), csv=False)
    for name in forms:
        assert columns.timestamps(file, name, "interactions.timestamp", "auto").tolist() == [when]
    assert columns.timestamps(file, "milliseconds", "k", "ms").tolist() == [when]


def test_ml100k_through_the_adapter_and_as_plain_csv_give_the_same_data(tmp_path, ml100k_dir):
    """MovieLens is one adapter onto the contract: its tables written out as CSV and read back
    through the generic path with the adapter's schema prepare to the same data."""
    from towers.data.movielens import read_folder

    args = ["--dataset", "ml-100k", "--data-dir", str(ml100k_dir), "--split", "random,temporal"]
    run_prepare(tmp_path / "adapter", *args)
    raw = read_folder(ml100k_dir, "ml-100k")
    raw.interactions.to_csv(tmp_path / "ratings.csv", index=False)
    raw.items.assign(genres=raw.items["genres"].map("|".join)).to_csv(
        tmp_path / "items.csv", index=False
    )
    raw.users.to_csv(tmp_path / "users.csv", index=False)
    (tmp_path / "schema.json").write_text(raw.schema.to_json())
    run_prepare(
        tmp_path / "csv",
        *("--interactions", str(tmp_path / "ratings.csv"), "--items", str(tmp_path / "items.csv")),
        *("--users", str(tmp_path / "users.csv"), "--schema", str(tmp_path / "schema.json")),
        *("--split", "random,temporal"),
    )
    for split in ("random", "temporal"):
        a = load_prepared(Storage(str(tmp_path / "adapter" / "run")), split)
        b = load_prepared(Storage(str(tmp_path / "csv" / "run")), split)
        for part in ("train", "valid", "test"):
            pa_, pb = getattr(a, part), getattr(b, part)
            for column in ("user_idx", "item_idx", "rating", "timestamp"):
                np.testing.assert_array_equal(getattr(pa_, column), getattr(pb, column))
        assert a.features.fitted_dict() == b.features.fitted_dict()
        for side in ("users", "items"):
            arrays_a, arrays_b = getattr(a.features, side).arrays, getattr(b.features, side).arrays
            assert arrays_a.keys() == arrays_b.keys()
            for key in arrays_a:
                np.testing.assert_array_equal(arrays_a[key], arrays_b[key])
        pd.testing.assert_frame_equal(
            a.items[["item_idx", "item_id", "title"]], b.items[["item_idx", "item_id", "title"]]
        )
    assert a.n_users == 943 and a.n_items == 1_682


def test_inference_reads_each_column_by_its_type(tmp_path):
    from towers.data.files import read_table
    from towers.data.inference import infer_schema

    items = pd.DataFrame(
        {
            "product_id": ["a", "b", "c", "d"],
            "title": ["A", "B", "C", "D"],
            "colour": ["red", "red", "blue", "red"],
            "tags": [["x"], ["x", "y"], [], ["y"]],
            "path": ["a|b", "b|c", "c", "a|c"],
            "blurb": ["a long text about it"] * 4,
            "price": [1.0, 2.0, 3.5, None],
            "emb": [[0.1, 0.2]] * 4,
            "in_stock": [True, False, True, True],
        }
    )
    items.to_parquet(tmp_path / "items.parquet")
    inter = pa.table({"customerId": ["u"], "product_id": ["a"], "stars": [4.0], "ts": [1]})
    schema = infer_schema(inter, read_table(str(tmp_path / "items.parquet"), "items"), [])
    spec = schema.interactions
    assert (spec.user_id, spec.item_id, spec.rating, spec.timestamp) == (
        "customerId", "product_id", "stars", "ts",
    )  # fmt: skip
    assert schema.items is not None and schema.items.id == "product_id"
    assert schema.items.display == ("title",)
    kinds = {f.name: (f.kind, f.delimiter, f.dim) for f in schema.items.features}
    assert kinds == {
        "colour": ("categorical", None, None),
        "tags": ("multi_categorical", None, None),
        "path": ("multi_categorical", "|", None),
        "blurb": ("text", None, None),
        "price": ("numeric", None, None),
        "emb": ("vector", None, 2),
        "in_stock": ("categorical", None, None),
    }


def test_an_implicit_weight_column_is_each_rows_value(tmp_path):
    """``interactions.weight``: kept as each row's value (the losses weigh the row by it); a
    negative weight is refused with its row."""
    frame = pd.DataFrame(
        {"user_id": [1, 1, 2, 2, 3] * 4, "item_id": list(range(20)), "clicks": [1.0, 3.0] * 10}
    )
    frame.to_parquet(tmp_path / "events.parquet")
    (tmp_path / "schema.yaml").write_text(
        "interactions: {user_id: user_id, item_id: item_id, weight: clicks}\n"
    )
    args = ["--interactions", str(tmp_path / "events.parquet"), "--split", "random"]
    manifest = run_prepare(tmp_path, *args, "--schema", str(tmp_path / "schema.yaml"))
    assert manifest["implicit"]
    data = load_prepared(Storage(str(tmp_path / "run")))
    full = data.full_train.concat(data.test)
    assert sorted(full.rating.tolist()) == sorted(frame["clicks"].tolist())
    frame.loc[4, "clicks"] = -1.0
    frame.to_parquet(tmp_path / "events.parquet")
    with pytest.raises(DataError, match=r"column 'clicks' .* row 4: a weight must be a number"):
        run_prepare(tmp_path, *args, "--schema", str(tmp_path / "schema.yaml"))
