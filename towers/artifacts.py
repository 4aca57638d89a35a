"""The run layout: every artifact folder under a storage root, and how each is written and read.

The jobs, the server and the benchmarks reach a run's artifacts only through this module, so
the folder and file names are spelled here (each artifact's own files are its format's business:
``towers.data.prepared`` for ``data/``, the recommenders' ``save``, ``ItemIndex.save``)::

    data/          prepared data set: vocabularies, splits (towers.data.prepared)
    train/<run>/   Ray Train run folder: checkpoints (ray_jobs.train)
    model/         two-tower export (also model_paper/, model_tuned/)
    index/         item index built for model/, plus user_embeddings.npy
    knn/           fitted UserKNN, plus validation_grid.parquet
    reports/       metrics.json, metrics.md, metrics_vs_k.png
    tuning/        Tune trials, curves, best_config.json, plots (tuning.tune)

Each artifact is published the storage's way: files first, ``manifest.json`` last with every
file's size and SHA-256, so a reader never takes a half-written artifact for complete. Local
folders that a library writes are staged first (``towers.storage.atomic``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from towers.data import prepared
from towers.index.base import IDS_FILE, MANIFEST, ItemIndex
from towers.index.factory import make_index
from towers.model.config import TwoTowerConfig
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import ArtifactError, Storage
from towers.training.warm_start import Vocabularies, WarmStartError

DATA = prepared.ARTIFACT
TRAIN = "train"
MODEL = "model"
INDEX = "index"
KNN = "knn"
REPORTS = "reports"
TUNING = "tuning"
# The two-tower exports the pipeline can train, by the name the report gives each.
TWO_TOWER_EXPORTS = {
    "two_tower": MODEL,
    "two_tower_tuned": "model_tuned",
    "two_tower_paper": "model_paper",
}
USER_EMBEDDINGS = "user_embeddings.npy"  # in index/: (n_users, D) known users' queries
# In an index over a catalog grown after training (build_index --items): its items and vectors.
CATALOG_ITEMS, ITEM_EMBEDDINGS = "items.parquet", "item_embeddings.npy"
# In a model export: the raw ids of its rows (by user_idx / item_idx), which a warm start maps.
USER_IDS, ITEM_IDS = "user_ids.parquet", "item_ids.parquet"
KNN_GRID = "validation_grid.parquet"  # in knn/: one row per UserKNN grid point
REPORT_JSON, REPORT_MD, REPORT_PLOT = "metrics.json", "metrics.md", "metrics_vs_k.png"


def updated(artifact: str, seq: int) -> str:
    """The artifact an update publishes after folding events up to ``seq`` (``model_u42``)."""
    return f"{artifact}_u{seq}"


def latest_update(storage: Storage, artifact: str) -> str:
    """The newest complete ``<artifact>_u<seq>`` (``pipeline --update``), else ``artifact``."""
    found = []
    for info in storage.fs.get_file_info(pafs.FileSelector(storage.path(), recursive=False)):
        name = info.base_name
        if name.startswith(f"{artifact}_u") and name[len(artifact) + 2 :].isdigit():
            try:
                storage.read_manifest(name, checksums=False)  # sizes: complete, not half-written
            except ArtifactError:
                continue
            found.append((int(name[len(artifact) + 2 :]), name))
    return max(found)[1] if found else artifact


def publish_folder(
    storage: Storage, folder: Path, artifact: str, exclude: Collection[str] = (), **fields: Any
) -> dict[str, Any]:
    """Uploads local ``folder``'s files but ``exclude`` as ``artifact`` and publishes its
    manifest (last)."""
    storage.begin_artifact(artifact)
    storage.upload_dir(folder, artifact, exclude=exclude)
    return storage.publish(artifact, fields)


# --- two-tower exports -----------------------------------------------------------------------


def publish_two_tower(
    storage: Storage,
    rec: TwoTowerRecommender,
    artifact: str = MODEL,
    vocabularies: Vocabularies | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Publishes ``rec`` (``TwoTowerRecommender.save``) with ``version`` and ``dim`` fields, and
    the raw ids of its rows when given (what ``--warm-start`` maps a grown vocabulary by)."""
    with tempfile.TemporaryDirectory() as tmp:
        rec.save(Path(tmp) / artifact)
        if vocabularies is not None:
            folder = Path(tmp) / artifact
            pd.DataFrame({"user_id": vocabularies.users}).to_parquet(folder / USER_IDS)
            pd.DataFrame({"item_id": vocabularies.items}).to_parquet(folder / ITEM_IDS)
        return publish_folder(
            storage,
            Path(tmp) / artifact,
            artifact,
            version=rec.version,
            dim=rec.config.retrieval_dim,
            **fields,
        )


