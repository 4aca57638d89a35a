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
    small = ["embedding_dim=8", "id_dim=8", "feature_dim=4", "hidden_dims=(16,)", "epochs=2"]
    argv = ["--storage", tiny_storage.uri, "--out", str(out)]
    quality.main(argv + [a for s in small for a in ("--set", s)])
    row = json.loads(out.read_text())
    assert row["refit"] is True and row["epochs_run"] == 2 and row["best_epoch"] in (0, 1)
    assert 0.0 <= row["test"]["ndcg@10"] <= 1.0 and row["test"]["rmse"] > 0
    assert len(row["valid_by_epoch"]) == 2 and max(row["valid_by_epoch"]) == row["valid"]["ndcg@10"]
    lines = capsys.readouterr().err.splitlines()  # progress: one line an epoch
    refit = [["refit", "epoch", str(e)] for e in range(row["best_epoch"] + 1)]
    assert [line.split()[1:4] for line in lines] == [
        ["search", "epoch", "0"],
        ["search", "epoch", "1"],
        *refit,
    ]
    assert "valid ndcg@10" in lines[0] and "valid" not in lines[-1]  # refit has no validation
    table = quality.markdown_rows(out)
    assert table.count("\n") == 2 and "epochs=2" in table  # header, rule, one row
