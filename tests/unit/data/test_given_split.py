"""``prepare --split given``: a benchmark's own parts, by column or by file, prepared as published;
every bad input named with its file, column and rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ray_jobs import prepare
from ray_jobs.pipeline import PipelineConfig
from towers.data.errors import DataError
from towers.data.prepared import load_prepared, summary
from towers.data.splits import split_given
from towers.storage.root import Storage

SCHEMA = "interactions:\n  user_id: user\n  item_id: item\n  part: part\n"
TIMED_SCHEMA = "interactions:\n  user_id: user\n  item_id: item\n  timestamp: ts\n"


def benchmark_rows(n_users: int = 30, n_items: int = 25, seed: int = 0) -> pd.DataFrame:
    """Each user's 9 distinct items: 2 test, 1 valid, the rest train; every valid/test item
    also has a train row (rows that would not are moved into train)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        items = rng.choice(n_items, 9, replace=False)
        parts = ["test", "test", "valid"] + ["train"] * 6
        rows += [
            (f"u{user:02d}", int(i), p, 100 * user + k)
            for k, (i, p) in enumerate(zip(items, parts, strict=True))
        ]
    frame = pd.DataFrame(rows, columns=["user", "item", "part", "ts"])
    trained = set(frame.loc[frame["part"] == "train", "item"])
    frame.loc[~frame["item"].isin(trained), "part"] = "train"
    return frame


def run_prepare(tmp_path, *args: str, storage: str = "run") -> dict:
    argv = [*args, "--storage", str(tmp_path / storage)]
    return prepare.run(prepare.parse_config(prepare.PrepareConfig, argv))


def write(tmp_path, frame: pd.DataFrame, name: str = "interactions.csv", schema: str = SCHEMA):
    frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "schema.yaml").write_text(schema)
    return str(tmp_path / name)


def pairs(data, part: str) -> set[tuple[str, int]]:
    """The (user id, item id) pairs of one prepared part, in the files' own ids."""
    rows = getattr(data, part)
    users = data.users["user_id"].to_numpy()[rows.user_idx]
    items = data.items["item_id"].to_numpy()[rows.item_idx]
    return set(zip(users.tolist(), items.tolist(), strict=True))


def expected(frame: pd.DataFrame, *parts: str) -> set[tuple[str, int]]:
    chosen = frame[frame["part"].isin(parts)]
    return set(zip(chosen["user"], chosen["item"], strict=True))


def test_a_part_column_round_trips_into_the_prepared_parts(tmp_path):
    frame = benchmark_rows()
    path = write(tmp_path, frame)
    schema = str(tmp_path / "schema.yaml")
    manifest = run_prepare(tmp_path, "--interactions", path, "--schema", schema, "--split", "given")
    data = load_prepared(Storage(tmp_path / "run"), "given")
    for part in ("train", "valid", "test"):
        assert pairs(data, part) == expected(frame, part)
    assert manifest["given_valid"] == "given" and manifest["splits"] == ["given"]
    assert manifest["split_counts"]["given"]["test"] == int((frame["part"] == "test").sum())
    # Given and drawn splits side by side: random and temporal split all rows, parts ignored.
    both = run_prepare(
        tmp_path, "--interactions", path, "--schema", schema, "--split", "given,random",
        storage="both",
    )  # fmt: skip
    assert sum(both["split_counts"]["random"].values()) == len(frame)


def test_the_parts_mean_item_popularity_is_reported(tmp_path):
    """How popular each part's items are in train, so that a test part unlike its validation
    part shows before anything is trained on it. Here the test rows move to the items with
    the most training rows."""
    frame = benchmark_rows(seed=2)
    counts = frame[frame["part"] == "train"]["item"].value_counts()
    popular = counts.index[:5].tolist()
    test = frame.index[frame["part"] == "test"]
    frame.loc[test, "item"] = [popular[i % 5] for i in range(len(test))]
    frame = frame.drop_duplicates(["user", "item"], keep="last")  # a user's pair is in one part
    path = write(tmp_path, frame)
    args = ("--interactions", path, "--schema", str(tmp_path / "schema.yaml"), "--split", "given")
    manifest = run_prepare(tmp_path, *args)
    degree = frame[frame["part"] == "train"]["item"].value_counts()
    want = {
        part: round(float(degree.reindex(frame.loc[frame["part"] == part, "item"]).mean()), 1)
        for part in ("train", "valid", "test")
    }
    assert manifest["given_popularity"] == want
    assert want["test"] > want["valid"]
    shown = ", ".join(f"{p} {v:,.1f}" for p, v in want.items())
    assert f"mean training users of a row's item: {shown}" in summary(manifest)


