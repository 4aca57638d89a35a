"""Top-k item retrieval by maximum inner product: one interface, an exact and a ScaNN index.

After tensorflow/recommenders' ``factorized_top_k``: ``build(embeddings, ids)`` once, then
``search(queries, k, exclude) -> (scores, ids)``. ``ExactIndex`` is brute force (a torch matmul,
batched over queries to bound memory); ``ScannIndex`` wraps a ScaNN searcher whose configuration
follows ScaNN's rules of thumb for the catalog size. ScaNN is imported lazily inside
``ScannIndex`` only, so ``towers`` imports without it.

On disk an index is a directory: ``ids.npy``, the payload (``embeddings.npy`` or the serialized
ScaNN searcher under ``searcher/``) and ``manifest.json``, written last into a temporary sibling
directory that is then renamed into place, so a half-written index is never taken for complete.
No pickle anywhere.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import uuid
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from towers.storage import Storage

MANIFEST = "manifest.json"
IDS_FILE = "ids.npy"
FORMAT_VERSION = 1  # bump when the on-disk layout changes; load refuses newer formats
Exclude = list[np.ndarray] | sp.csr_matrix | None


class IndexMismatchError(ValueError):
    """A stored index does not match what the caller expects (model version, dimension, kind)."""


class IncompleteIndexError(IndexMismatchError):
    """A stored index is missing its manifest or a file the manifest lists (or one is truncated)."""


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact top-k ids that the approximate search also returned.

    Args:
        approx_ids: ``(Q, k')`` ids returned by the index under test (``-1`` is padding).
        exact_ids: ``(Q, k)`` ids returned by exact search (``-1`` padding is not counted).

    Returns:
        ``|approx ∩ exact| / |exact|`` summed over all queries (1.0 when nothing is relevant).
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or len(approx_ids) != len(exact_ids):
        raise ValueError(
            f"need (Q, k') approx and (Q, k) exact ids, got {approx_ids.shape}, {exact_ids.shape}"
        )
    valid = exact_ids >= 0
    found = (exact_ids[:, :, None] == approx_ids[:, None, :]).any(axis=2) & valid  # (Q, k)
    return float(found.sum() / valid.sum()) if valid.any() else 1.0


class ItemIndex(ABC):
    """Maximum-inner-product top-k search over item embeddings; subclasses pick the algorithm.

    Attributes:
        model_version: version of the model whose item embeddings were indexed (saved in the
            manifest, checked by ``load(expected_version=...)``).
        measured_recall: optional ``{"k", "recall", "n_queries"}`` from ``measure_recall``.
    """

    kind: ClassVar[str]
    _kinds: ClassVar[dict[str, type[ItemIndex]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ItemIndex._kinds[cls.kind] = cls

    def __init__(self, model_version: str | None = None) -> None:
        self.model_version = model_version
        self.measured_recall: dict[str, float] | None = None
        self._ids: np.ndarray | None = None  # (N,) int64, position -> item id
        self._id_order: np.ndarray | None = None  # (N,) argsort of _ids, for id -> position
        self._dim = 0

    @property
    def dim(self) -> int:
        """Embedding dimension D (0 before ``build``)."""
        return self._dim

    @property
    def size(self) -> int:
        """Number of indexed items N (0 before ``build``)."""
        return 0 if self._ids is None else len(self._ids)

    @abstractmethod
    def is_exact(self) -> bool:
        """Whether ``search`` returns the true top-k."""

    @abstractmethod
    def settings_dict(self) -> dict[str, Any]:
        """JSON-serializable settings saved in the manifest."""

    @abstractmethod
    def _build(self, embeddings: np.ndarray) -> None:
        """Index ``(N, D)`` float32 embeddings (ids are already stored)."""

    @abstractmethod
    def _search_positions(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over positions: ``(B, D)`` queries, ``(B, N)`` exclusion mask or None ->
        ``(scores (B, k) float32, positions (B, k) int64)``, padded with ``-inf`` / ``-1``."""

    @abstractmethod
    def _save_payload(self, directory: Path) -> None:
        """Write everything but ids and manifest into ``directory``."""

    @abstractmethod
    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        """Restore what ``_save_payload`` wrote."""

    def build(self, embeddings: np.ndarray, ids: np.ndarray | None = None) -> ItemIndex:
        """Index item embeddings.

        Args:
            embeddings: ``(N, D)`` finite floats (stored as float32), N >= 1.
            ids: ``(N,)`` distinct non-negative integer item ids; defaults to ``arange(N)``.

        Returns:
            ``self``, for chaining.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
            raise ValueError(f"embeddings must be (N, D) with N, D >= 1, got {embeddings.shape}")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or inf")
        n_items = embeddings.shape[0]
        ids = np.arange(n_items, dtype=np.int64) if ids is None else np.asarray(ids)
        if ids.shape != (n_items,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be ({n_items},) integers, got {ids.shape} {ids.dtype}")
        if ids.min() < 0 or len(np.unique(ids)) != n_items:
            raise ValueError("ids must be distinct and non-negative (-1 marks padding)")
        self._ids, self._dim = ids.astype(np.int64), embeddings.shape[1]
        self._id_order = None
        self._build(embeddings)
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product for each query; see ``search_batched``."""
        return self.search_batched(queries, k, exclude)

    def search_batched(
        self, queries: np.ndarray, k: int, exclude: Exclude = None, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product, processing ``batch_size`` queries at a time.

        Args:
            queries: ``(Q, D)`` query embeddings.
            k: number of items per query, >= 1.
            exclude: items never to return per query (e.g. already seen): a list of Q arrays of
                item ids, or a ``(Q, >max id)`` CSR matrix whose row q's column indices are item
                ids. Ids not in the index are ignored. Search goes deeper by the number of
                excluded items, so exclusion costs no recall.
            batch_size: queries per block (bounds memory).

        Returns:
            ``(scores, ids)``, ``(Q, k)`` float32 and int64, best first; padded with score
            ``-inf`` and id ``-1`` where fewer than k items are left.
        """
        if self._ids is None:
            raise RuntimeError(f"{type(self).__name__} is empty: call build() or load() first")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}), got shape {queries.shape}")
        if not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or inf")
        mask = self._exclusion_mask(exclude, len(queries))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            block = slice(start, start + batch_size)
            scores[block], positions[block] = self._search_positions(
                np.ascontiguousarray(queries[block]), int(k), None if mask is None else mask[block]
            )
        ids = np.where(positions >= 0, self._ids[np.maximum(positions, 0)], -1)
        return scores, ids

    def _exclusion_mask(self, exclude: Exclude, n_queries: int) -> sp.csr_matrix | None:
        """Turn per-query excluded ids into a deduplicated ``(Q, N)`` CSR mask over positions."""
        if exclude is None:
            return None
        if sp.issparse(exclude):
            coo = sp.coo_matrix(exclude)
            if coo.shape[0] != n_queries:
                raise ValueError(f"exclude has {coo.shape[0]} rows for {n_queries} queries")
            rows, excluded_ids = coo.row, coo.col.astype(np.int64)
        else:
            if len(exclude) != n_queries:
                raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries")
            lists = [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
            rows = np.repeat(np.arange(n_queries), [len(e) for e in lists])
            excluded_ids = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        if self._id_order is None:
            self._id_order = np.argsort(self._ids)
        order = self._id_order
        sorted_ids = self._ids[order]
        where = np.minimum(np.searchsorted(sorted_ids, excluded_ids), len(sorted_ids) - 1)
        known = sorted_ids[where] == excluded_ids
        mask = sp.csr_matrix(
            (np.ones(known.sum(), dtype=np.int8), (rows[known], order[where[known]])),
            shape=(n_queries, self.size),
        )
        mask.sum_duplicates()  # an id listed twice is excluded once, and counted once
        return mask

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to local directory ``path`` atomically (replacing an older index).

        Everything goes into a temporary sibling directory, ``manifest.json`` last, which is then
        renamed to ``path``. A directory at ``path`` without a manifest is never overwritten.
        """
        if self._ids is None:
            raise RuntimeError("cannot save an empty index: call build() first")
        target = Path(path)
        if target.exists() and not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} exists and is not a saved index; refusing to replace")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            np.save(tmp / IDS_FILE, self._ids, allow_pickle=False)
            self._save_payload(tmp)
            files = {
                p.relative_to(tmp).as_posix(): p.stat().st_size
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "model_version": self.model_version,
                "dim": self.dim,
                "size": self.size,
                "settings": self.settings_dict(),
                "measured_recall": self.measured_recall,
                "files": files,
            }
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_version: str | None = None,
        expected_dim: int | None = None,
    ) -> ItemIndex:
        """Read an index written by ``save``; the manifest says which kind to rebuild.

        Raises:
            IncompleteIndexError: the manifest or a file it lists is missing or truncated.
            IndexMismatchError: kind, model version or dimension differ from what was expected.
        """
        directory = Path(path)
        if not (directory / MANIFEST).is_file():
            raise IncompleteIndexError(f"no {MANIFEST} in {directory}: not a complete index")
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except json.JSONDecodeError as err:
            raise IncompleteIndexError(
                f"{directory}: {MANIFEST} is not valid JSON ({err})"
            ) from err
        # Storage manifests published before they carried format_version hold format 1.
        manifest.setdefault("format_version", 1)
        required = {"kind", "model_version", "dim", "size", "settings", "files"}
        if missing := sorted(required - manifest.keys()):
            raise IncompleteIndexError(f"{directory}: {MANIFEST} lacks fields {missing}")
        if manifest["format_version"] > FORMAT_VERSION:
            raise IndexMismatchError(
                f"{directory}: format_version {manifest['format_version']} is newer than the "
                f"supported {FORMAT_VERSION}"
            )
        for name, n_bytes in manifest["files"].items():
            file = directory / name
            if not file.is_file():
                raise IncompleteIndexError(f"{directory}: {name} (listed in {MANIFEST}) is missing")
            if file.stat().st_size != n_bytes:
                raise IncompleteIndexError(
                    f"{directory}: {name} has {file.stat().st_size} bytes, manifest says {n_bytes}"
                )
        kind = manifest["kind"]
        target_cls = ItemIndex._kinds.get(kind)
        if target_cls is None or (cls is not ItemIndex and cls is not target_cls):
            raise IndexMismatchError(f"{directory}: index kind {kind!r} cannot load as {cls.kind}")
        if expected_version is not None and manifest["model_version"] != expected_version:
            raise IndexMismatchError(
                f"{directory}: model_version {manifest['model_version']!r} != expected "
                f"{expected_version!r}"
            )
        if expected_dim is not None and manifest["dim"] != expected_dim:
            raise IndexMismatchError(
                f"{directory}: dim {manifest['dim']} != expected {expected_dim}"
            )
        ids = np.load(directory / IDS_FILE, allow_pickle=False)
        if ids.shape != (manifest["size"],):
            raise IndexMismatchError(f"{directory}: ids shape {ids.shape}, size {manifest['size']}")
        index = target_cls.from_settings(manifest["settings"], manifest["model_version"])
        index._ids, index._dim = ids.astype(np.int64), int(manifest["dim"])
        index.measured_recall = manifest.get("measured_recall")
        index._load_payload(directory, manifest)
        return index

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: dict[str, Any], model_version: str | None) -> ItemIndex:
        """An empty index of this kind with the saved settings."""


