"""User-user k-nearest-neighbour recommender after LensKit's ``UserUser``, vectorised with SciPy.

Two modes, as in LensKit:

* ``explicit``: ratings are centred on each user's mean, similarity is the cosine of the centred
  vectors, and the score of item ``i`` for user ``u`` is the predicted rating
  ``mean_u + sum_v sim(u, v) (r_vi - mean_v) / sum_v |sim(u, v)|``.
* ``implicit``: interactions are 0/1, similarity is their cosine, and the score is
  ``sum_v sim(u, v)``.

In both, ``v`` runs over the neighbours of ``u`` that interacted with ``i``. Only positive
similarities at least ``min_sim`` count (as in LensKit), and an item reached by fewer than
``min_nbrs`` neighbours gets no score: it is never recommended (``-inf``), and its predicted rating
falls back to the user's mean (the global mean for a user with no training ratings).

One deliberate difference from LensKit: LensKit takes, for each item, the ``n_neighbors`` most
similar users *among those who rated that item*; here each user has one fixed set of its
``n_neighbors`` most similar users (a sparse ``users × users`` matrix), so that scoring every item
for a batch of users is one sparse product. The two agree when every neighbour rated the item and
differ for rare items, which the fixed set reaches through fewer neighbours.

``predict_ratings`` works in both modes: the implicit mode uses its 0/1 neighbourhood with the
explicit mode's mean-centred weighted average, so rating metrics exist whichever mode tuning picks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from towers.data.interactions import Interactions
from towers.recommenders.base import Recommender
from towers.recommenders.neighbor_search import (
    DEFAULT_CANDIDATES,
    DEFAULT_RANK,
    MIN_SIMILARITY,
    SEARCHES,
    top_neighbors,
)
from towers.storage.formats import read_model_dir, write_model_dir

MODES = ("explicit", "implicit")


def unit_rows(train: Interactions, mode: str) -> sp.csr_matrix:
    """Rows of the ``(n_users, n_items)`` matrix whose dot products are the similarities.

    Explicit: ratings minus the user's mean; implicit: 1s. Each row is scaled to unit L2 norm
    (all-zero rows stay zero, so such users have no neighbours).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "explicit":
        rows = centered_ratings(train, user_means(train)[0])
    else:
        rows = train.to_csr(binary=True)
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ rows, dtype=np.float32)


def user_means(train: Interactions) -> tuple[np.ndarray, float]:
    """``(n_users,)`` float64 mean rating per user (global mean where a user has none), global."""
    global_mean = float(train.rating.mean()) if len(train) else 0.0
    sums = np.bincount(train.user_idx, weights=train.rating, minlength=train.n_users)
    counts = np.bincount(train.user_idx, minlength=train.n_users)
    means = np.full(train.n_users, global_mean)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means, global_mean


def centered_ratings(train: Interactions, means: np.ndarray) -> sp.csr_matrix:
    """``(n_users, n_items)`` float32 ``r_ui - mean_u`` (zeros that equal the mean stay stored)."""
    values = (train.rating - means[train.user_idx]).astype(np.float32)
    shape = (train.n_users, train.n_items)
    return sp.csr_matrix((values, (train.user_idx, train.item_idx)), shape=shape)


def neighbor_matrix(
    neighbors: np.ndarray, similarities: np.ndarray, n: int, min_sim: float
) -> sp.csr_matrix:
    """``(U, U)`` float32 sparse weights: the first ``n`` neighbours with ``similarity >= min_sim``.

    Row order follows ``neighbors`` (descending similarity), so equal inputs give equal products.
    """
    neighbors, similarities = neighbors[:, :n], similarities[:, :n]
    keep = (neighbors >= 0) & (similarities >= min_sim)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    n_users = len(neighbors)
    return sp.csr_matrix(
        (similarities[keep], neighbors[keep], indptr), shape=(n_users, n_users), dtype=np.float32
    )


