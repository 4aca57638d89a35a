"""Malformed data files get clear errors naming the file: raw MovieLens files and prepared Parquet.

``tests/unit/data/test_movielens.py`` covers empty files, missing columns, non-numeric and
out-of-range ratings, unknown ids, duplicates and fractional ids; these are the hostile cases
beside them (binary junk, wrong separators, ragged rows, broken quoting, NaN/inf, damaged
Parquet, including damage that keeps the file's size, which only the manifest's SHA-256 digests
catch).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.unit.data.test_movielens import write_grouplens_100k, write_ml1m, write_ml_csv
from towers.data.movielens import read_folder
from towers.data.prepared import load_prepared, write_prepared
from towers.data.raw import DataError
from towers.data.synthetic import SyntheticSpec, generate
from towers.data.validation import validate_raw
from towers.storage.root import ArtifactError, Storage

WRITERS = {"ml-100k": write_grouplens_100k, "ml-1m": write_ml1m, "ml-latest-small": write_ml_csv}


@pytest.mark.parametrize(
    ("dataset", "file", "content", "message"),
    [
        ("ml-100k", "u.data", b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 20, "non-numeric values"),
        ("ml-100k", "u.data", b"1\t10\t5\n2\t10\t3\t881250950\t9\t9\n", "cannot parse"),
        ("ml-100k", "u.data", b"1,10,5,881250949\n", "column 'user' has 1 non-numeric"),
        ("ml-100k", "u.data", b"1\t10\tnan\t881250949\n", "column 'rating' has 1 non-numeric"),
        ("ml-100k", "u.item", b"\x00\x01\x02", "column 'item_id' has 1 non-numeric"),
        ("ml-100k", "u.user", b"", "file is empty"),
        ("ml-100k", "u.user", b"1|abc|M|technician|85711\n", "column 'age' has 1 non-numeric"),
        ("ml-1m", "ratings.dat", b"1:10:5:978300760\n", "non-numeric"),
        ("ml-latest-small", "movies.csv", b'movieId,title,genres\n10,"Open,Comedy\n', "parse"),
        (
            "ml-latest-small",
            "ratings.csv",
            b"userId,movieId,rating,timestamp\n1,10,inf,9\n",
            "not finite",
        ),
    ],
)
def test_malformed_raw_files_name_file_and_problem(tmp_path, dataset, file, content, message):
    folder = WRITERS[dataset](tmp_path / "raw")
    (folder / file).write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        validate_raw(read_folder(folder, dataset))
    assert file in str(err.value) or str(folder) in str(err.value)


@pytest.mark.parametrize(
    "line",
    ["99999999999999999999999\t10\t5\t881250949", "1\t10\t5\t99999999999999999999999"],
    ids=["user_id", "timestamp"],
)
def test_numbers_beyond_int64_are_refused_as_written(tmp_path, line):
    folder = write_grouplens_100k(tmp_path / "raw")
    (folder / "u.data").write_text(line + "\n")
    with pytest.raises(DataError, match="99999999999999999999999"):
        validate_raw(read_folder(folder, "ml-100k"))


@pytest.fixture
def prepared(tmp_path) -> Storage:
    storage = Storage(tmp_path / "run")
    raw = generate(SyntheticSpec(n_users=50, n_items=60, n_interactions=1000, seed=7))
    write_prepared(storage, raw, "synthetic", ["random"], seed=42)
    return storage


def test_damaged_prepared_parquet_is_refused_naming_the_file(prepared):
    train = Path(prepared.path("data/splits/random/train.parquet"))
    size = train.stat().st_size
    train.write_bytes(b"x" * 10)  # truncated: the manifest's size check
    with pytest.raises(ArtifactError, match="train.parquet has 10 bytes, manifest says"):
        load_prepared(prepared)
    train.write_bytes(b"x" * size)  # same size, not Parquet: the manifest's SHA-256
    with pytest.raises(ArtifactError, match="train.parquet is damaged or was changed"):
        load_prepared(prepared)
    Path(prepared.path("data/manifest.json")).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_prepared(prepared)


def test_same_size_corruption_is_detected(prepared):
    """Byte flips at ~46 positions of a split file: every one is refused, none loads as other
    numbers. (Before manifests recorded SHA-256 digests, 14 of 46 loaded silently.)"""
    train = Path(prepared.path("data/splits/random/train.parquet"))
    before = pd.read_parquet(train)
    raw = bytearray(train.read_bytes())
    outcomes = []
    for start in range(4, len(raw) - 200, 97):
        damaged = bytearray(raw)
        damaged[start : start + 16] = bytes(b ^ 0xFF for b in raw[start : start + 16])
        train.write_bytes(bytes(damaged))
        try:
            load_prepared(prepared)
            outcomes.append("same" if pd.read_parquet(train).equals(before) else "silent")
        except ArtifactError as err:
            assert "train.parquet is damaged" in str(err)
            outcomes.append("refused")
    assert set(outcomes) == {"refused"}, outcomes
