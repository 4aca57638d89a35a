"""The small directory format the baselines save to: plain arrays plus a JSON manifest.

A directory holds ``arrays.npz`` (plain arrays, loaded with ``allow_pickle=False``) and
``config.json``, written last as the manifest: a reader that finds no ``config.json`` knows the
directory is incomplete. The directory is written with ``towers.storage.atomic``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from towers.storage.atomic import staged_directory

FORMAT_VERSION = 1
_CONFIG = "config.json"
_ARRAYS = "arrays.npz"


def write_model_dir(
    path: str | Path, name: str, config: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    """Writes ``arrays.npz`` then ``config.json`` (the manifest) under directory ``path``.

    Args:
        path: local directory; replaced as a whole (``staged_directory``).
        name: the model's ``name``; ``read_model_dir`` checks it.
        config: JSON-serialisable hyper-parameters and sizes.
        arrays: plain numeric arrays (no objects: they are read back without pickle).
    """
    manifest = {"name": name, "format_version": FORMAT_VERSION, **config}
    with staged_directory(path) as staged:
        with open(staged / _ARRAYS, "wb") as f:  # a file object stops numpy appending ".npz"
            np.savez(f, **arrays)
        (staged / _CONFIG).write_text(json.dumps(manifest, indent=2, sort_keys=True))


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
