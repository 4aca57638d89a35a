"""``python -m ray_jobs.pipeline --update``: events in, a warm-started model out and served.

1. fold the events recorded since the last fold into ``data/`` (``towers.data.fold``);
2. warm-start the two-tower from the newest model (``ray_jobs.train --warm-start``) into
   ``model_u<seq>`` (``seq``: the last event folded);
3. build its index (``index_u<seq>``) and refit UserKNN with the settings ``knn/`` was chosen
   with (``knn_u<seq>``);
4. evaluate both on the test part (``reports/``);
5. roll ``model_u<seq>``/``index_u<seq>`` and ``knn_u<seq>`` out to the Serve app running on
   this Ray cluster, if any (``serving.rollout``).

New artifact names, not the served ones rewritten: the running replicas keep reading theirs
until the roll-out swaps them (and a roll-back is a ``user_config`` edit).
"""

from __future__ import annotations

import time
from typing import Any

from ray_jobs import build_index, train
from ray_jobs.warm_start import TrainJobConfig
from serving.event_feed import resolve_events_path
from towers import artifacts
from towers.data.fold import EVENTS_SEQ, fold_events, folded_seq
from towers.data.prepared import load_prepared
from towers.evaluation.protocol import compare_models
from towers.evaluation.report import markdown_report, plot_metrics_vs_k
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.events import read_events
from towers.storage.root import Storage
from towers.training.warm_start import Vocabularies

KS = (5, 10, 20)


def run(cfg: Any) -> dict[str, Any]:
    """The update of ``cfg`` (a ``PipelineConfig``); returns what it published and timings."""
    storage = Storage(cfg.storage)
    start = time.perf_counter()
    path = resolve_events_path(storage.uri, cfg.events_path)
    events = read_events(path, folded_seq(storage))
    add_vocabularies(storage, artifacts.latest_update(storage, artifacts.MODEL), cfg.split)
    manifest = fold_events(storage, events)
    seq = folded_seq(storage)
    names = {kind: artifacts.updated(kind, seq) for kind in ("model", "index", "knn")}
    if manifest is None and storage.exists(names["model"]):
        print(f"[update] no event after #{seq} in {path}: {names['model']}/ is up to date")
        return {"events": 0, **names}
    if manifest is not None:
        print(f"[update] folded {manifest['fold']} into {storage.uri}/data (events up to #{seq})")
    source = artifacts.latest_update(storage, artifacts.MODEL)
    timings = {}
    step = time.perf_counter()
    train.run(
        TrainJobConfig(
            storage=storage.uri,
            split=cfg.split,
            warm_start=source,
            export_as=names["model"],
            num_workers=cfg.num_workers,
            cpus_per_worker=cfg.cpus_per_worker,
            placement_strategy=cfg.placement_strategy,
            use_gpu=cfg.use_gpu,
            data_loader=cfg.data_loader,
            epochs=cfg.epochs,
        )
    )
    timings["warm_start"] = time.perf_counter() - step
    step = time.perf_counter()
    build_index.run(
        build_index.BuildIndexConfig(
            storage=storage.uri, model=names["model"], artifact=names["index"]
        )
    )
    timings["build_index"] = time.perf_counter() - step
    step = time.perf_counter()
    data = load_prepared(storage, cfg.split)
    knn_source = artifacts.latest_update(storage, artifacts.KNN)
    params = storage.read_manifest(knn_source, checksums=False).get("params", {})
    knn = UserKNN(**params).fit(data.full_train)
    artifacts.publish_user_knn(storage, knn, names["knn"], split=data.split, events_seq=seq)
    rec, model_manifest = artifacts.load_two_tower(storage, names["model"])
    models = {"two_tower": rec, "user_knn": knn, "popularity": PopularityRecommender()}
    models["popularity"].fit(data.full_train)
    report = compare_models(models, data, KS)
    report["update"] = {EVENTS_SEQ: seq, "warm_start": source, **names}
    markdown = markdown_report(report, KS)
    artifacts.publish_report(storage, report, markdown, plot_metrics_vs_k(report, KS))
    print(markdown)
    timings["knn_and_evaluate"] = time.perf_counter() - step
    rolled = _roll_out(names, rec.version, storage)
    wall = time.perf_counter() - start
    print(
        f"[update] done in {wall:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})"
    )
    return {
        "events": 0 if manifest is None else manifest["fold"]["events"],
        "version": model_manifest["version"],
        "rolled_out": rolled,
        "timings": timings,
        **names,
    }


def add_vocabularies(storage: Storage, artifact: str, split: str | None) -> bool:
    """Publishes the raw ids of an export written before exports carried them, when it was
    trained on ``data/`` as it is now (same sizes), so the warm start can map its rows once the
    fold grows ``data/``: the same weights and version, two files more. Returns whether it did."""
    if not storage.exists(artifact) or storage.exists(artifact, artifacts.USER_IDS):
        return False
    rec, manifest = artifacts.load_two_tower(storage, artifact)
    data = load_prepared(storage, split)
    if (rec.n_users, rec.n_items) != (data.n_users, data.n_items):
        return False  # the warm start says what differs
    own = ("files", "sha256", "created_at", "schema_version", "artifact", "version", "dim")
    fields = {k: v for k, v in manifest.items() if k not in own}
    vocab = Vocabularies.of_tables(data.users, data.items)
    artifacts.publish_two_tower(storage, rec, artifact, vocabularies=vocab, **fields)
    return True


def _roll_out(names: dict[str, str], version: str, storage: Storage) -> bool:
    """Rolls the update out to a Serve app on this Ray cluster; says how otherwise."""
    from serving.rollout import roll_out

    _, knn_version = artifacts.load_user_knn(storage, names["knn"])
    configs = {
        "TwoTower": {"model_artifact": names["model"], "index_artifact": names["index"]},
        "UserKNN": {"model_artifact": names["knn"]},
    }
    if roll_out(configs, {"TwoTower": version, "UserKNN": knn_version}):
        print(f"[update] rolled out {names['model']} (version {version}) and {names['knn']}")
        return True
    print(
        "[update] no Serve app on this Ray cluster; to serve the update, set the TwoTower "
        f"user_config to {configs['TwoTower']} and UserKNN's to {configs['UserKNN']} "
        "(serving/config.yaml) and run `serve deploy` again"
    )
    return False