def _pad(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mark non-finite scores as padding and widen ``(B, k')`` results to ``(B, k)``."""
    missing = ~np.isfinite(scores)
    scores, positions = scores.astype(np.float32), positions.astype(np.int64)
    scores[missing], positions[missing] = -np.inf, -1
    extra = k - scores.shape[1]
    if extra > 0:
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, extra)), constant_values=-1)
    return scores, positions


class ExactIndex(ItemIndex):
    """Brute-force top-k: ``queries @ embeddings.T`` with torch (all cores), then ``topk``.

    Scores are computed in ``(query_block, item_block)`` tiles that stay in cache; each tile keeps
    its own top-k and the tiles' winners are merged. This avoids writing a ``(B, N)`` score matrix
    to memory, which bounds the speed of the one-big-matmul version at N = 1M.

    Args:
        model_version: see ``ItemIndex``.
        query_block: queries per tile.
        item_block: items per tile.
    """

    kind = "exact"

    def __init__(
        self, model_version: str | None = None, query_block: int = 128, item_block: int = 32_768
    ) -> None:
        super().__init__(model_version)
        self.query_block, self.item_block = query_block, item_block
        self._embeddings: torch.Tensor | None = None  # (N, D) float32

    def is_exact(self) -> bool:
        return True

    def settings_dict(self) -> dict[str, Any]:
        return {"query_block": self.query_block, "item_block": self.item_block}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], model_version: str | None) -> ExactIndex:
        return cls(model_version, **settings)

    def _build(self, embeddings: np.ndarray) -> None:
        self._embeddings = torch.from_numpy(embeddings.copy())

    def _search_positions(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        out_s, out_p = [], []
        for start in range(0, len(queries), self.query_block):
            block = torch.from_numpy(queries[start : start + self.query_block])  # (B, D)
            masked = None if exclude is None else exclude[start : start + self.query_block].tocoo()
            tile_s, tile_p = [], []
            for first in range(0, self.size, self.item_block):
                scores = block @ self._embeddings[first : first + self.item_block].T  # (B, C)
                if masked is not None:
                    inside = (masked.col >= first) & (masked.col < first + scores.shape[1])
                    rows, cols = masked.row[inside], masked.col[inside] - first
                    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -math.inf
                top = torch.topk(scores, min(k, scores.shape[1]), dim=1)  # (B, k)
                tile_s.append(top.values)
                tile_p.append(top.indices + first)
            merged_s, merged_p = torch.cat(tile_s, dim=1), torch.cat(tile_p, dim=1)
            top = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)  # sorted, best first
            out_s.append(top.values.numpy())
            out_p.append(torch.gather(merged_p, 1, top.indices).numpy())
        return _pad(np.concatenate(out_s), np.concatenate(out_p), k)

    def _save_payload(self, directory: Path) -> None:
        np.save(directory / "embeddings.npy", self._embeddings.numpy(), allow_pickle=False)

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        embeddings = np.load(directory / "embeddings.npy", allow_pickle=False)
        if embeddings.shape != (self.size, self.dim):
            raise IndexMismatchError(
                f"{directory}: embeddings {embeddings.shape} != ({self.size}, {self.dim})"
            )
        self._embeddings = torch.from_numpy(embeddings)


