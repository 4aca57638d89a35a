"""A crash while writing a checkpoint or an export never leaves something readers take as complete.

The export path is ``ray_jobs.train.export`` (what a finished Ray Train run calls); the crash is a
write that fails part-way, after some files of the new version are already in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_jobs import train
from towers import artifacts
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.storage.root import ArtifactError, Storage
from towers.training.checkpoint import load_checkpoint, save_checkpoint
from towers.training.loop import LoopState
from towers.training.steps import make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(embedding_dim=8, id_dim=8, feature_dim=4, hidden_dims=(16,), epochs=1)


@pytest.fixture()
def checkpoint(tmp_path, tiny_data) -> Path:
    config = TwoTowerConfig.from_preset("default", **SMALL).sized_for(tiny_data.features)
    model = TwoTower(config)
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model, make_optimizer(model, config), LoopState(epoch=0), None)
    return folder


def fail_after(monkeypatch, target, attribute: str, calls: int) -> None:
    """Makes ``target.attribute`` raise on call number ``calls + 1`` (the first ``calls`` work)."""
    real = getattr(target, attribute)
    seen = {"n": 0}

    def flaky(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise OSError("injected: disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, flaky)


def test_export_crash_leaves_no_complete_artifact(monkeypatch, tiny_storage, tiny_data, checkpoint):
    cfg = train.TrainConfig(storage=tiny_storage.uri, export_as="model_crashy")
    manifest = train.export(cfg, tiny_data, checkpoint)  # a good version first
    assert tiny_storage.read_manifest("model_crashy")["version"] == manifest["version"]
    # Retrain and export again, dying after two files of the new version were written.
    fail_after(monkeypatch, Storage, "write_bytes", 2)
    with pytest.raises(OSError, match="injected"):
        train.export(cfg, tiny_data, checkpoint)
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="incomplete"):
        tiny_storage.read_manifest("model_crashy")
    with pytest.raises(ArtifactError, match="incomplete"):
        artifacts.load_two_tower(tiny_storage, "model_crashy")  # what evaluate/serving read
    assert not tiny_storage.is_complete("model_crashy")  # so the pipeline reruns the step
    train.export(cfg, tiny_data, checkpoint)  # and a rerun repairs it
    assert tiny_storage.is_complete("model_crashy")


@pytest.mark.parametrize("dies_in", ["state", "config"])
def test_checkpoint_crash_is_refused_on_resume(monkeypatch, tmp_path, tiny_data, dies_in):
    config = TwoTowerConfig.from_preset("default", **SMALL).sized_for(tiny_data.features)
    model = TwoTower(config)
    folder = tmp_path / "partial"
    if dies_in == "state":  # torch.save writes part of state.pt, then the process dies

        def torn_save(obj, path, *args, **kwargs):  # fmt: skip
            Path(path).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError("injected: killed mid-write")

        monkeypatch.setattr(torch, "save", torn_save)
    else:  # state.pt done, config.json never written
        fail_after(monkeypatch, Path, "write_text", 0)
    with pytest.raises(OSError, match="injected"):
        save_checkpoint(folder, model, make_optimizer(model, config), LoopState(epoch=3), None)
    monkeypatch.undo()
    # Ray Train never sees this folder (report() comes after save_checkpoint returns); a reader
    # pointed at it anyway gets a clear error, not a half-restored model.
    with pytest.raises((FileNotFoundError, RuntimeError), match="lacks|zip|checkpoint"):
        load_checkpoint(folder)
