"""Loading the served artifacts from a storage root, checked against each other.

``load_two_tower_service`` reads ``model/`` (the two-tower export), ``index/`` (the item index
built for that export, plus precomputed known-user embeddings) and ``data/`` (raw ids, titles,
genres); ``load_user_knn_service`` reads ``knn/`` and ``data/``. Each refuses, with an
:class:`ArtifactLoadError` naming the piece, an incomplete artifact (no manifest, a missing or
truncated file), an index built for another model version or dimension, a pinned version that
differs, or artifacts whose user/item counts disagree. Nothing is unpickled: safetensors, ``.npz``
and ``.npy`` with ``allow_pickle=False``, JSON, Parquet and ScaNN's own protobuf assets.

:func:`publish_small_run` writes the same artifacts without Ray jobs, for tests and smoke runs.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from serving.recommenders import Catalog, TwoTowerService, UserKNNService
from serving.schemas import ModelSettings
from towers.artifacts import publish_saved_index
from towers.index import IDS_FILE, ItemIndex, make_index
from towers.storage.root import Storage

USER_EMBEDDINGS_FILE = "user_embeddings.npy"


class ArtifactLoadError(RuntimeError):
    """An artifact cannot be served; the message names the storage, artifact and problem."""


def load_catalog(storage: Storage) -> Catalog:
    """Raw ids, titles and genres from ``data/``."""
    storage.read_manifest("data")
    users = storage.read_parquet("data/users.parquet", columns=["user_idx", "user_id"])
    items = storage.read_parquet(
        "data/items.parquet", columns=["item_idx", "item_id", "title", "genres"]
    )
    return Catalog.from_frames(users, items)


def load_item_index(
    storage: Storage, artifact: str, model_version: str, dim: int
) -> tuple[ItemIndex, np.ndarray, np.ndarray | None]:
    """``(index, ids, user_embeddings or None)`` of ``artifact``, checked against the model."""
    manifest = storage.read_manifest(artifact)
    if manifest.get("model_version") != model_version:
        raise ArtifactLoadError(
            f"{storage.uri}: {artifact}/ was built for model version "
            f"{manifest.get('model_version')!r}, the model is {model_version!r}; rebuild the index"
        )
    if manifest.get("dim") != dim:
        raise ArtifactLoadError(
            f"{storage.uri}: {artifact}/ has dimension {manifest.get('dim')}, the model {dim}"
        )
    with storage.local_copy(artifact) as folder:
        index = ItemIndex.load(folder, expected_version=model_version, expected_dim=dim)
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
        user_emb = None
        if (folder / USER_EMBEDDINGS_FILE).is_file():
            user_emb = np.load(folder / USER_EMBEDDINGS_FILE, allow_pickle=False)
    return index, ids, user_emb


def load_two_tower_service(default_storage: str, settings: ModelSettings) -> TwoTowerService:
    """The two-tower model, its index and the catalog, or an ``ArtifactLoadError``."""
    from towers.recommenders.two_tower import TwoTowerRecommender

    uri = settings.storage or default_storage
    try:
        storage = Storage(uri)
        manifest = storage.read_manifest(settings.model_artifact)
        with storage.local_copy(settings.model_artifact) as folder:
            rec = TwoTowerRecommender.load(folder)
        _check_version(uri, settings, rec.version)
        if manifest.get("version") not in (None, rec.version):
            raise ArtifactLoadError(
                f"{uri}: {settings.model_artifact}/manifest.json says version "
                f"{manifest['version']!r}, the weights are {rec.version!r}"
            )
        dim = rec.config.embedding_dim
        index, ids, user_emb = load_item_index(storage, settings.index_artifact, rec.version, dim)
        if not np.array_equal(ids, np.arange(rec.n_items)):
            raise ArtifactLoadError(f"{uri}: {settings.index_artifact}/ ids are not item_idx order")
        return TwoTowerService(
            rec,
            index,
            load_catalog(storage),
            user_emb if settings.precomputed_user_embeddings else None,
            info={
                "storage": uri,
                "artifact": settings.model_artifact,
                "index_artifact": settings.index_artifact,
            },
        )
    except ArtifactLoadError:
        raise
    except Exception as err:  # every loader's own error names the file; add where and what
        raise ArtifactLoadError(
            f"cannot serve two-tower {uri}/{settings.model_artifact} with "
            f"{settings.index_artifact}/: {type(err).__name__}: {err}"
        ) from err


def load_user_knn_service(default_storage: str, settings: ModelSettings) -> UserKNNService:
    """The UserKNN baseline and the catalog; its version hashes the saved files."""
    from towers.recommenders.user_knn import UserKNN

    uri = settings.storage or default_storage
    try:
        storage = Storage(uri)
        manifest = storage.read_manifest(settings.model_artifact)
        with storage.local_copy(settings.model_artifact) as folder:
            knn = UserKNN.load(folder)
            version = _files_digest(folder, sorted(manifest["files"]))
        _check_version(uri, settings, version)
        info = {"storage": uri, "artifact": settings.model_artifact}
        return UserKNNService(knn, load_catalog(storage), version, info)
    except ArtifactLoadError:
        raise
    except Exception as err:
        raise ArtifactLoadError(
            f"cannot serve UserKNN {uri}/{settings.model_artifact}: {type(err).__name__}: {err}"
        ) from err


def _check_version(uri: str, settings: ModelSettings, version: str) -> None:
    if settings.model_version is not None and settings.model_version != version:
        raise ArtifactLoadError(
            f"{uri}/{settings.model_artifact} is version {version!r}, but user_config pins "
            f"model_version {settings.model_version!r}"
        )


def _files_digest(folder: Path, names: list[str]) -> str:
    """12 hex digits of SHA-256 over the named files (name and bytes, in order)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def publish_small_run(
    storage: Storage,
    epochs: int = 2,
    embedding_dim: int = 32,
    seed: int = 0,
    model_artifact: str = "model",
    index_artifact: str = "index",
    knn_artifact: str = "knn",
) -> dict[str, str]:
    """Fits a two-tower and a UserKNN on ``storage``'s ``data/`` (no Ray) and publishes them.

    The layouts are those of ``ray_jobs.train`` (export), ``ray_jobs.build_index`` and
    ``ray_jobs.evaluate`` (``knn/``). Returns ``{"two_tower": version, "dim": D}``.
    """
    from towers.data.prepared import load_prepared
    from towers.model.config import TwoTowerConfig
    from towers.recommenders.two_tower import TwoTowerRecommender
    from towers.recommenders.user_knn import UserKNN

    data = load_prepared(storage)
    config = TwoTowerConfig.from_preset(
        "default", epochs=epochs, embedding_dim=embedding_dim, seed=seed
    ).sized_for(data.features)
    rec = TwoTowerRecommender(config, data.features, data.valid).fit(data.full_train)
    with tempfile.TemporaryDirectory() as tmp:
        rec.save(Path(tmp) / "model")
        storage.begin_artifact(model_artifact)
        storage.upload_dir(Path(tmp) / "model", model_artifact)
        storage.publish(model_artifact, {"version": rec.version, "dim": embedding_dim})
        index = make_index("scann", rec.n_items, model_version=rec.version)
        index.build(rec.item_embeddings(), np.arange(rec.n_items))
        index.save(Path(tmp) / "index")
        np.save(
            Path(tmp) / "index" / USER_EMBEDDINGS_FILE, rec.user_embeddings(np.arange(rec.n_users))
        )
        publish_saved_index(Path(tmp) / "index", storage, index_artifact, model=model_artifact)
        knn = UserKNN(n_neighbors=20).fit(data.full_train)
        knn.save(Path(tmp) / "knn")
        storage.begin_artifact(knn_artifact)
        storage.upload_dir(Path(tmp) / "knn", knn_artifact)
        storage.publish(knn_artifact, {"params": knn.params})
    return {"two_tower": rec.version, "dim": str(embedding_dim)}
