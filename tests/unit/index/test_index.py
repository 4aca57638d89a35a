"""The item index: ScaNN against exact search, exclusion, persistence, refusals, bad input.

Recall bounds (measured on this seeded data; 200 queries from the same Gaussian mixture as the
items): ScaNN brute force returns the exact answer (bound 0.99, measured 1.0); tree + AH at 30k
items with the default settings measured recall 1.0 / 1.0 / 0.9998 for k = 1 / 10 / 50 and 1.0 at
k = 10 with exclusion (bound 0.95).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from towers.artifacts import USER_EMBEDDINGS, publish_index
from towers.index import (
    ExactIndex,
    IncompleteIndexError,
    IndexMismatchError,
    ItemIndex,
    ScannIndex,
    ScannSettings,
    index_recall,
    make_index,
    measure_recall,
)
from towers.storage.root import Storage

DIM = 16
REPO = Path(__file__).resolve().parents[3]
RECALL_BOUND = {"brute_force": 0.99, "tree_ah": 0.95}


def mixture(n: int, n_queries: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, DIM)`` items and ``(n_queries, DIM)`` queries from one 40-cluster Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, DIM)).astype(np.float32)
    x = centers[rng.integers(0, 40, n + n_queries)]
    x += 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    return x[:n], x[n:]


def reference_top_k(items: np.ndarray, queries: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Exact top-k positions by numpy (partition, then sort), excluded positions removed first."""
    scores = queries @ items.T
    for q, excluded in enumerate(exclude or []):
        scores[q, excluded] = -np.inf
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)


def assert_same_top_k(scores: np.ndarray, items, queries, expected: np.ndarray) -> None:
    """Scores equal those of the expected positions: the same top-k up to swapped near-ties."""
    want = (queries[:, None, :] * items[expected]).sum(-1)  # (Q, k)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=[(500, "brute_force"), (30_000, "tree_ah")], ids=str)
def catalog(request):
    """Items, queries, an exact and a ScaNN index in the mode ``auto`` picks for the size."""
    n_items, mode = request.param
    items, queries = mixture(n_items)
    scann = ScannIndex(model_version="v1").build(items)
    assert scann.settings.mode == mode
    return items, queries, ExactIndex(model_version="v1").build(items), scann


@pytest.mark.parametrize("k", [1, 10, 50])
def test_scann_recall_against_exact(catalog, k):
    items, queries, exact, scann = catalog
    exact_scores, exact_ids = exact.search(queries, k)
    assert_same_top_k(exact_scores, items, queries, reference_top_k(items, queries, k))
    scores, ids = scann.search(queries, k)
    assert scores.shape == ids.shape == (len(queries), k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert index_recall(ids, exact_ids) >= RECALL_BOUND[scann.settings.mode]
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first
    np.testing.assert_allclose(scores[:, 0], (queries * items[ids[:, 0]]).sum(1), rtol=1e-4)
    assert scann.is_exact() == (scann.settings.mode == "brute_force")


def test_exclusion_loses_no_recall(catalog):
    items, queries, exact, scann = catalog
    rng = np.random.default_rng(1)
    # Exclude each query's own top-20 plus random items: the hardest case for a shallow search.
    top = reference_top_k(items, queries, 20)
    exclude = [np.union1d(t, rng.choice(len(items), 30)) for t in top]
    expected = reference_top_k(items, queries, 10, exclude)
    for index in (exact, scann):
        scores, ids = index.search(queries, 10, exclude=exclude)
        assert not any(np.isin(row, e).any() for row, e in zip(ids, exclude, strict=True))
        if index.is_exact():
            assert_same_top_k(scores, items, queries, expected)
        else:
            assert index_recall(ids, expected) >= RECALL_BOUND[index.settings.mode]
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        mask = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(exclude))))
        np.testing.assert_array_equal(index.search(queries, 10, exclude=mask)[1], ids)


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_save_load_round_trip_survives_a_move(catalog, kind, tmp_path):
    _, queries, exact, scann = catalog
    index = exact if kind == "exact" else scann
    before = index.search(queries, 10)
    index.save(tmp_path / "index")
    index.save(tmp_path / "index")  # replacing an older index works
    shutil.move(tmp_path / "index", tmp_path / "moved")
    shutil.copytree(tmp_path / "moved", tmp_path / "copied")
    shutil.rmtree(tmp_path / "moved")
    loaded = ItemIndex.load(tmp_path / "copied", expected_version="v1", expected_dim=DIM)
    assert type(loaded) is type(index) and loaded.size == index.size and loaded.dim == DIM
    for got, want in zip(loaded.search(queries, 10), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copied"]  # no temp dirs left


def test_published_index_has_one_manifest_both_readers_accept(catalog, tmp_path):
    _, queries, _, scann = catalog
    storage = Storage(tmp_path / "run")
    users = np.arange(6, dtype=np.float32).reshape(3, 2)  # known-user embeddings ride along
    publish_index(storage, scann, "index", user_embeddings=users, model="model")
    manifest = storage.read_manifest("index", model="model", kind="scann", dim=DIM)
    assert USER_EMBEDDINGS in manifest["files"] and "manifest.json" not in manifest["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing staged left behind
    loaded = ItemIndex.load(storage.path("index"), expected_version="v1", expected_dim=DIM)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], scann.search(queries, 5)[1])
    # Manifests published before they recorded format_version load as format 1.
    del manifest["format_version"]
    storage.write_json("index/manifest.json", manifest)
    assert ItemIndex.load(storage.path("index")).size == scann.size


