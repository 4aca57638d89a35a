"""UserKNN's neighbour search: each user's ``n`` most similar users, in memory-bounded blocks.

Two searches over the unit rows ``R`` (``users × items``, see ``user_knn.unit_rows``), whose dot
products are the similarities:

* ``exact``: ``R[block] @ R.T`` for a block of users at a time, a dense GEMM on small data and a
  sparse product otherwise. Its cost is the number of (user, user, shared item) triples,
  ``sum_i degree(i)^2``, which popular items make quadratic in the data: an ML-25M-shaped set
  (160k users, 18.7M training pairs, items seen by up to 112k users) has 2.9e11 of them, hours on
  two cores.
* ``projected``: the same top-``n`` search on a rank-``d`` projection ``E = R V`` where ``V``
  holds the top ``d`` right singular vectors of ``R`` (a randomized SVD, Halko et al. 2011).
  ``E E^T = U_d S_d^2 U_d^T`` is the best rank-``d`` approximation of the similarity matrix
  ``R R^T``, so the search is a blocked dense GEMM plus ``torch.topk``: ``2 U^2 d`` flops,
  multithreaded, whatever the item degrees (run in bfloat16). The projected similarities
  ``E_u · E_v`` only choose ``candidates × n`` users per user, whose exact similarities are
  then computed (``O(candidates · n · nnz per user)``) and decide the ``n`` neighbours, so the
  weights are exact cosines and only the neighbour *set* is approximate:
  :func:`neighbor_recall` measures how many of the exact neighbours it finds on a sample of
  users (``bench/bench_scale.py``'s knn step reports it).

``top_neighbors(search="auto")`` takes the exact search while its pair count
(``sum_i degree(i)^2``) is at most :data:`EXACT_MAX_PAIRS` (about three minutes of the exact
search on two cores) and the projected one above. ML-100K (9.5e6 pairs in its random split's
train ∪ valid) and the ML-1M-shaped synthetic set stay exact, so their results are unchanged;
docs/SCALE.md lists the sizes measured.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

from towers.progress import progress

SEARCHES = ("auto", "exact", "projected")
# float32 products of vectors that barely overlap leave rounding noise around 0; LensKit drops
# |sim| < 1e-10 in float64, we drop below 1e-6 in float32.
MIN_SIMILARITY = 1e-6
# Dense GEMM is ~2x faster than sparse×sparse at ML-1M size; above this many user×item cells the
# dense copy of the rating matrix would cost too much memory and the sparse product is used.
_DENSE_CELLS = 50_000_000
# Cells of one block of the user×user similarity matrix (float32 ⇒ 32 MB for the exact search,
# bfloat16 ⇒ 256 MB for the projected one, whose GEMM wants tall blocks).
_BLOCK_CELLS = 8_000_000
_PROJECTED_BLOCK_CELLS = 2**27
# (user, user, item) triples above which "auto" projects: ~1e10 take a few minutes exactly here.
EXACT_MAX_PAIRS = 20_000_000_000
DEFAULT_RANK = 128  # projection rank d
DEFAULT_CANDIDATES = 2  # projected search: candidates per user, as a multiple of n
_RESCORE_USERS = 64  # users whose candidates are rescored at once (64 x C rows of R)


def pair_count(rows: sp.csr_matrix) -> int:
    """``sum_i degree(i)^2``: the multiply-adds of the exact sparse similarity product."""
    degree = np.bincount(rows.indices, minlength=rows.shape[1]).astype(np.int64)
    return int((degree**2).sum())


def resolve_search(rows: sp.csr_matrix, search: str) -> str:
    """``"exact"`` or ``"projected"`` for ``search`` (``"auto"`` decides by :func:`pair_count`)."""
    if search not in SEARCHES:
        raise ValueError(f"neighbour search must be one of {SEARCHES}, got {search!r}")
    if search != "auto":
        return search
    return "exact" if pair_count(rows) <= EXACT_MAX_PAIRS else "projected"


def _top_n_sorted(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``n`` entries of each row, sorted descending; ties go to the lower column index.

    The tie rule makes the top ``m < n`` equal the first ``m`` of the top ``n``, which lets
    ``tune_user_knn`` compute neighbours once for the largest ``n_neighbors``.

    Args:
        values: ``(B, M)`` float32.
        n: ``1 <= n <= M``.

    Returns:
        ``(columns, values)``, both ``(B, n)``.
    """
    n_rows, n_cols = values.shape
    threshold = np.partition(values, n_cols - n, axis=1)[:, n_cols - n, None]  # n-th largest
    above = values > threshold
    at = values == threshold
    needed = n - above.sum(axis=1, keepdims=True)
    chosen = above | at
    crowded = at.sum(axis=1) > needed[:, 0]  # more ties at the threshold than places left
    if crowded.any():
        first_ties = np.cumsum(at[crowded], axis=1) <= needed[crowded]
        chosen[crowded] = above[crowded] | (at[crowded] & first_ties)
    cols = np.nonzero(chosen)[1].reshape(n_rows, n)  # exactly n per row, ascending columns
    top = np.take_along_axis(values, cols, axis=1)
    order = np.lexsort((cols, -top), axis=1)
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(top, order, axis=1)