def test_one_file_per_part_carves_validation_per_user(tmp_path):
    frame = benchmark_rows(seed=1)
    train = write(tmp_path, frame[frame["part"] != "test"], "train.csv", TIMED_SCHEMA)
    test = write(tmp_path, frame[frame["part"] == "test"], "test.csv", TIMED_SCHEMA)
    args = ("--interactions", train, "--test-interactions", test, "--split", "given")
    manifest = run_prepare(tmp_path, *args, "--schema", str(tmp_path / "schema.yaml"))
    data = load_prepared(Storage(tmp_path / "run"), "given")
    assert pairs(data, "test") == expected(frame, "test")
    assert pairs(data, "train") | pairs(data, "valid") == expected(frame, "train", "valid")
    assert not pairs(data, "train") & pairs(data, "valid") and len(data.valid) > 0
    # Timestamps: each user's validation rows are that user's latest training rows.
    assert manifest["given_valid"] == "latest"
    last_train = pd.Series(data.train.timestamp).groupby(data.train.user_idx).max()
    first_valid = pd.Series(data.valid.timestamp).groupby(data.valid.user_idx).min()
    assert (first_valid >= last_train[first_valid.index]).all()
    # Without timestamps: a seeded per-user draw (seed + 1), the same on every run.
    plain = "interactions:\n  user_id: user\n  item_id: item\n"
    (tmp_path / "plain.yaml").write_text(plain)
    runs = [
        run_prepare(tmp_path, *args, "--schema", str(tmp_path / "plain.yaml"), storage=name)
        for name in ("a", "b")
    ]
    assert runs[0]["given_valid"] == "random"
    a, b = (load_prepared(Storage(tmp_path / n), "given") for n in ("a", "b"))
    assert pairs(a, "valid") == pairs(b, "valid") and pairs(a, "test") == expected(frame, "test")


def test_split_given_keeps_a_train_row_for_every_user():
    users = np.repeat(np.arange(50), np.arange(1, 51))  # users with 1 … 50 rows
    part = np.zeros(len(users), np.int8)
    parts = split_given(users, np.zeros(len(users), np.int64), part, valid_ratio=0.2, seed=42)
    assert set(users[parts.train]) == set(users) and len(parts.test) == 0
    assert abs(len(parts.valid) / len(users) - 0.2) < 0.02
    given_valid = split_given(users, users, np.where(users % 2, 1, 0).astype(np.int8), 0.2)
    assert set(users[given_valid.valid]) == set(users[users % 2 == 1])  # given: kept as is


def test_unknown_part_labels_are_listed_and_counted(tmp_path):
    frame = benchmark_rows()
    frame["part"] = frame["part"].astype(object)
    frame.loc[[3, 7, 11], "part"] = "dev"
    frame.loc[5, "part"] = None
    path = write(tmp_path, frame)
    schema = str(tmp_path / "schema.yaml")
    with pytest.raises(DataError) as err:
        run_prepare(tmp_path, "--interactions", path, "--schema", schema, "--split", "given")
    message = str(err.value)
    assert "interactions.csv: column 'part' (interactions.part): 4 rows have an unknown" in message
    assert (
        "'dev' × 3 (first at line 5)" in message
        and "an empty cell × 1 (first at line 7)" in message
    )
    assert "train, valid, test" in message


def test_a_pair_in_two_parts_names_both_rows(tmp_path):
    frame = benchmark_rows()
    train = write(tmp_path, frame[frame["part"] == "train"], "train.csv")
    test_rows = frame[frame["part"] == "test"].copy()
    test_rows.iloc[0, 1] = int(frame.loc[frame["user"] == test_rows.iloc[0, 0], "item"].iloc[-1])
    test = write(tmp_path, test_rows.drop(columns="part"), "test.csv")
    (tmp_path / "schema.yaml").write_text(TIMED_SCHEMA)
    with pytest.raises(DataError) as err:
        run_prepare(
            tmp_path, "--interactions", train, "--test-interactions", test,
            "--schema", str(tmp_path / "schema.yaml"), "--split", "given",
        )  # fmt: skip
    message = str(err.value)
    assert "1 (user, item) pairs are given in more than one part" in message
    assert f"user {test_rows.iloc[0, 0]!r}" in message
    assert "in train (" in message and "train.csv line" in message
    assert "and test (" in message and "test.csv line 2)" in message