@dataclass(frozen=True)
class ScannSettings:
    """ScaNN configuration; ``None`` fields are derived from the catalog size by ``resolve``.

    After ScaNN's docs/algorithms.md rules of thumb: brute force under 20k items; above, tree
    partitioning with about sqrt(N) leaves, asymmetric hashing (AH) with 2 dimensions per block and
    anisotropic quantization threshold 0.2, then exact reordering. ScaNN also suggests AH without a
    tree between 20k and 100k; at 30k x 32 clustered items we measured tree + AH both faster and
    more accurate (AH on raw vectors lacks the residual quantization that a tree gives it), so
    ``auto`` never picks ``ah``. ``num_leaves_to_search`` and ``reorder_num_neighbors`` act at
    query time: ``ScannIndex.tune`` changes them without a rebuild.
    """

    mode: Literal["auto", "brute_force", "ah", "tree_ah"] = "auto"  # auto: by catalog size
    brute_force_below: int = 20_000  # ScaNN: "fewer than 20k points, use brute-force"
    num_leaves: int | None = None  # None: round(sqrt(N)), ScaNN's advice
    num_leaves_to_search: int | None = None  # None: leaves_to_search_fraction * num_leaves
    leaves_to_search_fraction: float = 0.2  # tuned with bench/bench_index.py at 1M x 64
    training_sample_size: int | None = None  # None: min(N, 250_000) points to train tree and AH
    dimensions_per_block: int = 2  # ScaNN: "dimensions_per_block should be set to 2"
    anisotropic_quantization_threshold: float = 0.2  # ScaNN's recommended value for MIPS
    reorder_num_neighbors: int = 500  # candidates rescored exactly; raised to >= 4x search depth
    search_threads: int = 0  # 0: all cores
    training_threads: int = 0  # 0: all cores

    def resolve(self, n_items: int) -> ScannSettings:
        """Concrete settings for a catalog of ``n_items`` (no ``auto`` / ``None`` left)."""
        mode = self.mode
        if mode == "auto":
            mode = "brute_force" if n_items < self.brute_force_below else "tree_ah"
        leaves = self.num_leaves or max(1, min(n_items, round(math.sqrt(n_items))))
        to_search = self.num_leaves_to_search or max(
            1, round(leaves * self.leaves_to_search_fraction)
        )
        sample = self.training_sample_size or min(n_items, 250_000)
        return replace(
            self,
            mode=mode,
            num_leaves=leaves,
            num_leaves_to_search=min(to_search, leaves),
            training_sample_size=sample,
        )


