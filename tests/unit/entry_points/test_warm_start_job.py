"""``ray_jobs.train --warm-start``: what is refused before any Ray work, and the help."""

from __future__ import annotations

import shutil

import pytest

from ray_jobs import train
from towers import artifacts
from towers.launch.cli import parse_config
from towers.model.config import TwoTowerConfig
from towers.recommenders.two_tower import TwoTowerRecommender
from towers.training.warm_start import Vocabularies, WarmStartError


@pytest.fixture(scope="module")
def small_run(tiny_storage, tiny_data):
    """``model_ws/``: a 32-d model of one epoch, exported with its ids."""
    config = TwoTowerConfig.from_preset("default", epochs=1, embedding_dim=32)
    config = config.sized_for(tiny_data.features, tiny_data.has_ratings)
    rec = TwoTowerRecommender(config, tiny_data.features).fit(tiny_data.train)
    vocab = Vocabularies.of_tables(tiny_data.users, tiny_data.items)
    artifacts.publish_two_tower(tiny_storage, rec, "model_ws", vocabularies=vocab)
    return tiny_storage


def test_missing_or_foreign_artifacts_are_named(small_run):
    with pytest.raises(WarmStartError, match="no_such_model.*missing"):
        train.run(train.TrainJobConfig(storage=small_run.uri, warm_start="no_such_model"))
    with pytest.raises(WarmStartError, match="data.*not a two-tower model"):
        train.run(train.TrainJobConfig(storage=small_run.uri, warm_start="data"))


def test_a_different_architecture_is_named(small_run):
    cfg = train.TrainJobConfig(storage=small_run.uri, warm_start="model_ws", embedding_dim=48)
    with pytest.raises(WarmStartError, match="embedding_dim: 32 -> 48"):
        train.run(cfg)


def test_warm_start_config(small_run):
    """The previous model's architecture, this data's sizes, a third of its epochs (1 to 3)
    unless given."""
    data = train.load_prepared(small_run)
    cfg = parse_config(train.TrainJobConfig, ["--warm-start", f"{small_run.uri}/model_ws"])
    config, weights, fields = train.warm_start(train.replace(cfg, num_workers=1), data)
    assert config.embedding_dim == 32 and config.epochs == 1 and weights  # a third of 1: 1
    assert fields["warm_start"].endswith("/model_ws")
    cfg = train.TrainJobConfig(storage=small_run.uri, warm_start="model_ws", epochs=5, lr=1e-4)
    config, _, _ = train.warm_start(cfg, data)
    assert (config.epochs, config.lr) == (5, 1e-4)


def test_help_says_epochs_and_adam(capsys):
    with pytest.raises(SystemExit):
        parse_config(train.TrainJobConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--warm-start" in out and "Adam restarts" in out and "a third of its epochs" in out


def test_an_export_without_ids_gets_them_before_a_fold(tiny_storage, tiny_data, tmp_path):
    """``--update`` on a model exported before exports carried their ids: trained on data/ as
    it is, its ids are published (same version), so the warm start maps it after the fold."""
    from ray_jobs.update import add_vocabularies
    from towers.storage.root import Storage

    storage = Storage(tmp_path)
    shutil.copytree(tiny_storage.path("data"), storage.path("data"))
    config = TwoTowerConfig.from_preset("default", epochs=1, embedding_dim=16)
    config = config.sized_for(tiny_data.features, tiny_data.has_ratings)
    rec = TwoTowerRecommender(config, tiny_data.features).fit(tiny_data.train)
    artifacts.publish_two_tower(storage, rec, "model", inputs="abc")  # no ids: as before
    assert add_vocabularies(storage, "model", "random")
    manifest = storage.read_manifest("model")  # complete, every file checked
    assert manifest["version"] == rec.version and manifest["inputs"] == "abc"
    _, vocab = artifacts.load_warm_start(storage, "model")
    assert vocab is not None and list(vocab.users) == list(tiny_data.users["user_id"])
    assert not add_vocabularies(storage, "model", "random")  # once