def test_an_empty_train_or_test_part(tmp_path):
    frame = benchmark_rows().assign(part="test")
    path = write(tmp_path, frame)
    schema = str(tmp_path / "schema.yaml")
    with pytest.raises(
        DataError, match=r"no train rows \(column 'part' .*train 0, valid 0, test 270"
    ):
        run_prepare(tmp_path, "--interactions", path, "--schema", schema, "--split", "given")
    write(tmp_path, frame.assign(part="train"))
    with pytest.raises(DataError, match="the given split has no test rows"):
        run_prepare(tmp_path, "--interactions", path, "--schema", schema, "--split", "given")


def test_cold_test_users_and_items_are_an_error_or_counted_drops(tmp_path, caplog):
    frame = benchmark_rows()
    cold = pd.DataFrame(
        [("stranger", 1, "test", 0), ("stranger", 2, "test", 0), ("u00", 999, "test", 0),
         ("u01", 999, "valid", 0)],
        columns=frame.columns,
    )  # fmt: skip
    path = write(tmp_path, pd.concat([frame, cold], ignore_index=True))
    schema = str(tmp_path / "schema.yaml")
    args = ("--interactions", path, "--schema", schema, "--split", "given")
    with pytest.raises(DataError) as err:
        run_prepare(tmp_path, *args)
    message = str(err.value)
    assert "parts given by column 'part' (interactions.part) of " in message
    assert "2 rows (test 2) name a user with no train row (1 user, e.g. 'stranger'" in message
    assert "2 rows (test 1, valid 1) name an item with no train row (1 item, e.g. 999" in message
    assert "interactions.csv line" in message and "'uncovered: drop'" in message
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()  # nothing written

    (tmp_path / "schema.yaml").write_text(SCHEMA + "uncovered: drop\n")
    with caplog.at_level(logging.WARNING):
        manifest = run_prepare(tmp_path, *args)
    assert manifest["drops"]["cold_users"] == 2 and manifest["drops"]["cold_items"] == 2
    assert "dropped 4 valid/test rows" in caplog.text
    data = load_prepared(Storage(tmp_path / "run"), "given")
    assert pairs(data, "test") == expected(frame, "test") and "stranger" not in set(
        data.users["user_id"]
    )


def test_a_failed_prepare_leaves_the_published_data_as_it_was(tmp_path):
    frame = benchmark_rows()
    path = write(tmp_path, frame)
    schema = str(tmp_path / "schema.yaml")
    args = ("--interactions", path, "--schema", schema, "--split", "given")
    first = run_prepare(tmp_path, *args)
    write(tmp_path, frame.assign(part="test"))  # now bad: no train rows
    with pytest.raises(DataError, match="no train rows"):
        run_prepare(tmp_path, *args)
    data = load_prepared(Storage(tmp_path / "run"), "given")  # the first data/, still whole
    assert data.manifest["created_at"] == first["created_at"] and len(data.test) > 0


def test_the_parts_must_be_said_once_and_clearly(tmp_path):
    frame = benchmark_rows()
    path = write(tmp_path, frame)
    schema = str(tmp_path / "schema.yaml")
    with pytest.raises(DataError, match=r"given twice: by the schema's column 'part'"):
        run_prepare(
            tmp_path, "--interactions", path, "--test-interactions", path, "--schema", schema,
            "--split", "given",
        )  # fmt: skip
    with pytest.raises(DataError, match=r"needs each row's part: name its column in the schema"):
        run_prepare(tmp_path, "--interactions", path, "--split", "given")
    with pytest.raises(ValueError, match="prepare it with --split given"):
        prepare.PrepareConfig(interactions=path, test_interactions=path, split="random")
    with pytest.raises(ValueError, match="give --interactions"):
        prepare.PrepareConfig(split="given")
    pipeline = PipelineConfig(interactions=path, test_interactions=path, split="given")
    assert pipeline.prepare_config().part_files == {"test": path}
    assert pipeline.prepare_config().splits == ["given"]
