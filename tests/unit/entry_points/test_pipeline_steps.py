"""``ray_jobs.pipeline.Steps``: a step runs once, is skipped while its artifact is up to date,
and runs again when its inputs change, its files are damaged, or ``--force`` is given."""

from __future__ import annotations

from ray_jobs.pipeline import PipelineConfig, Steps
from towers.storage.root import Storage


def test_steps_run_skip_and_rerun(tmp_path, capsys):
    runs, storage = [], Storage(tmp_path / "run")

    def write(version: str):
        def action() -> None:
            runs.append(version)
            storage.write_bytes("model/w.bin", version.encode())
            storage.publish("model", {"version": version})

        return action

    steps = Steps(PipelineConfig(storage=str(tmp_path / "run")))
    first = steps.step("train", "model", "inputs-a", write("v1"))
    assert first["inputs"] == "inputs-a" and first["version"] == "v1"
    assert steps.step("train", "model", "inputs-a", write("v2")) == first  # skipped
    assert runs == ["v1"] and "skipped" in capsys.readouterr().out
    assert steps.step("train", "model", "inputs-b", write("v2"))["version"] == "v2"  # new inputs
    (tmp_path / "run" / "model" / "w.bin").write_bytes(b"v9")  # same size, other bytes
    assert steps.step("train", "model", "inputs-b", write("v3"))["version"] == "v3"  # damaged
    forced = Steps(PipelineConfig(storage=str(tmp_path / "run"), force=True))
    assert forced.step("train", "model", "inputs-b", write("v4"))["version"] == "v4"
    assert runs == ["v1", "v2", "v3", "v4"]
