"""bench/gowalla.py on tiny LightGCN-format files: the published parts come out as prepared."""

from __future__ import annotations

import pytest

from bench import gowalla
from ray_jobs import prepare
from towers.data.prepared import load_prepared
from towers.storage.root import Storage

TRAIN = "0 0 1 2 3 4 5 6 7 8 9\n1 2 3 4 5 6 7 8 9 10 11\n2 0 2 4 6 8 10 11 1 3 5\n"
TEST = "0 10 11\n1 0 1\n2 7 9\n"


def test_lightgcn_files_become_the_given_split(tmp_path, capsys):
    (tmp_path / "train.txt").write_text(TRAIN)
    (tmp_path / "test.txt").write_text(TEST)
    out = tmp_path / "out"
    gowalla.main(["--source", str(tmp_path), "--out", str(out)])
    assert "{'users': 3, 'items': 12, 'train': 30, 'test': 6}" in capsys.readouterr().out
    manifest = prepare.run(
        prepare.PrepareConfig(
            storage=str(tmp_path / "run"),
            interactions=str(out / "interactions.parquet"),
            schema=str(out / "schema.yaml"),
            split="given",
        )
    )
    assert manifest["split_counts"]["given"] == {"train": 27, "valid": 3, "test": 6}
    assert manifest["given_valid"] == "random"  # no timestamps: a seeded per-user draw
    data = load_prepared(Storage(tmp_path / "run"), "given")
    test = set(zip(data.test.user_idx.tolist(), data.test.item_idx.tolist(), strict=True))
    assert test == {(0, 10), (0, 11), (1, 0), (1, 1), (2, 7), (2, 9)}  # ids are 0.. already


def test_a_line_that_is_not_ids_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("0 1 2\n1 x 3\n")
    with pytest.raises(ValueError, match=r"train.txt: line 2: not integer ids"):
        gowalla.read_lines(tmp_path / "train.txt")
