"""Ray Tune: a 2-trial search on tiny data writes its outputs and picks the best trial."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ray_jobs.train import TrainConfig
from towers.launch.cli import parse_config
from tuning import tune

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_search_runs_at_most_max_concurrent_trials():
    cfg = tune.TuneJobConfig(storage="unused", max_concurrent=2)
    assert tune.search_algorithm(cfg).max_concurrent == 2  # 0 (unlimited) before the fix


def test_the_learning_rate_is_searched_around_the_datas_default():
    from towers.model.config import WIDE_TOWERS

    paper = tune.search_space(1e-3)["lr"]
    wide = tune.search_space(WIDE_TOWERS["lr"])["lr"]
    assert (paper.lower, paper.upper) == pytest.approx((1e-4, 3e-3))
    assert (wide.lower, wide.upper) == pytest.approx((3e-3, 9e-2))  # the wide towers' 3e-2 inside


def test_two_trial_search_and_resume(ray_session, tiny_storage, tmp_path):
    cfg = tune.TuneJobConfig(storage=tiny_storage.uri, num_samples=2, max_epochs=2, grace_period=1)
    manifest = tune.run(cfg)
    trials = tiny_storage.read_parquet("tuning/trials.parquet")
    assert len(trials) == 2 and manifest["num_trials"] == 2
    best = tiny_storage.read_json("tuning/best_config.json")
    top = trials.loc[trials["best_ndcg@10"].idxmax()]
    assert best["lr"] == pytest.approx(top["lr"]) and best["embedding_dim"] == top["embedding_dim"]
    assert manifest["best_valid"] == pytest.approx(trials["best_ndcg@10"].max())
    for png in ("metric_vs_lr.png", "learning_curves.png"):
        assert tiny_storage.read_bytes(f"tuning/{png}")[:4] == b"\x89PNG"
    curves = tiny_storage.read_parquet("tuning/curves.parquet")
    assert set(curves["trial"]) == set(trials["trial"]) and curves["epoch"].max() <= 1
    # One TensorBoard run per trial (Ray Tune's logger), with the validation curve in it.
    from tests.integration.test_train_ray import scalars

    event_dirs = {p.parent for p in Path(tiny_storage.path("tuning")).rglob("events.out.*")}
    assert len(event_dirs) == 2
    for folder in event_dirs:
        tags = scalars(folder)
        assert {"ray/tune/ndcg_10", "ray/tune/loss", "ray/tune/samples_per_s"} <= set(tags)

    # The best config feeds the training job's --config as it is.
    path = tmp_path / "best.json"
    path.write_text(json.dumps(best))
    train_cfg = parse_config(TrainConfig, ["--config", str(path), "--storage", tiny_storage.uri])
    assert train_cfg.lr == best["lr"] and train_cfg.embedding_dim == best["embedding_dim"]

    # Restoring a finished search redoes no trial: the same two results come back.
    again = tune.run(
        tune.TuneJobConfig(storage=tiny_storage.uri, num_samples=2, max_epochs=2, resume=True)
    )
    again_trials = tiny_storage.read_parquet("tuning/trials.parquet")
    pd.testing.assert_frame_equal(
        trials.sort_values("lr").reset_index(drop=True),
        again_trials.sort_values("lr").reset_index(drop=True),
    )
    assert again["trial_epochs"] == manifest["trial_epochs"]


def test_bad_tune_arguments():
    with pytest.raises(ValueError, match="must be >= 1"):
        tune.TuneJobConfig(num_samples=0)
