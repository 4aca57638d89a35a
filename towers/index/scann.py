"""Approximate top-k with ScaNN, configured by ScaNN's rules of thumb for the catalog size.

ScaNN is imported lazily inside :class:`ScannIndex` only, so ``towers`` imports without it.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from towers.index.base import IndexMismatchError, ItemIndex, pad_results


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
            scores[rows], positions[rows] = pad_results(s, p, k)
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
        return pad_results(np.asarray(dist), np.asarray(idx, dtype=np.int64), k)

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
