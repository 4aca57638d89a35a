"""The trained two-tower model behind the shared ``Recommender`` interface (``base``).

Scoring is full-catalog: the item tower runs once over every item (on first use, then cached; eval
mode) and a user's scores are ``user_emb @ item_emb.T``. The exported model directory holds
everything needed to rebuild it without the training job::

    config.json           written last: format, model config, rating scale, version, file list
    weights.safetensors   user tower, item tower, temperature, rating head (no pickle)
    features.npz/.json    the encoded user/item feature arrays; the fitted encoders (vocabularies,
                          statistics), so a new user or item is encoded without the data set
    history.npz           training interactions as CSR (the user-history bags and seen items)

``version`` is a short content hash of the weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from towers.data.features import EncodedTable, FeatureTables
from towers.data.interactions import Interactions
from towers.metrics.top_k import top_k_excluding
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.recommenders.base import Recommender
from towers.storage.atomic import staged_directory
from towers.training.inputs import TrainingContext
from towers.training.loop import fit
from towers.training.steps import embed_items, embed_users, unwrap
from towers.training.tables import TableTensors

FORMAT = "two_tower"
FORMAT_VERSION = 2  # 2: features from the data set's schema (1: fixed MovieLens features)
REQUIRED_FILES = (
    "config.json",
    "weights.safetensors",
    "features.npz",
    "features.json",
    "history.npz",
)


def weights_version(model: TwoTower) -> str:
    """12 hex digits of SHA-256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:12]


