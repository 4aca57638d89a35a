"""The whole pipeline: prepare → (tune) → train → evaluate → build index (→ serve).

    python -m ray_jobs.pipeline --dataset ml-100k --storage runs/demo [--tune] [--serve]
    python -m ray_jobs.pipeline --storage runs/demo --update   # fold events, warm-start, roll out
    ray job submit --working-dir . -- python -m ray_jobs.pipeline --storage s3://bucket/run ...

Each step is skipped when its artifact is complete *for the same inputs*: every artifact's
manifest carries an ``inputs`` fingerprint (the step's settings plus the versions of what it read),
so changing a setting or retraining upstream reruns exactly the steps downstream of the change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

from ray_jobs import build_index, evaluate, prepare, train
from ray_jobs.train_config import PlacementStrategy
from towers import artifacts
from towers.data.fold import EVENTS_SEQ
from towers.launch.cli import help_field, parse_config
from towers.storage.root import ArtifactError, Storage

log = logging.getLogger("pipeline")
SYNTHETIC_SIZES = ("synthetic_users", "synthetic_items", "synthetic_interactions")


@dataclass
class PipelineConfig:
    """Run prepare, tune (optional), train, evaluate and build_index; optionally serve."""

    storage: str = help_field(
        "runs/demo", "storage root (local folder or s3://…, seen by all nodes)"
    )
    dataset: prepare.Dataset = help_field("ml-100k", "data set to prepare (or --interactions)")
    data_dir: str | None = help_field(None, "folder with the data set's files")
    interactions: str | None = help_field(None, "your interactions table (docs/YOUR_DATA.md)")
    test_interactions: str | None = help_field(
        None, "--split given: the test part as its own file (--interactions is then train)"
    )
    valid_interactions: str | None = help_field(
        None, "--split given: the validation part's file (default: carved from train)"
    )
    items: str | None = help_field(None, "your items table")
    users: str | None = help_field(None, "your users table")
    schema: str | None = help_field(None, "your data set's schema file (inferred if absent)")
    split: Literal["random", "temporal", "leave-one-out", "given"] = help_field(
        "random",
        "split to train and report on (leave-one-out: each user's last item is test, the one "
        "before valid; given: your data's own parts, docs/YOUR_DATA.md)",
    )
    synthetic_users: int | None = help_field(None, "--dataset synthetic: users (preset: small)")
    synthetic_items: int | None = help_field(None, "--dataset synthetic: items (preset: small)")
    synthetic_interactions: int | None = help_field(
        None, "--dataset synthetic: interactions (preset: small)"
    )
    num_workers: int = help_field(2, "Ray Train workers")
    cpus_per_worker: float = help_field(1.0, "CPUs (torch threads) per Ray Train worker")
    placement_strategy: PlacementStrategy = help_field(
        "PACK", "Ray Train workers' placement: SPREAD puts them on different nodes where it can"
    )
    use_gpu: bool = help_field(False, "train on GPUs (one per worker)")
    data_loader: Literal["ray_data", "local"] = help_field(
        "ray_data", "training's loader (ray_jobs.train --data-loader; local: no Ray Data)"
    )
    tune: bool = help_field(False, "run the Ray Tune search and train the tuned config too")
    tune_samples: int = help_field(16, "Tune trials when --tune")
    paper: bool = help_field(True, "also train the paper's preset, to report its finding")
    epochs: int | None = help_field(None, "override the presets' maximum epochs")
    serve: bool = help_field(False, "finish by serving HTTP on 127.0.0.1:8000 until Ctrl-C")
    port: int = help_field(8000, "HTTP port when --serve")
    update: bool = help_field(
        False,
        "fold the events recorded since data/ was prepared (or last updated) into data/, "
        "warm-start model_u<seq> from the newest model (--epochs default: a third of its epochs, "
        "1 to 3), index it, refit UserKNN, evaluate, and roll them out to a Serve app on this "
        "Ray cluster "
        "(ray_jobs/update.py)",
    )
    events_path: str | None = help_field(
        None, "--update: the event log (default: events/events.sqlite under a local --storage)"
    )
    force: bool = help_field(
        False,
        "rerun every step even when its outputs are complete, and replace a data/ "
        "prepared from other inputs",
    )

    def prepare_config(self) -> prepare.PrepareConfig:
        own = dict(
            interactions=self.interactions,
            items=self.items,
            users=self.users,
            schema=self.schema,
            test_interactions=self.test_interactions,
            valid_interactions=self.valid_interactions,
        )
        if self.interactions is None:  # MovieLens/synthetic: both splits, as prepare does
            sizes = {k: getattr(self, k) for k in SYNTHETIC_SIZES}
            splits = prepare.PrepareConfig.split  # the default, plus a split it does not hold
            if self.split not in splits.split(","):
                splits += f",{self.split}"
            return prepare.PrepareConfig(
                storage=self.storage, dataset=self.dataset, data_dir=self.data_dir,
                split=splits, **own, **sizes,
            )  # fmt: skip
        return prepare.PrepareConfig(storage=self.storage, split=self.split, **own)


def guard_data(storage: Storage, inputs: str, force: bool) -> None:
    """Refuses to replace a ``data/`` prepared from other inputs (your own files, say) unless
    ``--force``: a pipeline pointed at the wrong storage must not overwrite it."""
    try:
        manifest = storage.read_manifest(artifacts.DATA)
    except ArtifactError:
        return  # nothing there, or incomplete: prepare (re)writes it
    if manifest.get("inputs") != inputs and not force:
        raise SystemExit(
            f"[pipeline] {storage.uri}/{artifacts.DATA} was prepared from other inputs "
            f"({manifest.get('dataset')}, {manifest.get('source')}); use another --storage, or "
            "--force to replace it"
        )


def fingerprint(**inputs: Any) -> str:
    """A short stable hash of a step's inputs."""
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def up_to_date(storage: Storage, artifact: str, inputs: str) -> dict[str, Any] | None:
    """``artifact``'s manifest (its files checked) when it was built from ``inputs``, else None."""
    try:
        manifest = storage.read_manifest(artifact)
    except ArtifactError:
        return None
    return manifest if manifest.get("inputs") == inputs else None