class ScannIndex(ItemIndex):
    """Approximate top-k with ScaNN (``dot_product``); exact in ``brute_force`` mode.

    Args:
        settings: ScaNN configuration; resolved against the catalog size at ``build``.
        model_version: see ``ItemIndex``.
    """

    kind = "scann"

    def __init__(
        self, settings: ScannSettings | None = None, model_version: str | None = None
    ) -> None:
        super().__init__(model_version)
        self.settings = settings or ScannSettings()
        self._searcher: Any = None  # scann.scann_ops_pybind.ScannSearcher

    def is_exact(self) -> bool:
        return self.settings.mode == "brute_force"

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], model_version: str | None) -> ScannIndex:
        return cls(ScannSettings(**settings), model_version)

    def _build(self, embeddings: np.ndarray) -> None:
        from scann.scann_ops.py import scann_ops_pybind  # lazy: towers imports without scann

        s = self.settings = self.settings.resolve(len(embeddings))
        builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
        builder.set_n_training_threads(s.training_threads)
        if s.mode == "brute_force":
            builder = builder.score_brute_force()
        else:
            if s.mode == "tree_ah":
                builder = builder.tree(
                    num_leaves=s.num_leaves,
                    num_leaves_to_search=s.num_leaves_to_search,
                    training_sample_size=s.training_sample_size,
                )
            builder = builder.score_ah(
                s.dimensions_per_block,
                anisotropic_quantization_threshold=s.anisotropic_quantization_threshold,
                training_sample_size=s.training_sample_size,
            ).reorder(s.reorder_num_neighbors)
        self._searcher = builder.build()
        self._set_threads()

    def tune(
        self, num_leaves_to_search: int | None = None, reorder_num_neighbors: int | None = None
    ) -> ScannIndex:
        """Change the query-time knobs (no rebuild); ``None`` keeps the current value."""
        self.settings = replace(
            self.settings,
            num_leaves_to_search=num_leaves_to_search or self.settings.num_leaves_to_search,
            reorder_num_neighbors=reorder_num_neighbors or self.settings.reorder_num_neighbors,
        )
        return self

    def _set_threads(self) -> None:
        self._searcher.set_num_threads(self.settings.search_threads or os.cpu_count() or 1)

    def _search_positions(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n_items = self.size
        if exclude is None:
            return self._scann_search(queries, min(k, n_items), k)
        # Search k + |excluded| deep so that k items survive the filter. Queries are grouped by
        # depth rounded up to a power of two, so one heavy user does not deepen the whole batch.
        need = k + np.diff(exclude.indptr)
        depth = np.minimum(n_items, 2 ** np.ceil(np.log2(need)).astype(np.int64))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        coo = exclude.tocoo()
        excluded_keys = coo.row.astype(np.int64) * n_items + coo.col  # (query, position) pairs
        for d in np.unique(depth):
            rows = np.flatnonzero(depth == d)
            s, p = self._scann_search(queries[rows], int(d), int(d))
            excluded = np.isin(rows[:, None] * n_items + p, excluded_keys)
            keep = (p >= 0) & ~excluded
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept first, rank preserved
            s, p = np.take_along_axis(s, order, 1), np.take_along_axis(p, order, 1)
            dropped = ~np.take_along_axis(keep, order, 1)
            s[dropped], p[dropped] = -np.inf, -1
            scores[rows], positions[rows] = _pad(s, p, k)
        return scores, positions

    def _scann_search(
        self, queries: np.ndarray, depth: int, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN top-``depth`` as ``(B, k)`` padded scores and positions (NaN marks no result)."""
        s, pre_reorder, leaves = self.settings, None, None
        if s.mode != "brute_force":  # rescoring more candidates keeps a deep k accurate
            pre_reorder = max(s.reorder_num_neighbors, 4 * depth)
        if s.mode == "tree_ah":
            leaves = s.num_leaves_to_search
        idx, dist = self._searcher.search_batched_parallel(
            queries, depth, pre_reorder_num_neighbors=pre_reorder, leaves_to_search=leaves
        )
        return _pad(np.asarray(dist), np.asarray(idx, dtype=np.int64), k)

    def _save_payload(self, directory: Path) -> None:
        (directory / "searcher").mkdir()
        # relative_path=True: assets are named relative to the directory, so the index survives
        # the rename from the temporary directory and any later move or copy.
        self._searcher.serialize(str(directory / "searcher"), relative_path=True)

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        from scann.scann_ops.py import scann_ops_pybind  # lazy: towers imports without scann

        searcher_dir = directory / "searcher"
        # load_searcher would unpickle this file; we never write it, so refuse it outright.
        if (searcher_dir / "scann_docids.pkl").exists():
            raise IndexMismatchError(f"{searcher_dir}: unexpected scann_docids.pkl (no pickle)")
        self._searcher = scann_ops_pybind.load_searcher(str(searcher_dir))
        if self._searcher.size() != self.size:
            raise IndexMismatchError(
                f"{directory}: searcher holds {self._searcher.size()} items, ids {self.size}"
            )
        self._set_threads()


def publish_saved_index(
    folder: str | os.PathLike[str], storage: Storage, artifact: str, **fields: Any
) -> dict[str, Any]:
    """Uploads the index saved in local ``folder`` (``ItemIndex.save``) as ``artifact`` and
    publishes it, with the other files put in ``folder`` since (known-user embeddings).

    One ``manifest.json`` serves both readers: the storage manifest carries the index's own
    fields (what ``ItemIndex.load`` reads), ``fields``, and the storage's file sizes and digests.
    """
    own = json.loads((Path(folder) / MANIFEST).read_text())
    del own["files"]  # the storage manifest lists every uploaded file
    storage.begin_artifact(artifact)
    storage.upload_dir(Path(folder), artifact, exclude={MANIFEST})
    return storage.publish(artifact, {**own, **fields})


def make_index(
    kind: Literal["exact", "scann", "auto"],
    n_items: int,
    settings: ScannSettings | None = None,
    model_version: str | None = None,
) -> ItemIndex:
    """An empty index suited to a catalog of ``n_items``.

    ``auto`` picks ``ExactIndex`` below ``settings.brute_force_below`` items (where ScaNN would
    brute-force too, so the optional dependency buys nothing) and ``ScannIndex`` above; without
    ScaNN installed it warns and falls back to exact search.
    """
    if kind == "exact":
        if settings is not None:
            raise ValueError("settings are ScaNN settings; they do not apply to kind='exact'")
        return ExactIndex(model_version)
    if kind == "scann":
        return ScannIndex(settings, model_version)
    if kind != "auto":
        raise ValueError(f"kind must be 'exact', 'scann' or 'auto', got {kind!r}")
    if n_items < (settings or ScannSettings()).brute_force_below:
        return ExactIndex(model_version)
    if importlib.util.find_spec("scann") is None:
        warnings.warn(
            f"scann is not installed; using exact search over {n_items} items", stacklevel=2
        )
        return ExactIndex(model_version)
    return ScannIndex(settings, model_version)


def measure_recall(index: ItemIndex, exact: ExactIndex, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of ``index`` against ``exact`` on sample ``(Q, D)`` queries; stored on ``index``."""
    recall = recall_at_k(index.search(queries, k)[1], exact.search(queries, k)[1])
    index.measured_recall = {"k": k, "recall": recall, "n_queries": len(queries)}
    return recall
