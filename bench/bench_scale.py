"""Every step of the product at 1M, 5M and 25M interactions: wall time and peak RSS of each.

    .venv/bin/python -m bench.bench_scale --sizes 1m 5m 25m --root /tmp/bench_scale \\
        [--plot docs/scale_time.png] [--out results.json]

Per size, on MovieLens-shaped synthetic data (``1m`` = ML-1M's shape, ``25m`` = ML-25M's, ``5m``
in between: see :data:`SIZES`), the steps run in turn, each in its own child process
(``python -m bench.bench_scale --step NAME``), so that a step's memory is its own:

* ``prepare``: ``ray_jobs.prepare`` (random split only);
* ``train``: the default preset as it resolves at the size (above 2,500 items: user rows with
  a sampled full softmax, the wide towers with the two-hop item side), ``--train-steps`` steps
  of the bare training loop over its own batches after two warm-up steps; **the epoch time is
  extrapolated** from their pairs a second over the training split's pairs (plus the two-hop
  refreshes an epoch makes, one of them timed), and times its epochs; the model is then
  exported to ``model/``. Then the same for the previous default (mixed negatives over pairs,
  the deep towers, 20 epochs: ``PREVIOUS_DEFAULT``), so their ratio is measured side by side;
* ``knn``: UserKNN in the tuned ML-100K setting (implicit, 160 neighbours, min_sim 0.1) fitted on
  train ∪ valid, then every user's top-10 in blocks; published to ``knn/``. Where the neighbour
  search is the projected one, the recall of the exact neighbour sets on a sample of users is
  measured afterwards (not in the step's time);
* ``evaluate``: ``evaluate_model`` of the exported two-tower on the test split (blocked scoring);
* ``index``: ``ray_jobs.build_index`` (starts a local Ray instance, Ray Data item embedding,
  ScaNN, recall check);
* ``serve``: ``python -m serving`` from launch to the first 200 of ``/healthz``, then stopped.

Wall time is the child's, start to exit (interpreter start-up included). Peak RSS is sampled
every 0.2 s over the child's process tree (Ray's daemons and workers included): the largest
single process (the issue's "no process above 8 GiB") and the tree's total; for the child itself
``wait4``'s exact ``ru_maxrss`` is taken when larger. The table prints the log-log slope of time
against interactions between consecutive sizes (1 = linear).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SIZES: dict[str, tuple[int, int, int]] = {  # name -> (users, items, interactions)
    "tiny": (300, 400, 12_000),  # tests and --smoke-test
    "1m": (6_040, 3_706, 1_000_209),  # ML-1M
    # ML-25M's users per interaction; items on the log-log line from ML-1M's to ML-25M's count
    "5m": (32_508, 14_837, 5_000_000),
    "25m": (162_541, 59_047, 25_000_095),  # ML-25M
}
STEPS = ("prepare", "train", "knn", "evaluate", "index", "serve")
RESULT_PREFIX = "BENCH_SCALE_RESULT "
KNN_SETTING = {"mode": "implicit", "n_neighbors": 160, "min_sim": 0.1}  # tuned on ML-100K
GIB = 2**30


@dataclass
class StepRun:
    """One step at one size: what the parent measured plus what the step reported."""

    size: str
    step: str
    seconds: float
    peak_process_bytes: int
    peak_tree_bytes: int
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)
    load: float = 0.0  # 1-minute load average when the step ended (other users of the cores)


# --- the steps (each runs in its own child process) -------------------------------------------


def step_prepare(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    from ray_jobs import prepare

    users, items, interactions = SIZES[size]
    cfg = prepare.PrepareConfig(
        storage=storage,
        dataset="synthetic",
        split="random",
        synthetic_users=users,
        synthetic_items=items,
        synthetic_interactions=interactions,
    )
    manifest = prepare.run(cfg)
    return {"interactions": int(manifest["n_interactions"])}


def step_train(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    """The default preset's training at this size, then the previous default's beside it (the
    ratio of their rates comes from one process on one machine state); exports the default."""
    from bench.training_rate import PREVIOUS_DEFAULT, measure_training
    from towers import artifacts
    from towers.data.prepared import load_prepared
    from towers.model.config import TwoTowerConfig
    from towers.recommenders.two_tower import TwoTowerRecommender
    from towers.storage.root import Storage

    data = load_prepared(Storage(storage))
    default = TwoTowerConfig.from_preset("default").sized_for(
        data.features, time_ordered=data.time_ordered, n_train=len(data.train)
    )
    model, now = measure_training(data, default, args.train_steps)
    rec = TwoTowerRecommender.from_model(
        model.eval(), data.features, data.full_train, data.rating_scale
    )
    artifacts.publish_two_tower(Storage(storage), rec)
    previous = TwoTowerConfig.from_preset("default", **PREVIOUS_DEFAULT).sized_for(
        data.features, time_ordered=data.time_ordered, n_train=len(data.train)
    )
    _, before = measure_training(data, previous, args.train_steps)
    report = {**now, **{f"previous_{k}": v for k, v in before.items()}}
    report["rate_vs_previous"] = round(now["samples_per_s"] / before["samples_per_s"], 3)
    report["training_s_vs_previous"] = round(now["training_s"] / before["training_s"], 3)
    return report


def step_knn(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from towers import artifacts
    from towers.data.prepared import load_prepared
    from towers.metrics.top_k import users_per_block
    from towers.recommenders.neighbor_search import (
        neighbor_recall,
        pair_count,
        resolve_search,
        top_neighbors,
    )
    from towers.recommenders.user_knn import UserKNN, unit_rows
    from towers.storage.root import Storage

    train = load_prepared(Storage(storage)).full_train
    started = time.perf_counter()
    model = UserKNN(**KNN_SETTING)
    rows = unit_rows(train, model.mode)
    neighbors, sims = top_neighbors(rows, model.n_neighbors, model.search, model.rank)
    model.fit_from_neighbors(train, neighbors, sims)  # what fit() does, keeping the neighbours
    fitted = time.perf_counter()
    block = users_per_block(train.n_items)
    for start in range(0, train.n_users, block):
        model.recommend(np.arange(start, min(start + block, train.n_users)), 10)
    done = time.perf_counter()
    artifacts.publish_user_knn(Storage(storage), model)
    search = resolve_search(rows, model.search)
    out = {
        "search": search,
        "pairs": f"{pair_count(rows):.2g}",
        "fit_s": round(fitted - started, 1),
    }
    out["top10_all_users_s"] = round(done - fitted, 1)
    if search == "projected":
        sample = np.random.default_rng(0).choice(train.n_users, args.recall_users, replace=False)
        out["neighbor_recall@160"] = round(neighbor_recall(rows, neighbors, sample), 3)
        out["neighbor_recall@10"] = round(neighbor_recall(rows, neighbors, sample, 10), 3)
    return out


def step_evaluate(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    from towers import artifacts
    from towers.data.prepared import load_prepared
    from towers.evaluation.protocol import evaluate_model
    from towers.storage.root import Storage

    data = load_prepared(Storage(storage))
    rec = artifacts.load_two_tower(Storage(storage))[0]
    metrics = evaluate_model(rec, data.full_train, data.test)
    return {k: round(metrics[k], 4) for k in ("ndcg@10", "recall@10", "n_users") if k in metrics}


def step_index(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    from ray_jobs import build_index

    manifest = build_index.run(build_index.BuildIndexConfig(storage=storage))
    keys = ("kind", "measured_recall", "embed_seconds")
    return {k: manifest[k] for k in keys if k in manifest}


def step_serve(storage: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.bench_serving import free_port, start_target, stop_target, wait_ready

    port = free_port()
    log = Path(storage) / "serve_startup.log"
    started = time.perf_counter()
    proc = start_target("serve", storage, port, [], log, nice=0)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout_s=args.serve_timeout)
        ready = time.perf_counter() - started
    finally:
        stop_target(proc)
    return {"ready_s": round(ready, 1)}


STEP_FUNCTIONS = {
    "prepare": step_prepare,
    "train": step_train,
    "knn": step_knn,
    "evaluate": step_evaluate,
    "index": step_index,
    "serve": step_serve,
}


# --- the parent: child processes, RSS sampling, table, plot -----------------------------------


class TreeMemory:
    """Samples the RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_process = self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            sizes = []
            for proc in procs:
                try:
                    sizes.append(proc.memory_info().rss)
                except psutil.Error:
                    continue
            if sizes:
                self.peak_process = max(self.peak_process, max(sizes))
                self.peak_tree = max(self.peak_tree, sum(sizes))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def parse_result(stdout: str) -> dict[str, Any]:
    """The step's JSON result line (the last one starting with :data:`RESULT_PREFIX`)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else {}


def run_step(size: str, step: str, storage: Path, args: argparse.Namespace) -> StepRun:
    """Runs one step in a child process; its log goes to ``storage/<step>.log``."""
    command = [sys.executable, "-m", "bench.bench_scale", "--step", step, "--sizes", size]
    command += ["--root", str(args.root), "--train-steps", str(args.train_steps)]
    command += [
        "--recall-users",
        str(args.recall_users),
        "--serve-timeout",
        str(args.serve_timeout),
    ]
    log = storage.parent / f"{size}_{step}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    memory.stop()
    own_peak = usage.ru_maxrss * 1024  # Linux reports KiB
    return StepRun(
        size,
        step,
        seconds,
        max(memory.peak_process, own_peak),
        max(memory.peak_tree, own_peak),
        proc.returncode,
        parse_result(log.read_text()),
        os.getloadavg()[0],
    )


def slopes(runs: list[StepRun], step: str) -> list[float]:
    """Log-log slopes of ``step``'s time against interactions between consecutive sizes."""
    points = [(SIZES[r.size][2], r.seconds) for r in runs if r.step == step and r.returncode == 0]
    return [
        math.log(t2 / t1) / math.log(n2 / n1) for (n1, t1), (n2, t2) in itertools.pairwise(points)
    ]


