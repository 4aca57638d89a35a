"""bench/quality.py: the override parser, one tiny ablation row end to end, the markdown table."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import quality

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_overrides_parse_literals_and_words():
    assert quality.parse_override("lr=3e-3") == ("lr", 3e-3)
    assert quality.parse_override("hidden_dims=(64, 32)") == ("hidden_dims", (64, 32))
    assert quality.parse_override("loss=softmax") == ("loss", "softmax")
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        quality.parse_override("lr")


def test_one_row_fits_refits_scores_and_tabulates(tiny_storage, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    small = ["embedding_dim=8", "id_dim=8", "feature_dim=4", "hidden_dims=(16,)", "epochs=3"]
    argv = ["--storage", tiny_storage.uri, "--out", str(out)]
    quality.main(argv + [a for s in small for a in ("--set", s)])
    row = json.loads(out.read_text())
    assert row["refit"] is True and row["epochs_run"] == 3 and row["best_epoch"] in (0, 1, 2)
    assert 0.0 <= row["test"]["ndcg@10"] <= 1.0 and row["test"]["rmse"] > 0
    assert len(row["valid_by_epoch"]) == 3 and max(row["valid_by_epoch"]) == row["valid"]["ndcg@10"]
    lines = capsys.readouterr().err.splitlines()  # progress: one line an epoch
    # The candidates (each temperature of the softmax, then the squared loss on this small
    # catalog) train the first SELECT_EPOCHS epochs each; the chosen one's are the search
    # phase's first (not shown twice), which goes on to the budget.
    from towers.model.defaults import SELECT_EPOCHS, TEMPERATURES

    assert SELECT_EPOCHS == 2
    labels = [*({"temperature": t} for t in TEMPERATURES), {"ranking_loss": "squared"}]
    select = [["select", "epoch", str(e)] for _ in labels for e in range(SELECT_EPOCHS)]
    refit = [["refit", "epoch", str(e)] for e in range(row["best_epoch"] + 1)]
    assert [line.split()[1:4] for line in lines] == [*select, ["search", "epoch", "2"], *refit]
    assert [{k: v for k, v in t.items() if k != "ndcg@10"} for t in row["selection"]] == labels
    scores = [t["ndcg@10"] for t in row["selection"]]
    chosen = labels[scores.index(max(scores))]
    assert row["ranking_loss"] == chosen.get("ranking_loss", "softmax")
    assert "temperature" not in chosen or row["temperature"] == chosen["temperature"]
    assert all("valid ndcg@10" in line for line in lines[: len(select) + 1])
    assert "valid" not in lines[-1]  # refit: none
    table = quality.markdown_rows(out)
    assert table.count("\n") == 2 and "epochs=3" in table  # header, rule, one row
