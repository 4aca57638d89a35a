"""Loading the served artifacts from a storage root, checked against each other.

``load_two_tower_service`` reads ``model/`` (the two-tower export), ``index/`` (the item index
built for that export, plus precomputed known-user embeddings) and ``data/`` (raw ids, titles,
genres); ``load_user_knn_service`` reads ``knn/`` and ``data/``, all through ``towers.artifacts``;
``load_services`` loads both.
Each refuses, with an :class:`ArtifactLoadError` naming the piece, an incomplete artifact (no
manifest, a missing or truncated file), an index built for another model version or dimension, a
pinned version that differs, or artifacts whose user/item counts disagree. Nothing is unpickled:
safetensors, ``.npz`` and ``.npy`` with ``allow_pickle=False``, JSON, Parquet and ScaNN's own
protobuf assets.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pandas as pd

from serving.catalog import json_value
from serving.recommenders import Catalog, TwoTowerService, UserKNNService
from serving.schemas import ModelSettings
from towers.data.prepared import read_catalog_tables
from towers.data.schema import Schema
from towers.storage.root import Storage


class ArtifactLoadError(RuntimeError):
    """An artifact cannot be served; the message names the storage, artifact and problem."""


def load_catalog(storage: Storage, items: pd.DataFrame | None = None) -> Catalog:
    """Raw ids and display columns from ``data/``; ``items`` (an index's grown catalog) replaces
    ``data/``'s items."""
    users, data_items, display = read_catalog_tables(storage)
    return Catalog.from_frames(users, data_items if items is None else items, display)


def load_event_contract(
    storage: Storage, feature_names: list[str]
) -> tuple[Schema, list[dict[str, Any]]]:
    """What checking events and answering their users needs from ``data/``: the canonical
    schema, and each known user's raw feature values (JSON types) in ``user_idx`` order."""
    schema = Schema.from_dict(storage.read_json("data/schema.json"), f"{storage.uri}/data")
    users = storage.read_parquet("data/users.parquet", ["user_idx", *feature_names])
    columns = {name: [json_value(v) for v in users[name]] for name in feature_names}
    rows = [{name: values[i] for name, values in columns.items()} for i in range(len(users))]
    return schema, rows


def load_two_tower_service(default_storage: str, settings: ModelSettings) -> TwoTowerService:
    """The two-tower model, its index and the catalog, or an ``ArtifactLoadError``."""
    from towers import artifacts  # torch: only where a model is served

    uri = settings.storage or default_storage
    try:
        storage = Storage(uri)
        rec, manifest = artifacts.load_two_tower(storage, settings.model_artifact)
        _check_version(uri, settings, rec.version)
        if manifest.get("version") not in (None, rec.version):
            raise ArtifactLoadError(
                f"{uri}: {settings.model_artifact}/manifest.json says version "
                f"{manifest['version']!r}, the weights are {rec.version!r}"
            )
        dim = rec.config.retrieval_dim
        index, ids, user_emb = artifacts.load_index(
            storage, settings.index_artifact, rec.version, dim
        )
        grown = artifacts.load_index_catalog(storage, settings.index_artifact)
        catalog = load_catalog(storage, grown[0] if grown is not None else None)
        if not np.array_equal(ids, np.arange(catalog.n_items)):
            raise ArtifactLoadError(f"{uri}: {settings.index_artifact}/ ids are not item_idx order")
        names = [f.name for f in rec.features.users.features]
        schema, user_rows = load_event_contract(storage, names)
        return TwoTowerService(
            rec,
            index,
            catalog,
            user_emb if settings.precomputed_user_embeddings else None,
            info={
                "storage": uri,
                "artifact": settings.model_artifact,
                "index_artifact": settings.index_artifact,
            },
            item_embeddings=grown[1] if grown is not None else None,
            new_items=settings.new_items,
            schema=schema,
            user_rows=user_rows,
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
    from towers import artifacts

    uri = settings.storage or default_storage
    try:
        storage = Storage(uri)
        knn, version = artifacts.load_user_knn(storage, settings.model_artifact)
        _check_version(uri, settings, version)
        info = {"storage": uri, "artifact": settings.model_artifact}
        return UserKNNService(knn, load_catalog(storage), version, info)
    except ArtifactLoadError:
        raise
    except Exception as err:
        raise ArtifactLoadError(
            f"cannot serve UserKNN {uri}/{settings.model_artifact}: {type(err).__name__}: {err}"
        ) from err


def load_services(
    storage: str, model: str = "model", index: str = "index", knn: str = "knn"
) -> dict[str, TwoTowerService | UserKNNService]:
    """Both models of ``storage``, loaded in this process, by the names the app routes them
    (``python -m serving --no-ray``; the tests that answer over the in-process backend)."""
    return {
        "two_tower": load_two_tower_service(
            storage, ModelSettings(model_artifact=model, index_artifact=index)
        ),
        "user_knn": load_user_knn_service(storage, ModelSettings(model_artifact=knn)),
    }


def _check_version(uri: str, settings: ModelSettings, version: str) -> None:
    if settings.model_version is not None and settings.model_version != version:
        raise ArtifactLoadError(
            f"{uri}/{settings.model_artifact} is version {version!r}, but user_config pins "
            f"model_version {settings.model_version!r}"
        )


def settle_heap() -> None:
    """Puts every object alive now (the loaded model, index and catalog, the imported libraries)
    out of the cycle collector's reach, once a serving process has loaded what it serves.

    A full collection walks every tracked object: with torch, pandas and a model loaded, a pause
    of ~100 ms, which the allocations of ``POST /events`` triggered every few seconds, so that the
    single-process server's p99 was ~100 ms at a p50 of 5 ms (docs/BENCHMARKS.md). After
    ``gc.freeze()`` collections walk only what requests create. Objects are unfrozen first, so
    what a previous version held is collected when a new one replaces it.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