def exact_similarities(rows: sp.csr_matrix, users: np.ndarray, dense: np.ndarray | None = None):
    """``(B, U)`` float32 exact similarities of ``users`` to everyone, ``-inf`` for themselves.

    ``dense`` is the optional dense copy of ``rows`` (the GEMM path).
    """
    sims = dense[users] @ dense.T if dense is not None else (rows[users] @ rows.T).toarray()
    sims = np.asarray(sims, np.float32)
    sims[np.arange(len(users)), users] = -np.inf  # never one's own neighbour
    return sims


def _exact_neighbors(rows: sp.csr_matrix, n: int, out: tuple[np.ndarray, np.ndarray]) -> None:
    n_users, n_items = rows.shape
    dense = rows.toarray() if n_users * n_items <= _DENSE_CELLS else None
    block = max(1, _BLOCK_CELLS // n_users)
    blocks = range(0, n_users, block)
    for start in progress(blocks, f"UserKNN neighbours (blocks of {block:,} users)"):
        users = np.arange(start, min(start + block, n_users))
        cols, top = _top_n_sorted(exact_similarities(rows, users, dense), n)
        _store(out, users, cols, top)


def _store(out: tuple[np.ndarray, np.ndarray], users: np.ndarray, cols, top) -> None:
    """Writes a block's neighbours, ``-1``/``0`` where the similarity is below MIN_SIMILARITY."""
    valid = top >= MIN_SIMILARITY
    out[0][users] = np.where(valid, cols, -1)
    out[1][users] = np.where(valid, top, 0.0)


def projection(rows: sp.csr_matrix, rank: int, n_iter: int = 2, seed: int = 0) -> np.ndarray:
    """``(U, d)`` float32 ``R V``: the rows projected on their top ``d`` right singular vectors.

    A randomized range finder with ``n_iter`` power iterations (Halko, Martinsson and Tropp
    2011, Algorithm 4.4) over multithreaded sparse × dense products; ``d`` is capped at
    ``min(U, I)``.
    """
    n_users, n_items = rows.shape
    rank = min(rank, n_users, n_items)
    oversampled = min(rank + 10, n_users, n_items)

    def as_torch(m: sp.csr_matrix) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": used for mm only
            warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(m.indptr.astype(np.int64)),
                torch.from_numpy(m.indices.astype(np.int64)),
                torch.from_numpy(m.data.astype(np.float32)),
                size=m.shape,
                check_invariants=False,  # SciPy's canonical CSR (sorted, in range) by construction
            )

    r, r_t = as_torch(rows), as_torch(rows.T.tocsr())
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(n_items, oversampled, generator=generator)  # (I, d + p)
    basis, _ = torch.linalg.qr(r @ basis)  # (U, d + p)
    for _ in range(n_iter):
        basis, _ = torch.linalg.qr(r_t @ basis)  # (I, d + p)
        basis, _ = torch.linalg.qr(r @ basis)  # (U, d + p)
    small = (r_t @ basis).T  # (d + p, I) = Q^T R
    _, _, v_t = torch.linalg.svd(small, full_matrices=False)  # R ≈ Q U_s S V^T
    return (r @ v_t[:rank].T.contiguous()).numpy()  # (U, d)


def exact_pair_similarities(rows: sp.csr_matrix, users: np.ndarray, candidates: np.ndarray):
    """``(B, C)`` float32 exact similarities of each of ``users`` to its ``C`` candidates.

    An elementwise product of the candidates' rows with the repeated user rows (SciPy's sorted
    merge, linear in their stored entries) summed per row: ``O(B C nnz)`` instead of the full
    product's ``O(sum_i degree(i)^2)``.
    """
    n_users, n_candidates = candidates.shape
    theirs = rows[candidates.ravel()]  # (B C, I)
    ours = rows[np.repeat(users, n_candidates)]  # (B C, I)
    sims = np.asarray(theirs.multiply(ours).sum(axis=1), np.float32).reshape(n_users, n_candidates)
    sims[candidates == users[:, None]] = -np.inf  # padding candidates point at the user itself
    return sims