def test_tune_trades_recall_for_speed_and_is_saved(tmp_path):
    items, queries = mixture(30_000)
    expected = reference_top_k(items, queries, 10)
    index = ScannIndex().build(items)
    default = index_recall(index.search(queries, 10)[1], expected)
    index.tune(num_leaves_to_search=1, reorder_num_neighbors=20)
    shallow = index_recall(index.search(queries, 10)[1], expected)
    assert shallow < default - 0.05  # the knobs act at query time, without a rebuild
    index.save(tmp_path / "ix")
    loaded = ItemIndex.load(tmp_path / "ix")
    assert loaded.settings.num_leaves_to_search == 1
    assert index_recall(loaded.search(queries, 10)[1], expected) == shallow


def test_custom_ids_padding_and_batches():
    items, queries = mixture(300, 20)
    ids = np.arange(300, dtype=np.int64) * 7 + 1000
    for index in (ExactIndex(), ScannIndex()):
        index.build(items, ids)
        scores, got = index.search(queries, 5)
        assert_same_top_k(scores, items, queries, reference_top_k(items, queries, 5))
        assert np.isin(got, ids).all()
        assert_same_top_k(scores, items, queries, (got - 1000) // 7)  # ids name the right items
        batched = index.search_batched(queries, 5, batch_size=3)
        np.testing.assert_array_equal(batched[1], got)
        keep = ids[:4]  # exclude everything but 4 items: one padded slot per query
        _, few = index.search(queries[:2], 5, exclude=[np.setdiff1d(ids, keep)] * 2)
        assert set(few[0, :4]) == set(keep) and few[0, 4] == -1
        scores, padded = index.search(queries[:2], 400)  # k > N
        assert (padded[:, 300:] == -1).all() and np.isneginf(scores[:, 300:]).all()
        assert index.search(queries[:0], 5)[1].shape == (0, 5)


def test_load_refuses_mismatch_and_incomplete(tmp_path):
    items, _ = mixture(100, 1)
    ExactIndex(model_version="v1").build(items).save(tmp_path / "ix")
    with pytest.raises(IndexMismatchError, match="model_version 'v1' != expected 'v2'"):
        ItemIndex.load(tmp_path / "ix", expected_version="v2")
    with pytest.raises(IndexMismatchError, match=f"dim {DIM} != expected 32"):
        ItemIndex.load(tmp_path / "ix", expected_dim=32)
    with pytest.raises(IndexMismatchError, match="'exact' cannot load as scann"):
        ScannIndex.load(tmp_path / "ix")
    shutil.copytree(tmp_path / "ix", tmp_path / "truncated")
    (tmp_path / "truncated" / "embeddings.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(IncompleteIndexError, match=r"embeddings\.npy has 6 bytes"):
        ItemIndex.load(tmp_path / "truncated")
    (tmp_path / "ix" / "ids.npy").unlink()
    with pytest.raises(IncompleteIndexError, match=r"ids\.npy .* is missing"):
        ItemIndex.load(tmp_path / "ix")
    (tmp_path / "ix" / "manifest.json").unlink()
    with pytest.raises(IncompleteIndexError, match="no manifest.json"):
        ItemIndex.load(tmp_path / "ix")
    with pytest.raises(FileExistsError, match="not a saved index"):  # never clobbers other data
        ExactIndex().build(items).save(tmp_path / "ix")


def test_crash_during_save_leaves_the_old_index(tmp_path, monkeypatch):
    items, queries = mixture(100, 5)
    ExactIndex(model_version="old").build(items).save(tmp_path / "ix")

    def crash(self, directory):
        (directory / "embeddings.npy").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ExactIndex, "_save_payload", crash)
    with pytest.raises(OSError, match="disk full"):
        ExactIndex(model_version="new").build(items).save(tmp_path / "ix")
    assert ItemIndex.load(tmp_path / "ix").model_version == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    (tmp_path / "ix" / "manifest.json").write_text("{")
    with pytest.raises(IncompleteIndexError, match="not valid JSON"):
        ItemIndex.load(tmp_path / "ix")


def test_manifest_fields(tmp_path):
    items, queries = mixture(25_000, 50)
    index, exact = ScannIndex(model_version="m7").build(items), ExactIndex().build(items)
    recall = measure_recall(index, exact, queries, k=10)
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["kind"] == "scann" and manifest["model_version"] == "m7"
    assert (manifest["dim"], manifest["size"]) == (DIM, 25_000)
    assert manifest["settings"]["mode"] == "tree_ah"
    assert manifest["settings"]["num_leaves"] == round(25_000**0.5)
    assert manifest["measured_recall"] == {"k": 10, "recall": recall, "n_queries": 50}
    assert not any("tmp" in name for name in manifest["files"])


def test_bad_shapes_and_k_are_refused_with_the_shapes():
    items, queries = mixture(50, 4)
    for index in (ExactIndex().build(items), ScannIndex().build(items)):
        with pytest.raises(ValueError, match=r"queries must be \(Q, 16\), got shape \(4, 8\)"):
            index.search(queries[:, :8], 3)
        with pytest.raises(ValueError, match=r"got shape \(16,\)"):
            index.search(queries[0], 3)
        for k in (0, -1):
            with pytest.raises(ValueError, match=f"k must be a positive integer, got {k}"):
                index.search(queries, k)
        with pytest.raises(ValueError, match="exclude has 1 entries for 4 queries"):
            index.search(queries, 3, exclude=[np.array([1])])
    with pytest.raises(ValueError, match=r"got \(50,\)"):
        ExactIndex().build(items[:, 0])
    with pytest.raises(ValueError, match="distinct"):
        ExactIndex().build(items, np.zeros(50, dtype=np.int64))
    with pytest.raises(RuntimeError, match="call build"):
        ExactIndex().search(queries, 3)


def test_recall_at_k_and_make_index():
    assert index_recall(np.array([[1, 2, 3]]), np.array([[3, 4, -1]])) == 0.5
    with pytest.raises(ValueError, match=r"\(1, 3\), \(2, 3\)"):
        index_recall(np.zeros((1, 3)), np.zeros((2, 3)))
    assert isinstance(make_index("auto", 1_000), ExactIndex)
    assert isinstance(make_index("auto", 50_000), ScannIndex)
    assert (
        make_index(
            "scann", 10, ScannSettings(reorder_num_neighbors=9)
        ).settings.reorder_num_neighbors
        == 9
    )
    with pytest.raises(ValueError, match="kind must be"):
        make_index("faiss", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not apply"):
        make_index("exact", 10, ScannSettings())


def test_index_module_imports_without_scann():
    code = "import towers.index, sys; assert 'scann' not in sys.modules, 'scann imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
