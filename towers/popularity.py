"""Most-popular baseline, and the small directory format that the baselines save to.

A baseline directory holds ``arrays.npz`` (plain arrays, loaded with ``allow_pickle=False``) and
``config.json``, written last as the manifest: a reader that finds no ``config.json`` knows the
directory is incomplete. Each file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from towers.interactions import Interactions
from towers.recommender import Recommender

FORMAT_VERSION = 1
_CONFIG = "config.json"
_ARRAYS = "arrays.npz"
_TRAIN_KEYS = ("user_idx", "item_idx", "rating", "timestamp")


def interactions_to_arrays(train: Interactions, prefix: str = "train_") -> dict[str, np.ndarray]:
    """The four columns of ``train`` as ``{prefix + column: array}``."""
    return {prefix + key: getattr(train, key) for key in _TRAIN_KEYS}


def interactions_from_arrays(
    arrays: dict[str, np.ndarray], n_users: int, n_items: int, prefix: str = "train_"
) -> Interactions:
    """Inverse of :func:`interactions_to_arrays`."""
    return Interactions(
        user_idx=np.asarray(arrays[prefix + "user_idx"], np.int64),
        item_idx=np.asarray(arrays[prefix + "item_idx"], np.int64),
        rating=np.asarray(arrays[prefix + "rating"], np.float32),
        timestamp=np.asarray(arrays[prefix + "timestamp"], np.int64),
        n_users=n_users,
        n_items=n_items,
    )


def write_model_dir(
    path: str | Path, name: str, config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Writes ``arrays.npz`` then ``config.json`` (the manifest) under directory ``path``.

    Args:
        path: local directory; created if missing.
        name: the model's ``name``; ``read_model_dir`` checks it.
        config: JSON-serialisable hyper-parameters and sizes.
        arrays: plain numeric arrays (no objects: they are read back without pickle).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp_arrays = path / f".{_ARRAYS}.tmp"
    with open(tmp_arrays, "wb") as f:  # a file object stops numpy from appending ".npz"
        np.savez(f, **arrays)
    os.replace(tmp_arrays, path / _ARRAYS)
    manifest = {"name": name, "format_version": FORMAT_VERSION, **config}
    tmp_config = path / f".{_CONFIG}.tmp"
    tmp_config.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp_config, path / _CONFIG)


def read_model_dir(path: str | Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads a directory written by :func:`write_model_dir` for model ``name``.

    Raises:
        FileNotFoundError: the manifest or the arrays are missing (e.g. an interrupted save).
        ValueError: the directory holds another model or another format version.
    """
    path = Path(path)
    if not (path / _CONFIG).is_file():
        raise FileNotFoundError(f"{path}: no {_CONFIG}; not a saved {name} model (or incomplete)")
    config = json.loads((path / _CONFIG).read_text())
    if config.get("name") != name:
        raise ValueError(f"{path}: holds model {config.get('name')!r}, expected {name!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {config.get('format_version')} != {FORMAT_VERSION}"
        )
    if not (path / _ARRAYS).is_file():
        raise FileNotFoundError(f"{path}: {_CONFIG} present but {_ARRAYS} is missing")
    with np.load(path / _ARRAYS, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return config, arrays


class PopularityRecommender(Recommender):
    """Ranks items by how many training interactions they have, the same list for every user.

    ``score(u)[i] = |{(v, i) in train}|``; ties go to the lower item index (``top_k_excluding``).
    """

    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self.item_counts_: np.ndarray | None = None  # (n_items,) float32

    def fit(self, train: Interactions) -> PopularityRecommender:
        self._set_train(train)
        counts = np.bincount(train.item_idx, minlength=train.n_items)
        self.item_counts_ = counts.astype(np.float32)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        """``(U,)`` user indices → ``(U, n_items)`` float32 interaction counts."""
        user_idx = self.check_users(user_idx)
        assert self.item_counts_ is not None
        return np.broadcast_to(self.item_counts_, (len(user_idx), self.n_items)).copy()

    def save(self, path: str | Path) -> None:
        train = self._require_fitted()
        config = {"n_users": train.n_users, "n_items": train.n_items}
        write_model_dir(path, self.name, config, interactions_to_arrays(train))

    @classmethod
    def load(cls, path: str | Path) -> PopularityRecommender:
        config, arrays = read_model_dir(path, cls.name)
        train = interactions_from_arrays(arrays, config["n_users"], config["n_items"])
        return cls().fit(train)
