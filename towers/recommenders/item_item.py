"""Item-item reference baselines: EASE where the catalog fits in memory, ItemKNN above it.

Both score a user by the items in their training history through an ``items × items`` weight
matrix ``W``: ``score(u) = x_u W`` with ``x_u`` the user's 0/1 row of the training matrix ``X``
(ratings are ignored: these are implicit-feedback models on the binary matrix).

* :class:`EASE` (Steck 2019, "Embarrassingly Shallow Autoencoders"): the closed form
  ``P = (XᵀX + λI)⁻¹``, ``B = I - P · diag(1 / diag(P))`` (so ``diag(B) = 0``). ``W = B`` is a
  dense ``n × n`` float32 matrix: the Gram matrix is built in row blocks and inverted in place
  (LAPACK ``spotrf``/``spotri``), so a fit holds one ``n × n`` float32 array (``4 n²`` bytes:
  0.59 GB at 12,101 items, 1.6 GB at 20,000, 6.7 GB at 40,981), and so does the λ search, which
  rebuilds the Gram matrix for each λ. Time is ``O(n³)`` and is what limits it: see
  :data:`EASE_MAX_ITEMS`. float32 is accurate enough: against float64 at λ = 5 (below any λ
  chosen) on Beauty, ``B`` differs by 1e-6 and validation NDCG@10 by 2e-5.
* :class:`ItemKNN`: each item's ``n_neighbors`` most similar items by the cosine of their 0/1
  user columns with shrinkage, ``sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink)``, kept
  in a sparse ``n × n`` matrix; a user's score of item ``j`` sums ``sim(i, j)`` over the history
  items ``i`` that have ``j`` among their neighbours. Items no history item reaches get ``-inf``
  (never recommended), as UserKNN's unreachable items do. Memory is ``O(n · n_neighbors)``
  plus one block of the similarity matrix at a time.

Both are fitted in memory-bounded blocks, score a batch of users with one product (a single user
is a batch of one), and save/load through ``towers.storage.formats``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from towers.data.interactions import Interactions
from towers.progress import progress
from towers.recommenders.base import Recommender
from towers.recommenders.neighbor_search import MIN_SIMILARITY, _top_n_sorted
from towers.storage.formats import read_model_dir, write_model_dir

# Largest catalog EASE is used for (ItemKNN above). Memory, one float32 n × n array, would allow
# ~40k items on a 24 GiB machine (6.7 GB); time decides: a fit is O(n³), ~25 s of one core at
# 12,101 items (Beauty; 23–36 s wall on this 2-core machine, 35–63 s under load), so ~2 min at
# 20,000 and ~16 min at 40,981 (n³ from Beauty; a Gowalla fit, 40,981 items, had not finished
# after 8 CPU-minutes). The λ search fits 3–4 times, ~8 min of one core at this limit.
EASE_MAX_ITEMS = 20_000
# Cells of one block of the dense Gram or similarity matrix built at a time (float32: 32 MB).
BLOCK_CELLS = 8_000_000


def binary_matrix(train: Interactions) -> sp.csr_matrix:
    """``(n_users, n_items)`` float32 0/1 matrix ``X`` of training interactions."""
    return train.to_csr(binary=True).astype(np.float32)


def gram_matrix(x: sp.csr_matrix, block_cells: int = BLOCK_CELLS) -> np.ndarray:
    """``(n_items, n_items)`` float32 ``XᵀX`` (co-occurrence counts), built a row block at a time.

    The sparse product of a whole popular catalog can hold more entries than the dense result,
    so each block of rows is multiplied and densified on its own.
    """
    n_items = x.shape[1]
    xt = sp.csr_matrix(x.T)
    gram = np.empty((n_items, n_items), np.float32)
    rows = max(1, block_cells // max(n_items, 1))
    for start in progress(range(0, n_items, rows), f"EASE Gram matrix (blocks of {rows:,} items)"):
        stop = min(start + rows, n_items)
        gram[start:stop] = (xt[start:stop] @ x).toarray()
    return gram


def ease_weights(gram: np.ndarray, l2: float, out: np.ndarray | None = None) -> np.ndarray:
    """EASE's ``B = I - P · diag(1 / diag(P))`` with ``P = (G + λI)⁻¹``, in float32.

    Args:
        gram: ``(n, n)`` float32 ``XᵀX``; left unchanged unless it is ``out``.
        l2: ``λ > 0``.
        out: ``(n, n)`` float32 C-contiguous array to work in (``gram`` itself to overwrite it, so
            a refit needs one ``n × n`` array); a new one when None.

    Returns:
        ``(n, n)`` float32 ``B`` (``out``), zero diagonal; column ``j`` weighs item ``j``'s score.
    """
    if l2 <= 0:
        raise ValueError(f"EASE needs l2 > 0 (the Gram matrix is singular), got {l2}")
    n = gram.shape[0]
    work = np.empty_like(gram) if out is None else out
    if work is not gram:
        np.copyto(work, gram)
    work[np.diag_indices(n)] += np.float32(l2)
    # LAPACK is column-major: the C array's transpose is the same symmetric matrix without a
    # copy. Its "lower" triangle is the C array's upper one, which potri leaves filled.
    factor, info = lapack.spotrf(work.T, lower=1, overwrite_a=1, clean=0)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0 or not np.shares_memory(factor, work):
        raise np.linalg.LinAlgError(f"EASE: Cholesky inverse of G + {l2} I failed (info {info})")
    _mirror_upper(work)
    diag = work.diagonal().copy()  # (n,) diag(P) > 0 for a positive definite matrix
    work /= -diag[None, :]  # column j divided by P_jj
    work[np.diag_indices(n)] = 0.0
    return work


def _mirror_upper(matrix: np.ndarray, block_cells: int = BLOCK_CELLS) -> None:
    """Copies the upper triangle of a square C array onto its lower one, a row block at a time."""
    n = matrix.shape[0]
    rows = max(1, block_cells // max(n, 1))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = matrix[start:stop, start:stop]
        block[...] = np.triu(block) + np.triu(block, 1).T
        matrix[start:stop, :start] = matrix[:start, start:stop].T


def item_neighbors(
    x: sp.csr_matrix, n_neighbors: int, shrink: float = 0.0, block_cells: int = BLOCK_CELLS
) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``n_neighbors`` most similar other items by shrunk cosine (see module doc).

    Args:
        x: ``(n_users, n_items)`` 0/1 training matrix.
        n_neighbors: neighbours per item (capped at ``n_items - 1``).
        shrink: ``≥ 0`` added to the cosine's denominator (damps pairs of rare items).
        block_cells: items × items similarities held at once.

    Returns:
        ``(neighbors, similarities)``, both ``(n_items, n)``, by descending similarity (ties to
        the lower index, so the first ``m`` of ``n`` are the top ``m``); ``-1``/``0`` where fewer
        items share a user.
    """
    if shrink < 0:
        raise ValueError(f"shrink must be >= 0, got {shrink}")
    n_items = x.shape[1]
    n = max(1, min(n_neighbors, n_items - 1))
    xt = sp.csr_matrix(x.T)
    norms = np.sqrt(np.asarray(xt.sum(axis=1), np.float64).ravel())  # (n_items,) sqrt(|U_i|)
    neighbors = np.full((n_items, n), -1, np.int64)
    sims = np.zeros((n_items, n), np.float32)
    if n_items < 2:
        return neighbors, sims
    rows = max(1, block_cells // n_items)
    for start in progress(range(0, n_items, rows), f"ItemKNN neighbours (blocks of {rows:,})"):
        items = np.arange(start, min(start + rows, n_items))
        counts = (xt[items] @ x).toarray()  # (B, n_items) co-occurrences
        values = (counts / (norms[items, None] * norms[None, :] + shrink + 1e-12)).astype(
            np.float32
        )
        values[np.arange(len(items)), items] = -np.inf  # never one's own neighbour
        cols, top = _top_n_sorted(values, n)
        valid = top >= MIN_SIMILARITY
        neighbors[items] = np.where(valid, cols, -1)
        sims[items] = np.where(valid, top, 0.0)
    return neighbors, sims


def neighbor_weights(neighbors: np.ndarray, similarities: np.ndarray, n: int) -> sp.csr_matrix:
    """``(n_items, n_items)`` float32 sparse ``W``: row ``i`` holds ``i``'s first ``n`` neighbours.

    Args:
        neighbors: ``(n_items, N)`` from :func:`item_neighbors`, ``N >= n``.
        similarities: ``(n_items, N)`` their similarities.
        n: neighbours kept per item.
    """
    neighbors, similarities = neighbors[:, :n], similarities[:, :n]
    keep = neighbors >= 0
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    n_items = len(neighbors)
    return sp.csr_matrix(
        (similarities[keep], neighbors[keep], indptr), shape=(n_items, n_items), dtype=np.float32
    )


class _ItemItem(Recommender):
    """Shared scoring ``X[users] @ W`` over a fitted ``(n_items, n_items)`` weight matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.weights_: np.ndarray | sp.csr_matrix | None = None  # (I, I) W

    def _set_weights(self, train: Interactions, weights: np.ndarray | sp.csr_matrix) -> None:
        if weights.shape != (train.n_items, train.n_items):
            raise ValueError(f"item weights {weights.shape} != ({train.n_items},) * 2")
        self._set_train(train)
        self.weights_ = weights

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` users → ``(U, n_items)`` float32 ``x_u W``."""
        user_idx = self.check_users(user_idx)
        assert self.weights_ is not None
        history = self.seen_matrix()[user_idx]  # (U, I) 0/1
        scores = history @ self.weights_
        return np.asarray(scores.toarray() if sp.issparse(scores) else scores, np.float32)


class EASE(_ItemItem):
    """EASE: a dense item-item linear model with a closed form (see the module docstring).

    Args:
        l2: the ridge penalty λ; larger values shrink ``B`` towards popularity.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0) -> None:  # Steck's value on ML-20M; tuned in practice
        super().__init__()
        if l2 <= 0:
            raise ValueError(f"EASE needs l2 > 0, got {l2}")
        self.l2 = float(l2)

    @property
    def params(self) -> dict[str, float]:
        return {"l2": self.l2}

    def fit(self, train: Interactions) -> EASE:
        gram = gram_matrix(binary_matrix(train))
        return self.fit_from_gram(train, gram, overwrite=True)

    def fit_from_gram(self, train: Interactions, gram: np.ndarray, overwrite: bool = False) -> EASE:
        """Fits from a precomputed :func:`gram_matrix` of ``train`` (the λ search shares one).

        Args:
            overwrite: work in ``gram`` itself (it becomes ``B``) instead of a copy.
        """
        weights = ease_weights(gram, self.l2, out=gram if overwrite else None)
        self._set_weights(train, weights)
        return self

    def save(self, path: str | Path) -> None:
        train = self._require_fitted()
        config = {"n_users": train.n_users, "n_items": train.n_items, **self.params}
        write_model_dir(path, self.name, config, {**train.to_arrays(), "weights": self.weights_})

    @classmethod
    def load(cls, path: str | Path) -> EASE:
        config, arrays = read_model_dir(path, cls.name)
        train = Interactions.from_arrays(arrays, config["n_users"], config["n_items"])
        model = cls(config["l2"])
        model._set_weights(train, np.ascontiguousarray(arrays["weights"], np.float32))
        return model


class ItemKNN(_ItemItem):
    """Item-item kNN on 0/1 data with shrunk cosine similarity (see the module docstring).

    Args:
        n_neighbors: neighbours kept per item.
        shrink: added to the cosine's denominator; 0 is the plain cosine.
    """

    name = "item_knn"

    def __init__(self, n_neighbors: int = 100, shrink: float = 0.0) -> None:  # tuned in practice
        super().__init__()
        if n_neighbors < 1 or shrink < 0:
            raise ValueError(
                f"ItemKNN needs n_neighbors >= 1, shrink >= 0: {n_neighbors}, {shrink}"
            )
        self.n_neighbors = int(n_neighbors)
        self.shrink = float(shrink)

    @property
    def params(self) -> dict[str, int | float]:
        return {"n_neighbors": self.n_neighbors, "shrink": self.shrink}

    def fit(self, train: Interactions) -> ItemKNN:
        neighbors, sims = item_neighbors(binary_matrix(train), self.n_neighbors, self.shrink)
        return self.fit_from_neighbors(train, neighbors, sims)

    def fit_from_neighbors(
        self, train: Interactions, neighbors: np.ndarray, similarities: np.ndarray
    ) -> ItemKNN:
        """Fits from :func:`item_neighbors` output for at least ``n_neighbors`` (same shrink)."""
        self._set_weights(train, neighbor_weights(neighbors, similarities, self.n_neighbors))
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` users → ``(U, n_items)`` float32 summed similarities; ``-inf`` where no
        history item has the item among its neighbours (similarities are positive)."""
        scores = super().score(user_idx)
        scores[scores <= 0] = -np.inf
        return scores

    def save(self, path: str | Path) -> None:
        train = self._require_fitted()
        weights = self.weights_
        assert isinstance(weights, sp.csr_matrix)
        config = {"n_users": train.n_users, "n_items": train.n_items, **self.params}
        arrays = {
            **train.to_arrays(),
            "weights_indptr": weights.indptr,
            "weights_indices": weights.indices,
            "weights_data": weights.data,
        }
        write_model_dir(path, self.name, config, arrays)

    @classmethod
    def load(cls, path: str | Path) -> ItemKNN:
        config, arrays = read_model_dir(path, cls.name)
        n_items = config["n_items"]
        train = Interactions.from_arrays(arrays, config["n_users"], n_items)
        weights = sp.csr_matrix(
            (arrays["weights_data"], arrays["weights_indices"], arrays["weights_indptr"]),
            shape=(n_items, n_items),
        )
        model = cls(config["n_neighbors"], config["shrink"])
        model._set_weights(train, weights)
        return model
