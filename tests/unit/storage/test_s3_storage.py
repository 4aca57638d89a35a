"""Storage on object storage: ``s3://`` roots on moto's S3 server, and a checked load that reads
every file once (the digest is checked on the bytes the load downloads)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from towers import artifacts
from towers.data.prepared import load_prepared, read_catalog_tables, write_prepared
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import ArtifactError, Storage

pytestmark = pytest.mark.s3


class CountingReads(pafs.FileSystemHandler):
    """A pyarrow filesystem handler that forwards to ``inner`` and counts each path's opens for
    reading (``open_input_stream`` and ``open_input_file``: every way pyarrow reads a file)."""

    def __init__(self, inner: pafs.FileSystem) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()

    def get_type_name(self) -> str:
        return f"counting-{self.inner.type_name}"

    def equals(self, other) -> bool:
        return self is other

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.inner.delete_file(path)

    def move(self, src, dest):
        self.inner.move(src, dest)

    def copy_file(self, src, dest):
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path):
        self.reads[path] += 1
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        self.reads[path] += 1
        return self.inner.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.inner.open_append_stream(path, metadata=metadata)


def counted(storage: Storage) -> CountingReads:
    """Routes ``storage``'s file access through a read counter (it stays object storage)."""
    handler = CountingReads(storage.fs)
    storage.fs = pafs.PyFileSystem(handler)
    return handler


@pytest.fixture
def s3_run(s3_root, tiny_raw) -> Storage:
    """``data/`` (both splits) and a UserKNN in ``knn/`` on a fresh bucket."""
    storage = Storage(s3_root)
    write_prepared(storage, tiny_raw, "synthetic", ["random", "temporal"], seed=42)
    data = load_prepared(storage, "random")
    artifacts.publish_user_knn(storage, UserKNN(n_neighbors=10).fit(data.full_train))
    return storage


def test_s3_root_is_object_storage_through_the_aws_variables(s3_server, s3_root):
    storage = Storage(s3_root)
    assert isinstance(storage.fs, pafs.S3FileSystem) and not storage.is_local
    assert storage.absolute_uri == s3_root  # what Ray workers are handed
    storage.write_json("x/a.json", {"k": 1})
    storage.publish("x", {"version": "v1"})
    assert storage.read_manifest("x", version="v1")["files"] == {
        "a.json": len(storage.read_bytes("x/a.json"))
    }
    # The objects really are in the S3 server's bucket, reached through its endpoint.
    bucket = s3_root.removeprefix("s3://").split("/")[0]
    direct = pafs.S3FileSystem(
        endpoint_override=s3_server.endpoint,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )
    listed = {i.path for i in direct.get_file_info(pafs.FileSelector(bucket, recursive=True))}
    assert {f"{bucket}/run/x/a.json", f"{bucket}/run/x/manifest.json"} <= listed


def test_checked_load_reads_each_file_once(s3_run):
    manifest = s3_run.read_manifest("knn")
    reads = counted(s3_run)
    knn, version = artifacts.load_user_knn(s3_run)
    expected = {s3_run.path("knn", rel): 1 for rel in [*manifest["files"], "manifest.json"]}
    assert dict(reads.reads) == expected  # the digest check and the load: one read per file
    assert len(version) == 12 and knn.n_users > 0

    reads.reads.clear()
    data = load_prepared(s3_run, "random")
    parts = [f"data/splits/random/{p}.parquet" for p in ("train", "valid", "test")]
    own = ["users.parquet", "items.parquet", "schema.json", "features.json"]
    files = ["data/manifest.json", *(f"data/{f}" for f in own), *parts]
    assert dict(reads.reads) == {s3_run.path(f): 1 for f in files}  # temporal/ never read
    assert len(data.train) > 0

    reads.reads.clear()
    users, items, _ = read_catalog_tables(s3_run)
    assert len(users) and len(items)
    assert max(reads.reads.values()) == 1


def test_checked_copy_refuses_a_damaged_object_and_leaves_no_copy(s3_run):
    manifest = s3_run.read_manifest("knn")
    name = next(iter(manifest["files"]))
    size = manifest["files"][name]
    s3_run.write_bytes(f"knn/{name}", b"x" * size)  # same size: only the digest can tell
    copies: list[Path] = []
    damaged = pytest.raises(ArtifactError, match=f"knn/{name} is damaged or was changed")
    with damaged, s3_run.checked_copy("knn") as (folder, _):
        copies.append(folder)
    with pytest.raises(ArtifactError, match=f"knn/{name} is damaged"):
        artifacts.load_user_knn(s3_run)
    train = "data/splits/random/train.parquet"
    s3_run.write_bytes(train, b"y" * s3_run.read_manifest("data")["files"][train[5:]])
    with pytest.raises(ArtifactError, match="train.parquet is damaged"):
        load_prepared(s3_run, "random")
    assert not copies  # the damage was found before anything was handed out


def test_checked_copy_removes_its_download(s3_run):
    with s3_run.checked_copy("knn") as (folder, manifest):
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([*manifest["files"], "manifest.json"])  # as in the folder
        assert json.loads((folder / "manifest.json").read_text()) == manifest
        arrays = np.load(folder / "arrays.npz", allow_pickle=False)
        assert arrays.files
    assert not folder.exists()


def test_index_published_to_s3_loads_with_its_manifest(s3_root):
    """``index/`` shares the storage manifest with ``ItemIndex.load`` (it reads
    ``index/manifest.json``): the checked copy of an s3:// index carries it, or nothing could be
    served from object storage."""
    from towers.index.factory import make_index

    storage = Storage(s3_root)
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(5, 8))
    index = make_index("exact", 30, model_version="v1")
    index.build(items, np.arange(30))
    artifacts.publish_index(storage, index, user_embeddings=users.astype(np.float32))
    loaded, ids, user_emb = artifacts.load_index(storage, "index", "v1", 8)
    np.testing.assert_array_equal(ids, np.arange(30))
    assert user_emb.shape == (5, 8)
    _, found = loaded.search(items[:3], 1)
    np.testing.assert_array_equal(found[:, 0], (items[:3] @ items.T).argmax(1))  # inner product
