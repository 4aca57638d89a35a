"""The CLI generated from config dataclasses: types, choices, booleans, --config files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from towers.launch.cli import help_field, parse_config


@dataclass
class Example:
    """An example job."""

    name: str = help_field("x", "a name")
    count: int = help_field(3, "how many")
    rate: float | None = help_field(None, "optional rate")
    mode: Literal["a", "b"] = help_field("a", "a choice")
    flag: bool = help_field(True, "a switch")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("--count must be >= 0")


def test_defaults_and_overrides():
    assert parse_config(Example, []) == Example()
    cfg = parse_config(Example, ["--count", "5", "--rate", "0.5", "--mode", "b", "--no-flag"])
    assert (cfg.count, cfg.rate, cfg.mode, cfg.flag) == (5, 0.5, "b", False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "many"], "invalid int value"),
        (["--mode", "c"], "invalid choice"),
        (["--count", "-1"], "--count must be >= 0"),
        (["--colour", "red"], "unrecognized arguments"),
    ],
)
def test_bad_values_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Example, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_config_file_then_flags(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"count": 7, "name": "tuned"}}))
    cfg = parse_config(Example, ["--config", str(path), "--name", "flag-wins"])
    assert (cfg.count, cfg.name) == (7, "flag-wins")
    path.write_text(json.dumps({"counts": 7}))
    with pytest.raises(SystemExit):
        parse_config(Example, ["--config", str(path)])
    assert "unknown keys ['counts']" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"])
    out = capsys.readouterr().out
    for option in ("--name", "--count", "--rate", "--mode", "--flag", "--config", "how many"):
        assert option in out


@pytest.fixture
def busy_port():
    """A port with a listener on 127.0.0.1, as a server left running would hold it."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_busy_port_is_refused_before_anything_starts(busy_port, tmp_path):
    import subprocess
    import sys

    from serving.server import require_free_port

    with pytest.raises(SystemExit, match=f"cannot serve on 127.0.0.1:{busy_port}: .*--port"):
        require_free_port("127.0.0.1", busy_port)
    storage = tmp_path / "run"
    demo = subprocess.run(
        [sys.executable, "-m", "ray_jobs.demo", "--storage", str(storage), "--port",
         str(busy_port)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert demo.returncode == 1 and f"cannot serve on 127.0.0.1:{busy_port}" in demo.stderr
    assert not storage.exists()  # refused before the pipeline wrote anything


def test_a_port_passes_once_its_server_is_gone():
    import socket

    from serving.server import require_free_port

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(SystemExit):
            require_free_port("127.0.0.1", port)
    require_free_port("127.0.0.1", port)  # closed: free again


def test_missing_artifacts_are_named_before_ray_starts(tmp_path):
    import subprocess
    import sys

    from towers.storage.root import Storage

    storage = Storage(tmp_path / "run")
    storage.write_bytes("data/x", b"1")
    storage.publish("data", {})
    storage.write_bytes("model/x", b"1")  # begun, never published: a crash mid-export
    served = subprocess.run(
        [sys.executable, "-m", "serving", "--storage", storage.uri, "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert served.returncode == 1, served.stderr
    lines = served.stderr.splitlines()  # the first line is ours: nothing of Ray's came before
    assert lines[0] == f"cannot serve {storage.uri}:"
    assert "artifact 'model' is incomplete (a crash mid-write?)" in lines[1]
    assert "'index' is missing" in lines[2] and "'knn' is missing" in lines[3]
    assert lines[4] == f"write them with: python -m ray_jobs.pipeline --storage {storage.uri}"


def test_fault_plan_comes_from_the_environment_only(monkeypatch):
    from ray_jobs.faults import ENV, FaultPlan

    monkeypatch.delenv(ENV, raising=False)
    assert FaultPlan.from_env() == FaultPlan()
    monkeypatch.setenv(ENV, "crash_after_epoch=2, kill_worker_at=1:3")
    assert FaultPlan.from_env() == FaultPlan(crash_after_epoch=2, kill_worker_at="1:3")
    monkeypatch.setenv(ENV, "kill_worker_at=1")
    with pytest.raises(ValueError, match="TWO_TOWER_FAULTS: cannot read 'kill_worker_at=1'"):
        FaultPlan.from_env()


def test_fault_marker_keeps_each_fault_from_firing_again(tmp_path):
    """One run can take several faults (a crash, then a kill in the restarted group): the
    marker holds a line per fault that fired, and a fault is held back by its own line only."""
    from ray_jobs.faults import CRASHED, KILLED, PAUSED, FaultMarker

    marker = FaultMarker(str(tmp_path), "train/model-1")
    assert not marker.fired(CRASHED) and marker.lines() == []
    for _ in range(2):  # every rank that raises writes the same line
        marker.write(f"{CRASHED} after epoch 0")
    assert marker.fired(CRASHED) and not marker.fired(KILLED)
    marker.write(f"{KILLED} pid 7 at epoch 1 step 2")
    assert marker.fired(KILLED) and not marker.fired(PAUSED)
    text = (tmp_path / "train" / "model-1" / "fault_injected").read_text()
    assert text == "crashed after epoch 0\nkilled pid 7 at epoch 1 step 2\n"


def test_train_flags_for_the_large_catalog_path():
    """``--negatives`` / ``--sparse-embeddings`` parse as a choice and an optional switch; sparse
    tables are a one-worker setting (gloo's sparse all-reduce crashed DDP at scale)."""
    from types import SimpleNamespace

    from ray_jobs.train import TrainConfig
    from ray_jobs.train_config import SPARSE_ONE_WORKER
    from tests.features import random_features

    cfg = parse_config(TrainConfig, ["--num-workers", "1", "--no-sparse-embeddings"])
    assert (cfg.negatives, cfg.sparse_embeddings) == (None, False)
    cfg = parse_config(TrainConfig, ["--negatives", "mixed", "--num-workers", "1"])
    assert (cfg.negatives, cfg.sparse_embeddings) == ("mixed", None)  # None: the model decides
    with pytest.raises(ValueError, match="needs --num-workers 1"):
        TrainConfig(num_workers=2, sparse_embeddings=True)
    assert "NCCL has none" in SPARSE_ONE_WORKER
    large = SimpleNamespace(
        features=random_features(50, 3_000),
        has_ratings=True,
        time_ordered=False,
        next_item=False,
        train=range(250_000),  # its length: the training pairs
    )
    one = TrainConfig(num_workers=1).model_config(large)
    assert (one.negatives, one.sparse_embeddings) == ("user_full", False)  # auto; 3,000 <= 4,096
    assert one.epochs == 4  # wide towers: about WIDE_TRAIN_PAIRS pairs, 1M / 250k
    assert TrainConfig(num_workers=1, epochs=9).model_config(large).epochs == 9
    one = TrainConfig(num_workers=1, negatives="mixed").model_config(large)
    two = TrainConfig(num_workers=2, negatives="mixed").model_config(large)
    assert (one.negatives, one.sparse_embeddings) == ("mixed", True)  # sampled: sparse rows
    assert (two.negatives, two.sparse_embeddings) == ("mixed", False)  # DDP: dense tables
    # --ranking-loss squared: the search's candidate as it trains (its settings, unless given)
    from towers.model.config import SQUARED_LOSS

    squared = TrainConfig(num_workers=1, ranking_loss="squared").model_config(large)
    assert all(getattr(squared, k) == v for k, v in SQUARED_LOSS.items())
    assert (squared.ranking_loss_candidates, squared.temperature_candidates) == ((), ())
    given = TrainConfig(num_workers=1, ranking_loss="squared", lr=1e-2).model_config(large)
    assert (given.lr, given.normalize) == (1e-2, False)
    softmax = TrainConfig(num_workers=1, ranking_loss="softmax").model_config(large)
    assert (softmax.ranking_loss_candidates, softmax.normalize) == ((), True)
