"""Score only the item-item reference on a prepared storage root; nothing is written under it.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.item_item --storage /tmp/beauty_run \\
        [--split temporal] [--model auto|ease|item_knn] [--ease-max-items 20000] [--out rows.jsonl]

The same code and protocol as ``ray_jobs.evaluate``'s ``item_item`` row
(``ray_jobs.evaluate.fit_item_item``): EASE (up to ``--ease-max-items`` items) or ItemKNN, its
setting chosen on the validation split by NDCG@10, refitted on train ∪ valid, then
``compare_models`` on test with train ∪ valid excluded. Prints the validation search, the choice
and the test table (P/R/MAP/NDCG/HR/coverage at 5, 10, 20); ``--out`` appends a JSON row. For
teammates who want the reference on their data without rerunning UserKNN or touching
``reports/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from ray_jobs.evaluate import KS, EvaluateConfig, fit_item_item
from towers.data.prepared import load_prepared
from towers.evaluation.item_item_selection import BUDGET_S
from towers.evaluation.protocol import compare_models
from towers.evaluation.report import ITEM_ITEM, markdown_report
from towers.recommenders.item_item import EASE_MAX_ITEMS
from towers.storage.root import Storage

SHOWN = tuple(f"{m}@{k}" for k in KS for m in ("precision", "recall", "map", "ndcg"))


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """The reference's report (``metrics.json``'s form, one model) for ``cfg.storage``."""
    data = load_prepared(Storage(cfg.storage), cfg.split)
    start = time.perf_counter()
    model, choice = fit_item_item(data, cfg)
    report = compare_models({ITEM_ITEM: model}, data, KS)
    report["item_item_params"] = {"model": choice.model, **choice.params}
    report["item_item_selection"] = choice.summary()
    report["seconds"] = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True, help="storage root with prepared data")
    parser.add_argument("--split", default=None, help="prepared split (default: the first)")
    parser.add_argument("--model", default="auto", choices=("auto", "ease", "item_knn"))
    parser.add_argument("--ease-max-items", type=int, default=EASE_MAX_ITEMS)
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="search time budget")
    parser.add_argument("--out", type=Path, default=None, help="append the report to this JSONL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = EvaluateConfig(
        storage=args.storage,
        split=args.split,
        item_item=args.model,
        ease_max_items=args.ease_max_items,
        item_item_budget_s=args.budget_s,
    )
    report = run(cfg)
    selection = report["item_item_selection"]
    print(f"validation search ({selection['metric']}, {selection['seconds']:.0f} s):")
    for row in selection["grid"]:
        print("  " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print(markdown_report(report, KS))
    values = report["models"][ITEM_ITEM]
    print(
        f"{report['dataset']} {report['split']} {selection['label']}: "
        + " ".join(f"{k} {values[k]:.4f}" for k in SHOWN)
        + f" ({report['seconds']:.0f} s)"
    )
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
