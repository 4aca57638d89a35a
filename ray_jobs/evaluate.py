"""Evaluate every model on the same test split and candidates; write ``reports/``.

    python -m ray_jobs.evaluate --storage runs/demo [--split temporal]

Models: the exported two-tower (``model/``), the paper preset (``model_paper/``) and the tuned one
(``model_tuned/``) where they exist; UserKNN, tuned on the validation split (mode, neighbours,
min_sim) and refitted on train ∪ valid, saved to ``knn/``; and popularity, the floor. Evaluating
ML-100K takes a second in one process, so no Ray tasks are needed here; the job runs unchanged under
``ray job submit``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from towers.data.prepared import PreparedData, load_prepared
from towers.evaluation.knn_selection import tune_user_knn
from towers.evaluation.protocol import evaluate_model
from towers.evaluation.report import markdown_report, plot_metrics_vs_k
from towers.launch.cli import help_field, parse_config
from towers.recommenders.base import Recommender
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import Storage

log = logging.getLogger("evaluate")
KS = (5, 10, 20)
TWO_TOWER_ARTIFACTS = {
    "two_tower": "model",
    "two_tower_tuned": "model_tuned",
    "two_tower_paper": "model_paper",
}


@dataclass
class EvaluateConfig:
    """Evaluate two-tower, UserKNN and popularity on one split; write STORAGE/reports."""

    storage: str = help_field("runs/demo", "storage root")
    split: str | None = help_field(None, "prepared split to evaluate (default: the first)")
    knn_metric: str = help_field("ndcg@10", "validation metric UserKNN's settings are chosen by")
    reports: str = help_field("reports", "artifact folder for the report")


def load_two_tower(storage: Storage, artifact: str) -> TwoTowerRecommender:
    storage.read_manifest(artifact)  # refuses an incomplete export with a clear message
    with storage.local_copy(artifact) as folder:
        return TwoTowerRecommender.load(folder)


def fit_user_knn(storage: Storage, data: PreparedData, metric: str) -> tuple[UserKNN, dict]:
    """Chooses UserKNN's settings on validation, refits on train ∪ valid, saves ``knn/``."""
    start = time.perf_counter()
    best, table = tune_user_knn(data.train, data.valid, metric=metric)
    model = UserKNN(**best).fit(data.full_train)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "knn")
        storage.begin_artifact("knn")
        storage.upload_dir(Path(tmp) / "knn", "knn")
    storage.write_parquet("knn/validation_grid.parquet", table)
    storage.publish(
        "knn",
        {
            "params": best,
            "metric": metric,
            "split": data.split,
            "grid_points": len(table),
            "best_valid": float(table[metric].max()),
        },
    )
    log.info(
        "UserKNN %s (valid %s %.4f) in %.1fs",
        best,
        metric,
        table[metric].max(),
        time.perf_counter() - start,
    )
    return model, best


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    storage = Storage(cfg.storage)
    data = load_prepared(storage, cfg.split)
    models: dict[str, Recommender] = {}
    versions: dict[str, str] = {}
    for name, artifact in TWO_TOWER_ARTIFACTS.items():
        if storage.exists(artifact):
            rec = load_two_tower(storage, artifact)
            models[name], versions[name] = rec, rec.version
    if "two_tower" not in models:
        log.warning(
            "no model/ under %s: run ray_jobs.train first; evaluating baselines", storage.uri
        )
    knn, knn_params = fit_user_knn(storage, data, cfg.knn_metric)
    models["user_knn"] = knn
    models["popularity"] = PopularityRecommender().fit(data.full_train)
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = evaluate_model(model, data.full_train, data.test, ks=KS)
        log.info("%s evaluated in %.2fs", name, time.perf_counter() - start)
    report = {
        "dataset": data.manifest["dataset"],
        "split": data.split,
        "n_test_users": int(next(iter(results.values()))["n_users"]),
        "model_versions": versions,
        "user_knn_params": knn_params,
        "models": {name: {k: float(v) for k, v in r.items()} for name, r in results.items()},
    }
    out = cfg.reports
    storage.begin_artifact(out)
    storage.write_json(f"{out}/metrics.json", report)
    markdown = markdown_report(report, KS)
    storage.write_bytes(f"{out}/metrics.md", markdown.encode())
    storage.write_bytes(f"{out}/metrics_vs_k.png", plot_metrics_vs_k(report, KS))
    storage.publish(out, {"split": data.split, "models": sorted(results)})
    print(markdown)
    print(f"wrote {storage.uri}/{out}/ (metrics.json, metrics.md, metrics_vs_k.png)")
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EvaluateConfig, argv))


if __name__ == "__main__":
    main()