def stamp(storage: Storage, artifact: str, inputs: str) -> dict[str, Any]:
    """Adds the inputs fingerprint to a freshly published artifact's manifest."""
    return storage.add_to_manifest(artifact, inputs=inputs)


class Steps:
    """Runs and skips steps, printing one line per step and where its output went."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        self.timings: dict[str, float] = {}

    def step(self, name: str, artifact: str, inputs: str, action) -> dict[str, Any]:
        done = None if self.cfg.force else up_to_date(self.storage, artifact, inputs)
        if done is not None:
            print(f"[pipeline] {name:<12} skipped: {self.storage.uri}/{artifact} is up to date")
            self.timings[name] = 0.0
            return done
        print(f"[pipeline] {name:<12} running …", flush=True)
        start = time.perf_counter()
        action()
        self.timings[name] = time.perf_counter() - start
        manifest = stamp(self.storage, artifact, inputs)
        took = self.timings[name]
        print(f"[pipeline] {name:<12} done in {took:.0f}s → {self.storage.uri}/{artifact}")
        return manifest


def sized_ray(cfg: PipelineConfig) -> None:
    """Starts the local Ray (unless one is up or joined) for every training step of the run:
    the workers plus 1 CPU for Ray Data's reads. The default preset reads user rows locally
    and needs no such CPU, the paper's streams its pairs: a Ray sized by the first step alone
    would be too small for the next."""
    from towers.launch.ray_init import init_ray

    init_ray(max(2, cfg.num_workers * cfg.cpus_per_worker + 1))


def train_sized(cfg: PipelineConfig, train_cfg: train.TrainConfig) -> dict[str, Any]:
    sized_ray(cfg)
    return train.run(train_cfg)


def run(cfg: PipelineConfig) -> dict[str, Any]:
    if cfg.update:
        from ray_jobs import update

        return update.run(cfg)
    if cfg.serve:  # before minutes of work, not after
        from serving.server import require_free_port

        require_free_port("127.0.0.1", cfg.port)
    steps = Steps(cfg)
    uri = cfg.storage
    start = time.perf_counter()
    prep_cfg = cfg.prepare_config()
    prep_inputs = prepare.inputs_fingerprint(prep_cfg)
    guard_data(steps.storage, prep_inputs, cfg.force)
    data = steps.step("prepare", artifacts.DATA, prep_inputs, lambda: prepare.run(prep_cfg))
    data_fp = data["inputs"]
    if data.get(EVENTS_SEQ):  # events folded in by --update: every model downstream is stale
        data_fp = f"{data_fp}+events{data[EVENTS_SEQ]}"

    model_versions = {}
    runs = [(artifacts.MODEL, "default", None)]
    if cfg.paper and data.get("implicit"):
        print("[pipeline] train:paper  skipped: its pointwise loss needs ratings (implicit data)")
    elif cfg.paper:
        runs.append((artifacts.TWO_TOWER_EXPORTS["two_tower_paper"], "paper", None))
    if cfg.tune:
        from tuning import tune

        tune_cfg = tune.TuneJobConfig(storage=uri, split=cfg.split, num_samples=cfg.tune_samples)
        settings = {k: v for k, v in asdict(tune_cfg).items() if k != "storage"}
        tune_inputs = fingerprint(data=data_fp, **settings)

        def run_tune() -> None:
            sized_ray(cfg)  # a Ray started for 2 trials would be too small for the training
            tune.run(tune_cfg)

        tuned = steps.step("tune", artifacts.TUNING, tune_inputs, run_tune)
        tuned_export = artifacts.TWO_TOWER_EXPORTS["two_tower_tuned"]
        runs.append((tuned_export, "default", tuned["best_config"]))
    for artifact, preset, best in runs:
        overrides = {k: v for k, v in (best or {}).items() if k in train.MODEL_OVERRIDES}
        if cfg.epochs is not None:
            overrides["epochs"] = cfg.epochs
        train_cfg = train.TrainConfig(
            storage=uri,
            split=cfg.split,
            preset=preset,
            num_workers=cfg.num_workers,
            cpus_per_worker=cfg.cpus_per_worker,
            placement_strategy=cfg.placement_strategy,
            use_gpu=cfg.use_gpu,
            data_loader=cfg.data_loader,
            export_as=artifact,
            **overrides,
        )
        inputs = fingerprint(
            data=data_fp,
            **{
                k: v
                for k, v in asdict(train_cfg).items()
                if k not in ("storage", *train.PLACEMENT_SETTINGS)
            },
        )
        manifest = steps.step(
            f"train:{preset}" if not best else "train:tuned",
            artifact,
            inputs,
            partial(train_sized, cfg, train_cfg),
        )
        model_versions[artifact] = manifest["version"]

    eval_inputs = fingerprint(
        data=data_fp, split=cfg.split, models=model_versions, baselines=evaluate.BASELINES
    )
    steps.step(
        "evaluate",
        artifacts.REPORTS,
        eval_inputs,
        lambda: evaluate.run(evaluate.EvaluateConfig(storage=uri, split=cfg.split), False),
    )
    index_inputs = fingerprint(model=model_versions[artifacts.MODEL])
    steps.step(
        "build_index",
        artifacts.INDEX,
        index_inputs,
        lambda: build_index.run(build_index.BuildIndexConfig(storage=uri)),
    )
    wall = time.perf_counter() - start
    storage = steps.storage
    print(artifacts.read_report_markdown(storage))
    print(
        f"[pipeline] finished in {wall:.0f}s; step times "
        + ", ".join(f"{k} {v:.0f}s" for k, v in steps.timings.items())
    )
    layout = (artifacts.DATA, artifacts.TRAIN, *model_versions, artifacts.REPORTS, artifacts.KNN)
    for artifact in (*layout, artifacts.INDEX, artifacts.TUNING):
        if storage.exists(artifact):
            print(f"  {artifact:<12} {storage.uri}/{artifact}")
    summary = {"wall_seconds": wall, "timings": steps.timings, "model_versions": model_versions}
    if cfg.serve:
        serve_forever(cfg)
    return summary


def serve_forever(cfg: PipelineConfig, ready_message: str = "") -> None:
    """Starts the Serve app on 127.0.0.1, prints ``ready_message`` once up, blocks until Ctrl-C."""
    from serving.schemas import ServingArgs
    from serving.server import run_server

    run_server(ServingArgs(storage=cfg.storage), port=cfg.port, ready_message=ready_message)


def main(argv: list[str] | None = None) -> None:
    run(parse_config(PipelineConfig, argv))


if __name__ == "__main__":
    main()
