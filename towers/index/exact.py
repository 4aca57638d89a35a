"""Exact top-k by brute force: tiled ``queries @ embeddings.T`` with torch, then ``topk``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from towers.index.base import IndexMismatchError, ItemIndex, pad_results


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
        return pad_results(np.concatenate(out_s), np.concatenate(out_p), k)

    def _save_payload(self, directory: Path) -> None:
        np.save(directory / "embeddings.npy", self._embeddings.numpy(), allow_pickle=False)

    def _load_payload(self, directory: Path, manifest: dict[str, Any]) -> None:
        embeddings = np.load(directory / "embeddings.npy", allow_pickle=False)
        if embeddings.shape != (self.size, self.dim):
            raise IndexMismatchError(
                f"{directory}: embeddings {embeddings.shape} != ({self.size}, {self.dim})"
            )
        self._embeddings = torch.from_numpy(embeddings)
