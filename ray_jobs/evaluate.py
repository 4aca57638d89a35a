"""Evaluate every model on the same test split and candidates; write ``reports/``.

    python -m ray_jobs.evaluate --storage runs/demo [--split temporal]

Models: the exported two-tower (``model/``), the paper preset (``model_paper/``) and the tuned one
(``model_tuned/``) where they exist; UserKNN, tuned on the validation split (mode, neighbours,
min_sim) and refitted on train ∪ valid, saved to ``knn/``; the item-item reference
(``item_item``: EASE up to ``--ease-max-items`` items, ItemKNN above), tuned on validation and
refitted the same way (not saved: EASE's dense weights are 4 n² bytes and nothing serves them;
its search is in ``metrics.json``); and popularity, the floor. Evaluating ML-100K takes seconds in
one process, so no Ray tasks are needed here; the job runs unchanged under ``ray job submit``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from towers import artifacts
from towers.data.prepared import PreparedData, load_prepared
from towers.evaluation.item_item_selection import (
    BUDGET_S,
    ItemItemChoice,
    ItemItemModel,
    select_item_item,
)
from towers.evaluation.knn_selection import tune_user_knn
from towers.evaluation.protocol import compare_models
from towers.evaluation.report import ITEM_ITEM, markdown_report, plot_metrics_vs_k
from towers.launch.cli import help_field, parse_config
from towers.recommenders.base import Recommender
from towers.recommenders.item_item import EASE_MAX_ITEMS
from towers.recommenders.popularity import PopularityRecommender
from towers.recommenders.user_knn import UserKNN
from towers.storage.root import Storage

log = logging.getLogger("evaluate")
KS = (5, 10, 20)
# The baseline rows every report has (the pipeline reruns evaluate when this changes).
BASELINES = ("user_knn", ITEM_ITEM, "popularity")


@dataclass
class EvaluateConfig:
    """Evaluate two-tower, UserKNN, the item-item reference and popularity on one split; write
    STORAGE/reports."""

    storage: str = help_field("runs/demo", "storage root")
    split: str | None = help_field(None, "prepared split to evaluate (default: the first)")
    knn_metric: str = help_field("ndcg@10", "validation metric UserKNN's settings are chosen by")
    item_item: Literal["auto", "ease", "item_knn", "off"] = help_field(
        "auto", "item-item reference: auto (EASE up to --ease-max-items items, ItemKNN above)"
    )
    ease_max_items: int = help_field(
        EASE_MAX_ITEMS, "largest catalog EASE is fitted for (4 n² bytes twice, O(n³) time)"
    )
    item_item_budget_s: float = help_field(
        BUDGET_S, "seconds after which the item-item search starts no new setting"
    )
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


def fit_item_item(data: PreparedData, cfg: EvaluateConfig) -> tuple[Recommender, ItemItemChoice]:
    """Chooses the item-item reference on validation (ranking metric ``cfg.knn_metric``, or
    NDCG@10 where that is a rating metric) and refits it on train ∪ valid."""
    metric = cfg.knn_metric if "@" in cfg.knn_metric or cfg.knn_metric == "map" else "ndcg@10"
    if cfg.item_item == "off":
        raise ValueError("fit_item_item: --item-item off")
    choice = select_item_item(
        data.train,
        data.valid,
        cast(ItemItemModel, cfg.item_item),
        metric,
        ease_max_items=cfg.ease_max_items,
        budget_s=cfg.item_item_budget_s,
    )
    start = time.perf_counter()
    model = choice.build().fit(data.full_train)
    log.info(
        "item-item reference %s (valid %s %.4f, %d settings in %.1fs; refit %.1fs)",
        choice.label,
        metric,
        choice.valid_value,
        len(choice.results),
        choice.seconds,
        time.perf_counter() - start,
    )
    return model, choice


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
    choice = None
    if cfg.item_item != "off":
        models[ITEM_ITEM], choice = fit_item_item(data, cfg)
    models["popularity"] = PopularityRecommender().fit(data.full_train)
    report = compare_models(models, data, KS)
    report["user_knn_params"] = knn_params
    if choice is not None:
        report["item_item_params"] = {"model": choice.model, **choice.params}
        report["item_item_selection"] = choice.summary()
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
