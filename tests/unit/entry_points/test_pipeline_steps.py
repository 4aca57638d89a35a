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


def test_pipeline_never_replaces_data_prepared_from_other_inputs(tmp_path):
    """A data/ prepared by hand from your own files is not overwritten by a pipeline pointed at
    the same storage with other inputs (ML-100K by default), unless --force; the fingerprint
    follows the files (a changed file is another input)."""
    import pytest

    from ray_jobs import prepare
    from ray_jobs.pipeline import guard_data
    from towers.data.shop import ShopSpec, write_shop

    shop = write_shop(tmp_path / "shop", ShopSpec(n_users=60, n_items=40, n_interactions=600))
    storage = Storage(tmp_path / "run")
    own = PipelineConfig(
        storage=str(tmp_path / "run"),
        interactions=str(shop / "interactions.parquet"),
        items=str(shop / "items.parquet"),
        users=str(shop / "users.parquet"),
        schema=str(shop / "schema.yaml"),
    )
    prepare.run(own.prepare_config())  # by hand, as a user would
    own_inputs = prepare.inputs_fingerprint(own.prepare_config())
    guard_data(storage, own_inputs, force=False)  # the same inputs: reused
    movielens = PipelineConfig(storage=str(tmp_path / "run")).prepare_config()
    with pytest.raises(SystemExit, match="was prepared from other inputs .*--force"):
        guard_data(storage, prepare.inputs_fingerprint(movielens), force=False)
    guard_data(storage, prepare.inputs_fingerprint(movielens), force=True)
    (shop / "items.parquet").write_bytes((shop / "items.parquet").read_bytes() + b"\0")
    assert prepare.inputs_fingerprint(own.prepare_config()) != own_inputs