def load_two_tower(
    storage: Storage, artifact: str = MODEL
) -> tuple[TwoTowerRecommender, dict[str, Any]]:
    """``(model, manifest)`` of the export in ``artifact``, its files checked against the
    manifest (which refuses an incomplete export with a clear message)."""
    with storage.checked_copy(artifact) as (folder, manifest):
        return TwoTowerRecommender.load(folder), manifest


def load_warm_start(
    storage: Storage, artifact: str
) -> tuple[TwoTowerRecommender, Vocabularies | None]:
    """``(model, vocabularies or None)`` of a two-tower export, for a warm start: None for an
    export written before exports carried their ids. Raises ``WarmStartError`` naming the
    artifact when it is missing, incomplete or not a two-tower model."""
    try:
        with storage.checked_copy(artifact) as (folder, _):
            rec = TwoTowerRecommender.load(folder)
            vocab = None
            if (folder / USER_IDS).is_file() and (folder / ITEM_IDS).is_file():
                users = pd.read_parquet(folder / USER_IDS)["user_id"].to_numpy()
                vocab = Vocabularies(
                    users, pd.read_parquet(folder / ITEM_IDS)["item_id"].to_numpy()
                )
    except (ArtifactError, FileNotFoundError, ValueError, KeyError) as err:
        raise WarmStartError(
            f"--warm-start {storage.uri}/{artifact}: not a two-tower model export ({err})"
        ) from err
    return rec, vocab


# --- item index -------------------------------------------------------------------------------