def markdown(runs: list[StepRun]) -> str:
    """The results table: one row per (size, step), then each step's slopes."""
    lines = [
        "| size | step | wall s | peak RSS, largest process GiB | peak RSS, process tree GiB "
        "| load at end | reported by the step |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        status = "" if r.returncode == 0 else f"**failed (exit {r.returncode})** "
        extra = ", ".join(f"{k} {v}" for k, v in r.extra.items())
        lines.append(
            f"| {r.size} | {r.step} | {r.seconds:.1f} | {r.peak_process_bytes / GIB:.2f} | "
            f"{r.peak_tree_bytes / GIB:.2f} | {r.load:.1f} | {status}{extra} |"
        )
    steps = [s for s in STEPS if any(r.step == s for r in runs)]
    if len({r.size for r in runs}) > 1:
        lines.append("")
        lines.append("Log-log slope of wall time against interactions (1 = linear):")
        for step in steps:
            lines.append(f"- {step}: " + ", ".join(f"{s:.2f}" for s in slopes(runs, step)))
    return "\n".join(lines)


def plot(runs: list[StepRun], path: Path) -> None:
    """Log-log plot of each step's wall time against interactions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for step in STEPS:
        points = [(SIZES[r.size][2], r.seconds) for r in runs if r.step == step]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=step)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactions")
    ax.set_ylabel("wall time, s")
    ax.set_title("bench_scale: time per step against data size (2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["1m", "5m", "25m"])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_scale"), help="storages")
    parser.add_argument("--train-steps", type=int, default=200, help="timed training steps")
    parser.add_argument("--recall-users", type=int, default=200, help="users for kNN recall")
    parser.add_argument("--serve-timeout", type=float, default=600, help="s to wait for serving")
    parser.add_argument("--plot", type=Path, default=None, help="write the log-log plot here")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the runs as JSON here (after every step)"
    )
    parser.add_argument(
        "--replot", type=Path, default=None, help="only print the table (and --plot) of an --out"
    )
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # child mode
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.step is not None:  # child: one step at one size
        size = args.sizes[0]
        result = STEP_FUNCTIONS[args.step](str(args.root / size), size, args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    if args.replot is not None:
        runs = [StepRun(**row) for row in json.loads(args.replot.read_text())]
        print(markdown(runs))
        if args.plot is not None:
            plot(runs, args.plot)
        return
    args.root.mkdir(parents=True, exist_ok=True)
    print(f"# bench_scale: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    runs: list[StepRun] = []
    for size in args.sizes:
        for step in args.steps:
            run = run_step(size, step, args.root / size, args)
            runs.append(run)
            print(markdown([run]).splitlines()[-1], flush=True)
            if args.out is not None:  # after every step: a long run stopped early keeps its rows
                args.out.write_text(json.dumps([r.__dict__ for r in runs], indent=1))
            if run.returncode != 0:
                print(f"  {step} failed: see {args.root / f'{size}_{step}.log'}", flush=True)
                break  # later steps need this one's output
    print(markdown(runs))
    if args.plot is not None:
        plot(runs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
