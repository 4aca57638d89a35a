"""The item index interface and its on-disk format; the kinds are in ``exact`` and ``scann``.

After tensorflow/recommenders' ``factorized_top_k``: ``build(embeddings, ids)`` once, then
``search(queries, k, exclude) -> (scores, ids)``. Subclasses register themselves by ``kind`` so
that ``ItemIndex.load`` rebuilds the right one from a manifest.

On disk an index is a directory: ``ids.npy``, the payload (``embeddings.npy`` or the serialized
ScaNN searcher under ``searcher/``) and ``manifest.json``, written last into a staged sibling
directory that is then renamed into place, so a half-written index is never taken for complete.
No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from towers.storage.atomic import staged_directory

MANIFEST = "manifest.json"
IDS_FILE = "ids.npy"
FORMAT_VERSION = 1  # bump when the on-disk layout changes; load refuses newer formats
Exclude = list[np.ndarray] | sp.csr_matrix | None


class IndexMismatchError(ValueError):
    """A stored index does not match what the caller expects (model version, dimension, kind)."""


class IncompleteIndexError(IndexMismatchError):
    """A stored index is missing its manifest or a file the manifest lists (or one is truncated)."""


def index_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
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


def pad_results(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mark non-finite scores as padding and widen ``(B, k')`` results to ``(B, k)``."""
    missing = ~np.isfinite(scores)
    scores, positions = scores.astype(np.float32), positions.astype(np.int64)
    scores[missing], positions[missing] = -np.inf, -1
    extra = k - scores.shape[1]
    if extra > 0:
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, extra)), constant_values=-1)
    return scores, positions


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

        Everything goes into a staged sibling directory (``towers.storage.atomic``),
        ``manifest.json`` last, which is then renamed to ``path``. A directory at ``path``
        without a manifest is never overwritten.
        """
        if self._ids is None:
            raise RuntimeError("cannot save an empty index: call build() first")
        target = Path(path)
        if target.exists() and not (target / MANIFEST).is_file():
            raise FileExistsError(f"{target} exists and is not a saved index; refusing to replace")
        with staged_directory(target) as tmp:
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
