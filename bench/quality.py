"""One row of the quality ablation (docs/QUALITY.md): fit, refit, score on test, in one process.

    .venv/bin/python -m bench.quality --storage runs/demo [--split random] [--preset default] \\
        [--set batch_size=1024 --set epochs=20 ...] [--threads 1] [--out rows.jsonl]

The same protocol as the Ray jobs, without Ray so that a row costs only its epochs: early
stopping on validation ``config.early_stopping_metric`` (test never seen), then a fresh model
refitted on train ∪ valid for ``best_epoch + 1`` epochs (same seed, same cosine schedule), then
``towers.evaluation.protocol.evaluate_model`` on test with training items excluded — what
``ray_jobs.evaluate`` does for the exported model. Prints the validation and test metrics and
appends a JSON row to ``--out`` when given. The storage root must hold prepared data
(``python -m ray_jobs.prepare``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from towers.data.prepared import load_prepared
from towers.evaluation.protocol import evaluate_model
from towers.model.config import TwoTowerConfig
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.storage.root import Storage
from towers.training.loop import fit
from towers.training.selection import SELECT, candidate_score, label

VALID_KEYS = ("recall@10", "ndcg@10", "precision@10", "map@10", "rmse")
SHOWN = ("precision@5", "precision@10", "recall@10", "ndcg@10", "map@10", "precision@20", "rmse")


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value``, the value a Python literal (``1e-3``, ``(256, 256)``, ``True``) or a word."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def run_row(
    storage: Storage, split: str | None, preset: str, overrides: dict[str, Any], refit: bool
) -> dict[str, Any]:
    data = load_prepared(storage, split)
    config = TwoTowerConfig.from_preset(preset, **overrides)
    # Implicit data: no rating parts; time-ordered data: a decayed history pool.
    config = config.for_data(data)
    metric = config.early_stopping_metric
    start = time.perf_counter()
    scale = data.rating_scale
    model, history = fit(
        config,
        data.train,
        data.valid,
        data.features,
        rating_scale=scale,
        refit=refit,
        log=lambda row: print(progress_line(row, metric), file=sys.stderr, flush=True),
    )
    search = [h for h in history if h["phase"] == "search"]
    values = [h[metric] for h in search]
    best_epoch = values.index(min(values) if metric == "rmse" else max(values))
    # Refit or not, the user tower reads every known interaction (ray_jobs.train's export).
    rec = TwoTowerRecommender.from_model(model, data.features, data.full_train, data.rating_scale)
    test = evaluate_model(rec, data.full_train, data.test, with_ratings=data.has_ratings)
    return {
        "split": data.split,
        "preset": preset,
        "overrides": overrides,
        "refit": refit,
        "best_epoch": best_epoch,
        "epochs_run": len(search),
        "seconds": round(time.perf_counter() - start, 1),
        "valid": {k: round(v, 4) for k, v in search[best_epoch].items() if "@" in k or k == "rmse"},
        "valid_by_epoch": [round(v, 4) for v in values],  # the early-stopping metric, each epoch
        "test": {k: round(float(v), 4) for k, v in test.items()},
        "temperature": model.config.temperature,  # chosen on validation where searched
        "ranking_loss": model.config.ranking_loss,
        "selection": selection(history, metric),
    }


def selection(history: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Each candidate of the validation search (towers/training/selection.py): its temperature
    or loss and best validation value over its epochs, in the order tried."""
    runs: dict[int, list[dict[str, Any]]] = {}
    for h in history:
        if h["phase"] == SELECT:
            runs.setdefault(h["candidate"], []).append(h)
    return [
        {**label(rows[0]), metric: round(candidate_score(rows, metric), 4)}
        for rows in runs.values()
    ]


def progress_line(row: dict[str, Any], metric: str) -> str:
    """One epoch's progress: phase, epoch, seconds, and the validation metric where there is one."""
    shown = f" valid {metric} {row[metric]:.4f}" if metric in row else ""
    if "candidate" in row:  # a candidate of the validation search
        named = " ".join(f"{k} {v}" for k, v in label(row).items())
        shown = f" {named}{shown}"
    return f"[quality] {row['phase']} epoch {row['epoch']} {row['seconds']:.0f}s{shown}"


TABLE_KEYS = ("precision@5", "precision@10", "recall@10", "ndcg@10", "map", "precision@20", "rmse")


def markdown_rows(path: Path) -> str:
    """The rows of a ``--out`` JSONL file as a markdown table (docs/QUALITY.md)."""
    lines = [
        "| split | settings (over the preset) | best epoch | valid NDCG@10 | "
        + " | ".join(TABLE_KEYS)
        + " |",
        "|---|---|---:|---:|" + "---:|" * len(TABLE_KEYS),
    ]
    for text in path.read_text().splitlines():
        row = json.loads(text)
        settings = ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "–"
        if row["preset"] != "default":
            settings = f"preset {row['preset']}; {settings}"
        values = " | ".join(f"{row['test'].get(k, float('nan')):.4f}" for k in TABLE_KEYS)
        lines.append(
            f"| {row['split']} | {settings} | {row['best_epoch']} | "
            f"{row['valid'].get('ndcg@10', float('nan')):.4f} | {values} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", help="storage root with prepared data")
    parser.add_argument("--table", type=Path, help="print a --out JSONL file as markdown, exit")
    parser.add_argument("--split", default=None, help="prepared split (default: the first)")
    parser.add_argument("--preset", default="default", help="TwoTowerConfig preset")
    parser.add_argument(
        "--set", dest="overrides", action="append", type=parse_override, default=[],
        metavar="KEY=VALUE", help="override one TwoTowerConfig field (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-refit", dest="refit", action="store_false", help="skip the refit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="append the row to this JSONL")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(markdown_rows(args.table))
        return
    if args.storage is None:
        parser.error("--storage is required (or --table FILE)")
    torch.set_num_threads(args.threads)
    row = run_row(Storage(args.storage), args.split, args.preset, dict(args.overrides), args.refit)
    print(
        f"{row['split']} {args.preset} {row['overrides']} best epoch {row['best_epoch']} "
        f"({row['epochs_run']} run) {row['seconds']}s | valid ndcg@10 "
        f"{row['valid'].get('ndcg@10', float('nan')):.4f} | test "
        + " ".join(f"{k} {row['test'][k]:.4f}" for k in SHOWN if k in row["test"])
    )
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
