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
import time
from dataclasses import dataclass
from typing import Any

from towers import artifacts
from towers.data.prepared import PreparedData, load_prepared
from towers.evaluation.knn_selection import tune_user_knn
from towers.evaluation.protocol import compare_models
from towers.evaluation.report import markdown_report, plot_metrics_vs_k
from towers.launch.cli import help_field, parse_config
from towers.recommenders.base import Recommender
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import Storage

log = logging.getLogger("evaluate")
KS = (5, 10, 20)


@dataclass
class EvaluateConfig:
    """Evaluate two-tower, UserKNN and popularity on one split; write STORAGE/reports."""

    storage: str = help_field("runs/demo", "storage root")
    split: str | None = help_field(None, "prepared split to evaluate (default: the first)")
    knn_metric: str = help_field("ndcg@10", "validation metric UserKNN's settings are chosen by")
    reports: str = help_field(artifacts.REPORTS, "artifact folder for the report")


def fit_user_knn(storage: Storage, data: PreparedData, metric: str) -> tuple[UserKNN, dict]:
    """Chooses UserKNN's settings on validation, refits on train ∪ valid, publishes ``knn/``."""
    start = time.perf_counter()
    # Implicit feedback: the explicit mode's centred ratings would all be 0, so only "implicit".
    grid = None if data.has_ratings else {"mode": ("implicit",)}
    if not data.has_ratings and metric in ("mse", "rmse", "mae", "r2"):
        raise ValueError(f"--knn-metric {metric}: this data set is implicit (no ratings)")
    best, table = tune_user_knn(data.train, data.valid, grid=grid, metric=metric)
    model = UserKNN(**best).fit(data.full_train)
    artifacts.publish_user_knn(
        storage,
        model,
        grid=table,
        metric=metric,
        split=data.split,
        grid_points=len(table),
        best_valid=float(table[metric].max()),
    )
    log.info(
        "UserKNN %s (valid %s %.4f) in %.1fs",
        best,
        metric,
        table[metric].max(),
        time.perf_counter() - start,
    )
    return model, best


def run(cfg: EvaluateConfig, print_report: bool = True) -> dict[str, Any]:
    """Fits the baselines, evaluates every model, publishes ``reports/``; prints the table unless
    ``print_report`` is off (the pipeline prints it once, at its end)."""
    storage = Storage(cfg.storage)
    data = load_prepared(storage, cfg.split)
    models: dict[str, Recommender] = {}
    for name, artifact in artifacts.TWO_TOWER_EXPORTS.items():
        if storage.exists(artifact):
            models[name] = artifacts.load_two_tower(storage, artifact)[0]
    if "two_tower" not in models:
        log.warning(
            "no model/ under %s: run ray_jobs.train first; evaluating baselines", storage.uri
        )
    knn, knn_params = fit_user_knn(storage, data, cfg.knn_metric)
    models["user_knn"] = knn
    models["popularity"] = PopularityRecommender().fit(data.full_train)
    report = compare_models(models, data, KS)
    report["user_knn_params"] = knn_params
    markdown = markdown_report(report, KS)
    artifacts.publish_report(storage, report, markdown, plot_metrics_vs_k(report, KS), cfg.reports)
    if print_report:
        print(markdown)
    print(f"wrote {storage.uri}/{cfg.reports}/ (metrics.json, metrics.md, metrics_vs_k.png)")
    return report


def main(argv: list[str] | None = None) -> None:
    run(parse_config(EvaluateConfig, argv))


if __name__ == "__main__":
    main()