def _projected_neighbors(
    rows: sp.csr_matrix, n: int, rank: int, n_candidates: int, out: tuple[np.ndarray, np.ndarray]
) -> None:
    # bf16 GEMM and topk run ~7x faster than fp32 here (AVX512-BF16); the rounding only affects
    # which users become candidates, whose similarities are then recomputed exactly.
    embeddings = torch.from_numpy(projection(rows, rank)).to(torch.bfloat16)  # (U, d)
    n_users = len(embeddings)
    n_candidates = min(max(n_candidates, n), n_users - 1)
    block = max(1, _PROJECTED_BLOCK_CELLS // n_users)
    blocks = range(0, n_users, block)

    def rescore(users: np.ndarray, candidates: np.ndarray) -> None:
        exact = exact_pair_similarities(rows, users, candidates)
        cols, top = _top_n_sorted(exact, n)
        _store(out, users, np.take_along_axis(candidates, cols, axis=1), top)

    # SciPy's sparse kernels release the GIL: the rescoring runs on every core in threads.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in progress(blocks, f"UserKNN neighbours (blocks of {block:,} users)"):
            users = np.arange(start, min(start + block, n_users))
            sims = embeddings[start : start + len(users)] @ embeddings.T  # (B, U) bf16
            sims[torch.arange(len(users)), torch.from_numpy(users)] = -torch.inf
            candidates = torch.topk(sims, n_candidates, dim=1, sorted=False)[1].numpy()  # (B, C)
            candidates.sort(axis=1)  # ties in the exact scores go to the lower user index
            parts = range(0, len(users), _RESCORE_USERS)
            chunks = [
                (users[s : s + _RESCORE_USERS], candidates[s : s + _RESCORE_USERS]) for s in parts
            ]
            list(pool.map(lambda chunk: rescore(*chunk), chunks))


def top_neighbors(
    rows: sp.csr_matrix,
    n: int,
    search: str = "auto",
    rank: int = DEFAULT_RANK,
    candidates: int = DEFAULT_CANDIDATES,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``n`` most similar other users with positive similarity.

    Args:
        rows: ``(U, I)`` unit rows from ``user_knn.unit_rows``.
        n: neighbours kept per user.
        search: ``"exact"``, ``"projected"`` (rank-``rank`` projection, see the module
            docstring) or ``"auto"`` (exact up to :data:`EXACT_MAX_PAIRS`).
        rank: projection rank of the projected search.
        candidates: projected search: users per user taken from the projection, as a multiple
            of ``n``, whose exact similarities decide the ``n`` neighbours.

    Returns:
        ``(neighbors, similarities)``, both ``(U, n')`` with ``n' = min(n, U - 1)``: int32 user
        indices sorted by descending float32 similarity, padded with ``-1``/``0`` where a user has
        fewer than ``n'`` users above ``MIN_SIMILARITY``.
    """
    search = resolve_search(rows, search)
    n_users = rows.shape[0]
    n = min(n, max(n_users - 1, 0))
    out = (np.full((n_users, n), -1, np.int32), np.zeros((n_users, n), np.float32))
    if n == 0:
        return out
    if search == "exact":
        _exact_neighbors(rows, n, out)
    else:
        _projected_neighbors(rows, n, rank, candidates * n, out)
    return out


def neighbor_recall(
    rows: sp.csr_matrix, neighbors: np.ndarray, users: np.ndarray, n: int | None = None
) -> float:
    """Share of the exact top-``n`` neighbours of ``users`` that ``neighbors`` holds.

    Args:
        rows: ``(U, I)`` unit rows the neighbours were searched on.
        neighbors: ``(U, n')`` from :func:`top_neighbors` (any search).
        users: the sample of users to check (the exact search costs ``len(users)`` rows).
        n: neighbours compared (default: all ``n'``).

    Returns:
        ``sum |approx ∩ exact| / sum |exact|`` over ``users``, exact neighbours being those above
        ``MIN_SIMILARITY`` (1.0 when none has any).
    """
    n = neighbors.shape[1] if n is None else min(n, neighbors.shape[1])
    found = expected = 0
    for start in range(0, len(users), 256):
        batch = users[start : start + 256]
        cols, top = _top_n_sorted(exact_similarities(rows, batch), n)
        for exact, valid, approx in zip(
            cols, top >= MIN_SIMILARITY, neighbors[batch, :n], strict=True
        ):
            found += len(np.intersect1d(exact[valid], approx[approx >= 0]))
            expected += int(valid.sum())
    return found / expected if expected else 1.0