def publish_index(
    storage: Storage,
    index: ItemIndex,
    artifact: str = INDEX,
    user_embeddings: np.ndarray | None = None,
    catalog: tuple[pd.DataFrame, np.ndarray] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Publishes ``index`` (``ItemIndex.save``) and, when given, known users' embeddings and
    the ``(items, item_embeddings)`` of a catalog grown past the model's (new items).

    One ``manifest.json`` serves both readers: the storage manifest carries the index's own
    fields (what ``ItemIndex.load`` reads), ``fields``, and every file's size and digest.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / artifact
        index.save(folder)
        if user_embeddings is not None:
            np.save(folder / USER_EMBEDDINGS, user_embeddings, allow_pickle=False)
        if catalog is not None:
            catalog[0].to_parquet(folder / CATALOG_ITEMS, index=False)
            np.save(folder / ITEM_EMBEDDINGS, catalog[1], allow_pickle=False)
            fields = {**fields, "grown_catalog": True, "n_catalog_items": len(catalog[0])}
        own = json.loads((folder / MANIFEST).read_text())
        del own["files"]  # the storage manifest lists every uploaded file
        return publish_folder(storage, folder, artifact, exclude={MANIFEST}, **{**own, **fields})


def load_index_catalog(storage: Storage, artifact: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """``(items, item_embeddings)`` of an index built over a grown catalog (``build_index
    --items``: the model's items and items added after training), or None for an index over the
    model's own catalog. ``items`` has ``item_idx, item_id`` and the display columns."""
    manifest = storage.read_manifest(artifact, checksums=False)  # digests: checked on read
    if not manifest.get("grown_catalog"):
        return None
    items = storage.read_parquet(f"{artifact}/{CATALOG_ITEMS}", manifest=manifest)
    data = storage.read_checked(f"{artifact}/{ITEM_EMBEDDINGS}", manifest)
    return items, np.load(io.BytesIO(data), allow_pickle=False)


def load_index(
    storage: Storage, artifact: str, model_version: str, dim: int
) -> tuple[ItemIndex, np.ndarray, np.ndarray | None]:
    """``(index, ids, user_embeddings or None)`` of ``artifact``, checked against the model."""
    with storage.checked_copy(artifact) as (folder, manifest):
        if manifest.get("model_version") != model_version:
            raise ArtifactError(
                f"{storage.uri}: {artifact}/ was built for model version "
                f"{manifest.get('model_version')!r}, the model is {model_version!r}; "
                "rebuild the index"
            )
        if manifest.get("dim") != dim:
            raise ArtifactError(
                f"{storage.uri}: {artifact}/ has dimension {manifest.get('dim')}, the model {dim}"
            )
        index = ItemIndex.load(folder, expected_version=model_version, expected_dim=dim)
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
        user_emb = None
        if (folder / USER_EMBEDDINGS).is_file():
            user_emb = np.load(folder / USER_EMBEDDINGS, allow_pickle=False)
    return index, ids, user_emb


# --- UserKNN ----------------------------------------------------------------------------------


def publish_user_knn(
    storage: Storage,
    knn: UserKNN,
    artifact: str = KNN,
    grid: pd.DataFrame | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Publishes ``knn`` (``UserKNN.save``) and, when given, its validation grid."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / artifact
        knn.save(folder)
        if grid is not None:
            grid.to_parquet(folder / KNN_GRID, index=False)
        return publish_folder(storage, folder, artifact, params=knn.params, **fields)


def load_user_knn(storage: Storage, artifact: str = KNN) -> tuple[UserKNN, str]:
    """``(model, version)``: the version is 12 hex digits of SHA-256 over the saved files."""
    with storage.checked_copy(artifact) as (folder, manifest):
        knn = UserKNN.load(folder)
        digest = hashlib.sha256()
        for name in sorted(manifest["files"]):
            digest.update(name.encode())
            digest.update((folder / name).read_bytes())
    return knn, digest.hexdigest()[:12]


# --- reports ----------------------------------------------------------------------------------


def publish_report(
    storage: Storage,
    report: dict[str, Any],
    markdown: str,
    plot_png: bytes,
    artifact: str = REPORTS,
) -> dict[str, Any]:
    """``metrics.json`` (the numbers), ``metrics.md`` (the table) and the metric-vs-k plot."""
    storage.begin_artifact(artifact)
    storage.write_json(f"{artifact}/{REPORT_JSON}", report)
    storage.write_bytes(f"{artifact}/{REPORT_MD}", markdown.encode())
    storage.write_bytes(f"{artifact}/{REPORT_PLOT}", plot_png)
    return storage.publish(artifact, {"split": report["split"], "models": sorted(report["models"])})


def read_report_markdown(storage: Storage, artifact: str = REPORTS) -> str:
    return storage.read_bytes(f"{artifact}/{REPORT_MD}").decode()


# --- a whole small run without Ray -------------------------------------------------------------


def publish_small_run(
    storage: Storage,
    epochs: int = 2,
    embedding_dim: int = 32,
    seed: int = 0,
    model_artifact: str = MODEL,
    index_artifact: str = INDEX,
    knn_artifact: str = KNN,
) -> dict[str, str]:
    """Fits a two-tower and a UserKNN on ``storage``'s ``data/`` in this process and publishes
    ``model/``, ``index/`` and ``knn/`` as the Ray jobs do (for tests and smoke runs).

    Returns ``{"two_tower": version, "dim": D}``.
    """
    data = prepared.load_prepared(storage)
    config = TwoTowerConfig.from_preset(
        "default", epochs=epochs, embedding_dim=embedding_dim, seed=seed
    ).for_data(data)
    # Fitted on train ∪ valid for all its epochs, as a refit is: the validation part is in what
    # it trains on, so nothing is chosen on it (no early stopping, no temperature search).
    rec = TwoTowerRecommender(config, data.features).fit(data.full_train)
    vocab = Vocabularies.of_tables(data.users, data.items)
    publish_two_tower(storage, rec, model_artifact, vocabularies=vocab)
    index = make_index("scann", rec.n_items, model_version=rec.version)
    index.build(rec.item_embeddings(), np.arange(rec.n_items))
    users = rec.user_embeddings(np.arange(rec.n_users))
    publish_index(storage, index, index_artifact, user_embeddings=users, model=model_artifact)
    publish_user_knn(storage, UserKNN(n_neighbors=20).fit(data.full_train), knn_artifact)
    return {"two_tower": rec.version, "dim": str(rec.config.retrieval_dim)}
