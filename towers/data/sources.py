"""Where MovieLens files come from: ``--data-dir`` → local cache → GroupLens → RecBole wheel.

The MovieLens licence forbids redistribution, so nothing here is committed: files are found or
fetched at run time. GroupLens cannot be reached from every network; for ML-100K the last resort is
the copy inside the ``recbole==1.2.1`` wheel on PyPI, located with ``importlib.util.find_spec``
(without importing recbole and its heavy dependencies) or fetched with ``pip download --no-deps``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from towers.data.raw import DataError
from towers.storage.atomic import staged_directory

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"
# Files that prove a folder holds a data set, per layout.
MARKERS = {
    "ml-100k": ("u.data", "ml-100k.inter"),
    "ml-1m": ("ratings.dat",),
    "ml-latest-small": ("ratings.csv",),
    "ml-20m": ("ratings.csv",),
    "ml-25m": ("ratings.csv",),
    "ml-32m": ("ratings.csv",),
}


def cache_root() -> Path:
    """``$RAY_TWO_TOWER_CACHE`` or ``~/.cache/ray-two-tower``."""
    return Path(os.environ.get("RAY_TWO_TOWER_CACHE", Path.home() / ".cache" / "ray-two-tower"))


def _has_data(folder: Path, dataset: str) -> bool:
    return any((folder / m).exists() for m in MARKERS[dataset])


def _find_in(folder: Path, dataset: str) -> Path | None:
    """``folder`` itself or its ``dataset`` subfolder, whichever holds the files."""
    for candidate in (folder, folder / dataset):
        if candidate.is_dir() and _has_data(candidate, dataset):
            return candidate
    return None


def _download_grouplens(dataset: str, target: Path, timeout: float) -> Path | None:
    if os.environ.get("RAY_TWO_TOWER_OFFLINE") == "1":
        return None
    url = GROUPLENS_URL.format(name=dataset)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as err:
        log.info("GroupLens unreachable (%s); trying the next source", err)
        return None
    _extract_atomically(zipfile.ZipFile(io.BytesIO(payload)), f"{dataset}/", target)
    return target


def _extract_atomically(archive: zipfile.ZipFile, prefix: str, target: Path) -> None:
    """Extracts members under ``prefix`` into ``target`` (staged, then one rename)."""
    with staged_directory(target) as staged:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                with archive.open(member) as src, open(staged / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def _recbole_installed() -> Path | None:
    spec = importlib.util.find_spec("recbole")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    return folder if _has_data(folder, "ml-100k") else None


def fetch_recbole_ml100k(target: Path) -> Path:
    """Downloads the RecBole wheel with pip (``--no-deps``) and extracts its ML-100K files."""
    with tempfile.TemporaryDirectory() as wheel_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheel_dir]
        result = subprocess.run(
            [*cmd, RECBOLE_WHEEL], capture_output=True, text=True, timeout=600, check=False
        )
        wheels = list(Path(wheel_dir).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(
                f"could not fetch {RECBOLE_WHEEL} with pip (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}"
            )
        _extract_atomically(zipfile.ZipFile(wheels[0]), RECBOLE_ML100K, target)
    return target


def locate(dataset: str, data_dir: str | Path | None = None, timeout: float = 10.0) -> Path:
    """Returns a local folder holding ``dataset``'s files, fetching them if needed.

    Raises:
        DataError: ``data_dir`` lacks the files, or no source could provide them.
    """
    if dataset not in MARKERS:
        raise DataError(f"unknown MovieLens data set {dataset!r}; known: {sorted(MARKERS)}")
    if data_dir is not None:
        found = _find_in(Path(data_dir), dataset)
        if found is None:
            raise DataError(
                f"--data-dir {data_dir}: no {dataset} files there (looked for {MARKERS[dataset]})"
            )
        return found
    cached = cache_root() / dataset
    if _has_data(cached, dataset):
        return cached
    if _download_grouplens(dataset, cached, timeout) is not None:
        return cached
    if dataset == "ml-100k":
        installed = _recbole_installed()
        if installed is not None:
            shutil.copytree(installed, cached, dirs_exist_ok=True)  # next time: the cache
            return cached
        log.info("fetching %s from PyPI for its ML-100K copy", RECBOLE_WHEEL)
        return fetch_recbole_ml100k(cached)
    raise DataError(
        f"{dataset}: not in the cache ({cached}) and GroupLens is unreachable; download "
        f"{GROUPLENS_URL.format(name=dataset)} elsewhere and pass --data-dir"
    )