class UserKNN(Recommender):
    """User-user kNN with LensKit's explicit and implicit modes (see the module docstring).

    Args:
        n_neighbors: neighbours kept per user.
        min_sim: smallest similarity that makes a neighbour (non-positive ones never do).
        min_nbrs: neighbours who interacted with an item needed to score it.
        mode: ``"explicit"`` (centred ratings, weighted average) or ``"implicit"`` (0/1, sum).
        search: neighbour search, ``"auto"`` (exact on small data, projected on large; see
            ``towers.recommenders.neighbor_search``), ``"exact"`` or ``"projected"``.
        rank: projection rank of the projected search.
        candidates: projected search: candidates per user from the projection, as a multiple of
            ``n_neighbors``, rescored exactly.
    """

    name = "user_knn"

    def __init__(
        self,
        n_neighbors: int = 40,
        min_sim: float = 0.0,
        min_nbrs: int = 1,
        mode: str = "explicit",
        search: str = "auto",
        rank: int = DEFAULT_RANK,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if search not in SEARCHES or min(rank, candidates) < 1:
            raise ValueError(
                f"search must be one of {SEARCHES}, rank and candidates >= 1: "
                f"{search!r}, {rank}, {candidates}"
            )
        if n_neighbors < 1 or min_nbrs < 1:
            raise ValueError(f"n_neighbors ({n_neighbors}) and min_nbrs ({min_nbrs}) must be >= 1")
        self.n_neighbors = int(n_neighbors)
        self.min_sim = float(min_sim)
        self.min_nbrs = int(min_nbrs)
        self.mode = mode
        self.search = search
        self.rank = int(rank)
        self.candidates = int(candidates)
        self.neighbors_: sp.csr_matrix | None = None  # (U, U) similarity weights
        self.user_mean_: np.ndarray | None = None  # (U,) float64
        self.global_mean_: float = 0.0
        self._centered: sp.csr_matrix | None = None  # (U, I) r_ui - mean_u

    @property
    def params(self) -> dict[str, int | float | str]:
        return {
            "n_neighbors": self.n_neighbors,
            "min_sim": self.min_sim,
            "min_nbrs": self.min_nbrs,
            "mode": self.mode,
            "search": self.search,
            "rank": self.rank,
            "candidates": self.candidates,
        }

    def fit(self, train: Interactions) -> UserKNN:
        rows = unit_rows(train, self.mode)
        neighbors, similarities = top_neighbors(
            rows, self.n_neighbors, self.search, self.rank, self.candidates
        )
        return self.fit_from_neighbors(train, neighbors, similarities)

    def fit_from_neighbors(
        self, train: Interactions, neighbors: np.ndarray, similarities: np.ndarray
    ) -> UserKNN:
        """Fits from precomputed :func:`top_neighbors` output for at least ``n_neighbors``.

        ``tune_user_knn`` computes neighbours once per mode and slices them for every grid point.
        """
        weights = neighbor_matrix(neighbors, similarities, self.n_neighbors, self.min_sim)
        return self._set_state(train, weights)

    def _set_state(self, train: Interactions, weights: sp.csr_matrix) -> UserKNN:
        if weights.shape != (train.n_users, train.n_users):
            raise ValueError(f"neighbour matrix {weights.shape} != ({train.n_users},) * 2")
        self._set_train(train)
        self.user_mean_, self.global_mean_ = user_means(train)
        self._centered = centered_ratings(train, self.user_mean_)
        self.neighbors_ = weights
        return self

    def _neighborhood_sums(
        self, user_idx: np.ndarray, with_ratings: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sums over each user's neighbours who interacted with each item.

        Returns:
            ``(weighted_ratings, weights, scorable)``, each ``(U, n_items)``:
            ``sum sim * (r_vi - mean_v)`` (zeros unless ``with_ratings``), ``sum sim``, and whether
            at least ``min_nbrs`` neighbours are in the sum.
        """
        assert self.neighbors_ is not None and self._centered is not None
        rows = self.neighbors_[user_idx]  # (U, n_users)
        seen = self.seen_matrix()
        weights = (rows @ seen).toarray()
        if self.min_nbrs == 1:  # similarities are positive, so a neighbour means weight > 0
            scorable = weights > 0
        else:
            ones = sp.csr_matrix((np.ones_like(rows.data), rows.indices, rows.indptr), rows.shape)
            counts = ones @ seen
            scorable = counts.toarray() >= self.min_nbrs
        weighted = (rows @ self._centered).toarray() if with_ratings else np.zeros_like(weights)
        return weighted, weights, scorable

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` users → ``(U, n_items)`` float32: predicted ratings (explicit) or summed
        similarities (implicit); ``-inf`` where fewer than ``min_nbrs`` neighbours interacted."""
        user_idx = self.check_users(user_idx)
        explicit = self.mode == "explicit"
        weighted, weights, scorable = self._neighborhood_sums(user_idx, with_ratings=explicit)
        if not explicit:
            weights[~scorable] = -np.inf
            return weights.astype(np.float32, copy=False)
        assert self.user_mean_ is not None
        scores = np.full(weights.shape, -np.inf, np.float32)
        np.divide(weighted, weights, out=scores, where=scorable)
        scores += self.user_mean_[user_idx, None].astype(np.float32)  # -inf stays -inf
        return scores

    def score_history(
        self, item_idx: np.ndarray, rating: np.ndarray, exclude_user: int | None = None
    ) -> np.ndarray:
        """``(n_items,)`` float32 scores of one user described by a history, as :meth:`score`
        scores a training user: a training user's row plus newer interactions, or a user outside
        the training data. Their neighbours are the ``n_neighbors`` training users most similar
        to the history (an exact search over one row; the unit rows are built on first use).

        Args:
            item_idx: ``(H,)`` distinct item indices of the history.
            rating: ``(H,)`` their ratings (implicit mode: only their presence counts;
                explicit ratings all equal, as a new user's first event, have no centred
                signal: the raw ratings search the neighbours then).
            exclude_user: the user's own training index, never their own neighbour; None for
                a user outside the training data.
        """
        train = self._require_fitted()
        assert self.user_mean_ is not None and self._centered is not None
        items = np.asarray(item_idx, np.int64).reshape(-1)
        values = np.asarray(rating, np.float64).reshape(-1)
        if items.shape != values.shape or ((items < 0) | (items >= self.n_items)).any():
            raise KeyError(f"item_idx {items.shape} must be below {self.n_items}, as rating")
        if getattr(self, "_unit_rows", None) is None:  # (U, I), the rows neighbours are found on
            self._unit_rows = unit_rows(train, self.mode)
        explicit = self.mode == "explicit"
        mean = float(values.mean()) if len(values) else self.global_mean_
        centred = values - mean if explicit else np.ones_like(values)
        if not np.any(centred):  # equal ratings (a first event): no centred signal, so the
            centred = values  # raw ratings find the users who rated those items above their mean
        norm = float(np.sqrt((centred**2).sum()))
        query = np.zeros(self.n_items, np.float32)  # (I,) the history's unit row
        if norm > 0:
            query[items] = centred / norm
        sims = np.asarray(self._unit_rows @ query, np.float32)  # (U,)
        if exclude_user is not None:
            sims[exclude_user] = -np.inf
        order = np.lexsort((np.arange(len(sims)), -sims))[: self.n_neighbors]  # ties: lower index
        order = order[sims[order] >= max(self.min_sim, MIN_SIMILARITY)]
        weights = sp.csr_matrix(
            (sims[order], (np.zeros(len(order), np.int64), order)), shape=(1, train.n_users)
        )  # (1, U)
        seen = self.seen_matrix()
        total = (weights @ seen).toarray()[0]  # (I,) sum of the neighbours' similarities
        if self.min_nbrs == 1:
            scorable = total > 0
        else:
            ones = sp.csr_matrix(
                (np.ones(len(order), np.float32), weights.nonzero()), (1, len(sims))
            )
            scorable = (ones @ seen).toarray()[0] >= self.min_nbrs
        if not explicit:
            return np.where(scorable, total, -np.inf).astype(np.float32)
        weighted = (weights @ self._centered).toarray()[0]  # (I,)
        scores = np.full(self.n_items, -np.inf, np.float32)
        np.divide(weighted, total, out=scores, where=scorable, casting="unsafe")
        return np.where(scorable, scores + np.float32(mean), -np.inf).astype(np.float32)

    def predict_ratings(
        self, user_idx: np.ndarray, item_idx: np.ndarray, batch_size: int = 1024
    ) -> np.ndarray:
        """``(N,)`` pairs → ``(N,)`` float32 ratings; the user's mean where the item is unscorable.

        Raises:
            KeyError: an unknown user or item index.
        """
        users = self.check_users(user_idx)
        items = np.asarray(item_idx, dtype=np.int64).reshape(-1)
        if items.shape != users.shape:
            raise ValueError(f"user_idx {users.shape} and item_idx {items.shape} differ in shape")
        bad = items[(items < 0) | (items >= self.n_items)]
        if bad.size:
            raise KeyError(f"unknown item index {bad[:5].tolist()} (known: 0..{self.n_items - 1})")
        assert self.user_mean_ is not None
        unique, row_of_pair = np.unique(users, return_inverse=True)
        out = np.empty(len(users), np.float32)
        for start in range(0, len(unique), batch_size):
            weighted, weights, scorable = self._neighborhood_sums(
                unique[start : start + batch_size], with_ratings=True
            )
            pairs = np.flatnonzero((row_of_pair >= start) & (row_of_pair < start + batch_size))
            r, c = row_of_pair[pairs] - start, items[pairs]
            ok = scorable[r, c]
            offset = np.where(ok, weighted[r, c] / np.where(ok, weights[r, c], 1.0), 0.0)
            out[pairs] = self.user_mean_[users[pairs]] + offset
        return out

    def save(self, path: str | Path) -> None:
        train = self._require_fitted()
        assert self.neighbors_ is not None
        config = {"n_users": train.n_users, "n_items": train.n_items, **self.params}
        arrays = {
            **train.to_arrays(),
            "neighbors_indptr": self.neighbors_.indptr,
            "neighbors_indices": self.neighbors_.indices,
            "neighbors_data": self.neighbors_.data,
        }
        write_model_dir(path, self.name, config, arrays)

    @classmethod
    def load(cls, path: str | Path) -> UserKNN:
        config, arrays = read_model_dir(path, cls.name)
        n_users, n_items = config["n_users"], config["n_items"]
        train = Interactions.from_arrays(arrays, n_users, n_items)
        weights = sp.csr_matrix(
            (arrays["neighbors_data"], arrays["neighbors_indices"], arrays["neighbors_indptr"]),
            shape=(n_users, n_users),
        )
        model = cls(
            config["n_neighbors"],
            config["min_sim"],
            config["min_nbrs"],
            config["mode"],
            config.get("search", "auto"),  # models saved before the projected search existed
            config.get("rank", DEFAULT_RANK),
            config.get("candidates", DEFAULT_CANDIDATES),
        )
        return model._set_state(train, weights)