class TwoTowerRecommender(Recommender):
    """Two-tower retrieval (and, for hybrid models, rating prediction) as a ``Recommender``.

    Either ``fit(train)`` with ``config`` and ``features`` given here (``valid`` enables early
    stopping), or wrap a model trained elsewhere with :meth:`from_model`, or :meth:`load` an export.
    """

    name = "two_tower"

    def __init__(
        self,
        config: TwoTowerConfig | None = None,
        features: FeatureTables | None = None,
        valid: Interactions | None = None,
        epochs: int | None = None,
        rating_scale: tuple[float, float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.config = config or TwoTowerConfig.from_preset("default")
        self.features = features
        self.valid = valid
        self.epochs = epochs
        self.rating_scale = rating_scale
        self.device = torch.device(device)
        self.model: TwoTower | None = None
        self.ctx: TrainingContext | None = None
        self.history_: list[dict[str, float]] = []
        self._item_emb: torch.Tensor | None = None
        self._version = ""

    # --- Building ------------------------------------------------------------------------------

    def fit(self, train: Interactions) -> TwoTowerRecommender:
        if self.features is None:
            raise ValueError("TwoTowerRecommender.fit needs FeatureTables: pass features=...")
        model, self.history_ = fit(
            self.config,
            train,
            self.valid,
            self.features,
            self.epochs,
            self.device,
            self.rating_scale,
        )
        return self._attach(model, self.features, train, self.rating_scale)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        features: FeatureTables,
        train: Interactions,
        rating_scale: tuple[float, float] | None = None,
    ) -> TwoTowerRecommender:
        """Wraps a trained ``TwoTower`` (or a DDP wrapper of one) and its training data."""
        core = unwrap(model)
        device = next(core.parameters()).device
        rec = cls(core.config, features, rating_scale=rating_scale, device=device)
        return rec._attach(core, features, train, rating_scale)

    def _attach(
        self,
        model: TwoTower,
        features: FeatureTables,
        train: Interactions,
        rating_scale: tuple[float, float] | None,
    ) -> TwoTowerRecommender:
        self.model = unwrap(model).eval()
        self.config = self.model.config
        self.features = features
        self.ctx = TrainingContext.build(features, train, self.config, rating_scale, self.device)
        self.rating_scale = self.ctx.rating_scale
        self._set_train(train)
        self._item_emb = None  # (N, D), computed on first use: build_index never needs it
        self._version = weights_version(self.model)
        return self

    def _require_model(self) -> tuple[TwoTower, TrainingContext]:
        self._require_fitted()
        assert self.model is not None and self.ctx is not None
        return self.model, self.ctx

    def _item_embeddings(self) -> torch.Tensor:
        """``(N, D)`` item tower over the whole catalog, run once, on first use."""
        model, ctx = self._require_model()
        if self._item_emb is None:
            self._item_emb = embed_items(model, ctx)
        return self._item_emb

    @property
    def version(self) -> str:
        """Short content hash of the weights (empty before fit/load)."""
        return self._version

    # --- Embeddings and scores -----------------------------------------------------------------

    def item_embeddings(self) -> np.ndarray:
        """``(n_items, D)`` float32 item embeddings, row ``i`` for ``item_idx`` ``i``."""
        return self._item_embeddings().cpu().numpy().astype(np.float32)

    def embed_item_rows(
        self, items: pd.DataFrame, known_idx: np.ndarray, chunk: int = 8192
    ) -> np.ndarray:
        """``(N, D)`` float32 embeddings of rows of an items table (the canonical columns: one per
        item feature), encoded with the model's fitted encoders: the way items added after
        training are embedded without retraining.

        Args:
            items: ``N`` rows with the item features' columns.
            known_idx: ``(N,)`` each row's ``item_idx`` in the model's catalog, or -1 for an item
                the model has never seen (its id embedding is the "unknown item" row).
        """
        model, ctx = self._require_model()
        assert self.features is not None
        encoded = TableTensors.build(
            EncodedTable.build(self.features.items.features, items), ctx.device
        )
        known = torch.tensor(np.asarray(known_idx, np.int64), device=ctx.device)  # (N,) a copy
        if bool((known >= self.n_items).any()):
            raise KeyError(f"known_idx must be -1 or below {self.n_items}")
        unknown = torch.full_like(known, self.n_items)
        id_row = torch.where(known >= 0, ctx.item_id_row[known.clamp(min=0)], unknown)
        parts = []
        with torch.no_grad():
            for start in range(0, len(known), chunk):
                rows = torch.arange(start, min(start + chunk, len(known)), device=ctx.device)
                batch = {"item_idx": known[rows].clamp(min=0), "item_id_row": id_row[rows]}
                batch.update(encoded.gather(rows))
                if self.config.item_two_hop:  # known items: their training neighbourhood
                    batch.update(ctx.two_hop_exact(id_row[rows]))
                parts.append(model.item_embeddings(batch).float().cpu())
        dim = self.config.retrieval_dim
        return (torch.cat(parts) if parts else torch.zeros(0, dim)).numpy().astype(np.float32)

    def user_embeddings(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` known users → ``(U, D)`` float32 (queries for an inner-product index)."""
        model, ctx = self._require_model()
        users = torch.as_tensor(self.check_users(user_idx), device=ctx.device)
        return embed_users(model, ctx, users).cpu().numpy().astype(np.float32)

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` user indices → ``(U, n_items)`` float32 ``user_emb @ item_emb.T``."""
        model, ctx = self._require_model()
        users = torch.as_tensor(self.check_users(user_idx), device=ctx.device)
        user_emb = embed_users(model, ctx, users)  # (U, D)
        return (user_emb @ self._item_embeddings().T).cpu().numpy().astype(np.float32)  # (U, N)

    def _check_items(self, item_idx: np.ndarray | list[int]) -> np.ndarray:
        item_idx = np.asarray(item_idx, dtype=np.int64).reshape(-1)
        bad = item_idx[(item_idx < 0) | (item_idx >= self.n_items)]
        if bad.size:
            raise KeyError(f"unknown item index {bad[:5].tolist()} (known: 0..{self.n_items - 1})")
        return item_idx

    def history_in_time_order(self, user_idx: int) -> np.ndarray:
        """A training user's items, oldest first: the order in which
        :meth:`user_embedding_cold_start` reads a liked-items list (its last item the newest, as
        ``history_decay`` weighs it)."""
        return self.rated_history_in_time_order(user_idx)[0]

    def rated_history_in_time_order(self, user_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """``(items, ratings)`` of a training user, oldest first; ratings on the raw scale (what
        :meth:`user_embedding_cold_start` takes back)."""
        _, ctx = self._require_model()
        user = int(self.check_users(np.array([user_idx]))[0])
        start, end = int(ctx.history_indptr[user]), int(ctx.history_indptr[user + 1])
        items = ctx.history_items[start:end].cpu().numpy()
        lo, hi = ctx.rating_scale
        ratings = ctx.history_ratings[start:end].cpu().numpy().astype(np.float64) * (hi - lo) + lo
        recency = ctx.history_recency[start:end].cpu().numpy()  # 0 = newest (zeros: no decay)
        order = np.argsort(-recency, kind="stable")
        return items[order], ratings[order]

    def user_embedding_cold_start(
        self,
        features: Mapping[str, Any] | None,
        liked_item_idx: list[int] | np.ndarray,
        ratings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Embeds a user who is not in the training data.

        Args:
            features: raw values of the schema's user features by name (``{"age": 31,
                "occupation": "engineer"}``); absent ones, unseen values and None are unknown.
                A name the schema lacks raises ``DataError``.
            liked_item_idx: items the user liked (may be empty); they form the history bag.
            ratings: the user's ratings of those items (raw scale), for the rating-pooled
                history of models that have one; None: unknown (a new user's likes).

        Returns:
            ``(D,)`` float32 user embedding, comparable with :meth:`item_embeddings`.
        """
        model, ctx = self._require_model()
        assert self.features is not None
        encoded = None if features is None else self.features.encode_user(features)
        liked = self._check_items(liked_item_idx).tolist()
        batch = ctx.cold_user_batch(encoded, liked, ratings)
        with torch.no_grad():
            return model.user_embeddings(batch)[0].float().cpu().numpy()

    def recommend_cold_start(
        self, features: Mapping[str, Any] | None, liked_item_idx: list[int] | np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(item_idx, scores)``, each ``(min(k, n_items),)``, liked items excluded."""
        liked = self._check_items(liked_item_idx)
        user_emb = self.user_embedding_cold_start(features, liked)
        scores = (self.item_embeddings() @ user_emb)[None, :]  # (1, N)
        exclude = np.zeros_like(scores, dtype=bool)
        exclude[0, liked] = True
        scores[exclude] = -np.inf
        items, top = top_k_excluding(scores, k)
        return items[0], top[0]

    # --- Ratings -------------------------------------------------------------------------------

    @property
    def predicts_ratings(self) -> bool:
        """Hybrid models (rating head) and pointwise models (sigmoid of the score) do."""
        return self.config.has_rating_head or self.config.loss == "pointwise"

    def predict_ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """``(N,)`` pairs → ``(N,)`` float32 ratings on the raw scale, clipped to it."""
        if not self.predicts_ratings:
            raise NotImplementedError(f"a {self.config.loss!r}-loss two-tower has no rating head")
        model, ctx = self._require_model()
        item_emb = self._item_embeddings()
        user_idx = self.check_users(user_idx)
        item_idx = self._check_items(item_idx)
        if len(user_idx) != len(item_idx):
            raise ValueError(f"{len(user_idx)} users but {len(item_idx)} items")
        users, inverse = np.unique(user_idx, return_inverse=True)
        user_t = torch.as_tensor(users, device=ctx.device)
        user_emb = embed_users(model, ctx, user_t)[torch.as_tensor(inverse, device=ctx.device)]
        item_t = torch.tensor(item_idx, device=ctx.device)  # a copy: item_idx may be read-only
        with torch.no_grad():
            scaled = model.predict_rating(user_emb, item_emb[item_t], user_t[inverse], item_t)
        lo, hi = ctx.rating_scale
        return (scaled.clamp(0, 1).float().cpu().numpy() * (hi - lo) + lo).astype(np.float32)

    # --- Persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes the model directory atomically (``towers.storage.atomic.staged_directory``)."""
        model, ctx = self._require_model()
        train = self._require_fitted()
        assert self.features is not None
        with staged_directory(path) as tmp:
            tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(tensors, str(tmp / "weights.safetensors"), metadata={"version": self.version})
            np.savez(tmp / "features.npz", **self.features.to_arrays())
            fitted = json.dumps(self.features.fitted_dict(), indent=1)
            (tmp / "features.json").write_text(fitted)
            csr = train.to_csr(binary=True)
            order = np.lexsort((train.item_idx, train.user_idx))  # CSR order: user, then item
            np.savez(
                tmp / "history.npz",
                indptr=csr.indptr.astype(np.int64),
                indices=train.item_idx[order],
                rating=train.rating[order],
                timestamp=train.timestamp[order],
                shape=np.asarray([train.n_users, train.n_items], np.int64),
            )
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "version": self.version,
                "rating_scale": list(ctx.rating_scale),
                "embedding_dim": self.config.embedding_dim,
                "model_config": self.config.to_dict(),
                "files": sorted(p.name for p in tmp.iterdir()),
            }
            (tmp / "config.json").write_text(json.dumps(meta, indent=1))  # last: the manifest

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> TwoTowerRecommender:
        """Reads a directory written by :meth:`save`; names any missing or mismatched piece."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no two-tower model directory there")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: incomplete two-tower model, missing {missing}")
        meta = json.loads((folder / "config.json").read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder}/config.json: format {meta.get('format')!r} v{meta.get('format_version')}"
                f", expected {FORMAT!r} v{FORMAT_VERSION}"
            )
        config = TwoTowerConfig.from_stored(meta["model_config"])
        model = TwoTower(config)
        model.load_state_dict(load_file(str(folder / "weights.safetensors")))
        if weights_version(model) != meta["version"]:
            raise ValueError(
                f"{folder}/weights.safetensors does not match version {meta['version']}"
            )
        fitted = json.loads((folder / "features.json").read_text())
        with np.load(folder / "features.npz") as arrays:
            features = FeatureTables.load(fitted, dict(arrays))
        with np.load(folder / "history.npz") as hist:
            n_users, n_items = (int(x) for x in hist["shape"])
            train = Interactions(
                user_idx=np.repeat(np.arange(n_users), np.diff(hist["indptr"])).astype(np.int64),
                item_idx=hist["indices"].astype(np.int64),
                rating=hist["rating"].astype(np.float32),
                timestamp=hist["timestamp"].astype(np.int64),
                n_users=n_users,
                n_items=n_items,
            )
        scale = (float(meta["rating_scale"][0]), float(meta["rating_scale"][1]))
        rec = cls(config, features, rating_scale=scale, device=device)
        return rec._attach(model.to(device), features, train, scale)
