"""Storage manifests, atomic publishing, path safety, and the prepare job end to end."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from ray_jobs import prepare
from towers.data.prepared import load_prepared
from towers.storage.root import ArtifactError, Storage


def digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def test_manifest_published_last_and_checked(tmp_path):
    s = Storage(tmp_path)
    s.begin_artifact("model")
    s.write_bytes("model/weights.bin", b"12345")
    with pytest.raises(ArtifactError, match="'model' is incomplete"):
        s.read_manifest("model")
    s.publish("model", {"version": "v1", "dim": 8})
    assert s.read_manifest("model", dim=8)["files"] == {"weights.bin": 5}
    with pytest.raises(ArtifactError, match="has dim=8, expected 16"):
        s.read_manifest("model", dim=16)
    manifest = s.read_manifest("model")
    assert manifest["sha256"] == {"weights.bin": hashlib.sha256(b"12345").hexdigest()}
    (tmp_path / "model" / "weights.bin").write_bytes(b"12346")  # same size, other bytes
    with pytest.raises(ArtifactError, match="weights.bin is damaged or was changed"):
        s.read_manifest("model")
    assert s.read_manifest("model", checksums=False)["version"] == "v1"  # sizes only
    legacy = {k: v for k, v in manifest.items() if k != "sha256"}  # written before digests
    s.write_json("model/manifest.json", legacy)
    assert s.read_manifest("model")["files"] == {"weights.bin": 5}
    (tmp_path / "model" / "weights.bin").write_bytes(b"12")  # truncated behind our back
    with pytest.raises(ArtifactError, match="has 2 bytes, manifest says 5"):
        s.read_manifest("model")
    (tmp_path / "model" / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match="lacks file weights.bin"):
        s.read_manifest("model")
    with pytest.raises(ArtifactError, match="'index' is missing"):
        s.read_manifest("index")


def test_republishing_marks_incomplete_first(tmp_path):
    s = Storage(tmp_path)
    s.write_bytes("a/x", b"1")
    s.publish("a", {})
    s.begin_artifact("a")  # a crash after this point leaves no manifest
    assert not s.is_complete("a")


def test_paths_cannot_escape_the_root(tmp_path):
    s = Storage(tmp_path / "root")
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="escapes the storage root"):
            s.path(bad)
    assert s.path("a/./b") == f"{s.root}/a/b"


def test_storage_uri_scheme(tmp_path):
    s = Storage(f"file://{tmp_path}/viauri")
    s.write_json("x/y.json", {"a": 1})
    assert s.read_json("x/y.json") == {"a": 1}
    assert (tmp_path / "viauri" / "x" / "y.json").exists()


def test_prepare_ml100k_is_byte_identical_across_runs(tmp_path, ml100k_dir):
    args = ["--dataset", "ml-100k", "--data-dir", str(ml100k_dir)]
    m1 = prepare.run(
        prepare.parse_config(prepare.PrepareConfig, [*args, "--storage", str(tmp_path / "a")])
    )
    prepare.run(
        prepare.parse_config(prepare.PrepareConfig, [*args, "--storage", str(tmp_path / "b")])
    )
    assert digest(tmp_path / "a" / "data") == digest(tmp_path / "b" / "data")
    assert (m1["n_interactions"], m1["n_users"], m1["n_items"], m1["features"]["items"]) == (
        100_000,
        943,
        1_682,
        ["genres", "year"],
    )
    counts = m1["split_counts"]["random"]
    assert counts["train"] + counts["valid"] == 75_066 and counts["test"] == 24_934
    manifest = json.loads((tmp_path / "a" / "data" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["seed"] == 42
    assert set(manifest["files"]) >= {
        "users.parquet",
        "items.parquet",
        "splits/random/test.parquet",
    }


def test_load_prepared(tiny_storage, tiny_data):
    d = tiny_data
    assert d.split == "random"
    assert d.n_users == 120 and d.n_items == 200
    assert len(d.full_train) == len(d.train) + len(d.valid)
    assert d.features.n_items == 200 and d.features.item_profiles()[0][0] == "genres"
    assert d.schema.users is not None and d.has_ratings
    assert d.train.rating.dtype == np.float32
    temporal = load_prepared(tiny_storage, "temporal")
    assert len(temporal.test) != len(d.test)
    with pytest.raises(ArtifactError, match="no data/manifest.json"):
        load_prepared(Storage(tiny_storage.root + "-empty"))


def test_prepare_synthetic_and_unprepared_split(tmp_path):
    cfg = prepare.parse_config(
        prepare.PrepareConfig,
        [
            "--dataset",
            "synthetic",
            "--synthetic-users",
            "50",
            "--synthetic-items",
            "60",
            "--synthetic-interactions",
            "1500",
            "--split",
            "temporal",
            "--storage",
            str(tmp_path),
        ],
    )
    manifest = prepare.run(cfg)
    assert manifest["splits"] == ["temporal"]
    with pytest.raises(ArtifactError, match="split 'random' was not prepared"):
        load_prepared(Storage(tmp_path), "random")


def test_prepare_cli_help_and_errors():
    out = subprocess.run(
        [sys.executable, "-m", "ray_jobs.prepare", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--dataset", "--data-dir", "--split", "--storage", "--seed", "--valid-ratio"):
        assert option in out
    bad = subprocess.run(
        [sys.executable, "-m", "ray_jobs.prepare", "--split", "sideways"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--split: unknown ['sideways']" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "ray_jobs.prepare", "--seed", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid int value" in bad.stderr


def test_absolute_uri_for_workers_in_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Storage("rel/run").absolute_uri == str(tmp_path / "rel" / "run")
    assert Storage(f"file://{tmp_path}/x").absolute_uri == f"file://{tmp_path}/x"


def test_fields_added_to_a_published_manifest_keep_its_checks(tmp_path):
    s = Storage(tmp_path)
    s.write_bytes("model/weights.bin", b"12345")
    published = s.publish("model", {"version": "v1"})
    added = s.add_to_manifest("model", inputs="abc")
    assert s.read_manifest("model", inputs="abc", version="v1") == added
    assert {k: v for k, v in added.items() if k != "inputs"} == published  # the rest as published
    (tmp_path / "model" / "weights.bin").write_bytes(b"12346")
    with pytest.raises(ArtifactError, match="weights.bin is damaged"):
        s.read_manifest("model")
    with pytest.raises(ArtifactError, match="'index' is missing"):
        s.add_to_manifest("index", inputs="abc")
