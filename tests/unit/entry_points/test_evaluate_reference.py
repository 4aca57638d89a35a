"""The report's item-item reference row: ``ray_jobs.evaluate`` fits, labels and reports it."""

from __future__ import annotations

import json

import pytest

from ray_jobs import evaluate
from towers.data.prepared import write_prepared
from towers.evaluation.report import markdown_report
from towers.storage.root import Storage


@pytest.fixture(scope="module")
def report_storage(tmp_path_factory, tiny_raw) -> Storage:
    """A storage root with tiny data and ``reports/`` from the baselines (no two-tower)."""
    storage = Storage(tmp_path_factory.mktemp("reference-run"))
    write_prepared(storage, tiny_raw, "synthetic", ["random"], seed=42)
    evaluate.run(evaluate.EvaluateConfig(storage=str(storage.uri)), print_report=False)
    return storage


def test_report_has_the_item_item_row_with_its_setting(report_storage: Storage) -> None:
    report = report_storage.read_json("reports/metrics.json")
    assert set(report["models"]) == {"user_knn", "item_item", "popularity"}
    assert report["item_item_params"]["model"] == "ease"  # 200 items: EASE
    selection = report["item_item_selection"]
    l2 = report["item_item_params"]["l2"]
    assert selection["label"] == f"EASE, λ={l2:g}" and selection["metric"] == "ndcg@10"
    assert selection["valid"] == max(row["ndcg@10"] for row in selection["grid"])
    for k in (5, 10, 20):
        assert 0 <= report["models"]["item_item"][f"ndcg@{k}"] <= 1
    markdown = report_storage.read_bytes("reports/metrics.md").decode()
    assert f"| item_item (EASE, λ={l2:g}) |" in markdown
    assert "item-item reference" in markdown
    assert "| user_knn |" in markdown and "| popularity |" in markdown  # existing rows unchanged


def test_item_item_off_leaves_the_report_as_before(report_storage: Storage) -> None:
    cfg = evaluate.EvaluateConfig(str(report_storage.uri), item_item="off", reports="reports_off")
    report = evaluate.run(cfg, print_report=False)
    assert set(report["models"]) == {"user_knn", "popularity"}
    assert "item_item_params" not in report
    assert "item-item" not in markdown_report(report)


def test_bench_scores_only_the_reference(report_storage: Storage, tmp_path, capsys) -> None:
    from bench import item_item

    rows = tmp_path / "rows.jsonl"
    argv = ["--storage", str(report_storage.uri), "--model", "item_knn", "--budget-s", "0"]
    item_item.main([*argv, "--out", str(rows)])
    out = capsys.readouterr().out
    assert "| item_item (ItemKNN, 20 neighbours, shrink 0) |" in out  # the budget stops at one
    row = json.loads(rows.read_text())
    assert set(row["models"]) == {"item_item"}
    assert row["item_item_params"] == {"model": "item_knn", "n_neighbors": 20, "shrink": 0.0}
