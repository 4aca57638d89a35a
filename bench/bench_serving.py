"""Load test of ``GET /recommend/{user_id}``: Ray Serve vs a bare uvicorn process, side by side.

    python -m bench.bench_serving --storage /tmp/serve_bench            # all targets
    python -m bench.bench_serving --scenario events                     # POST /events, one each
    python -m bench.bench_serving --scenario fresh     # GET /recommend of users with fresh events
    python -m bench.bench_serving --smoke-test                          # seconds; tiny data
    python -m bench.bench_serving --help

Targets, each its own ``python -m serving`` process on a free port (a Serve target starts its own
local Ray instance):

* ``bare``: the same FastAPI app and models in one uvicorn process (``--no-ray``), the reference;
* ``serve``: the Serve app (Ingress → TwoTower / UserKNN) behind Serve's default Python proxy;
* ``serve-ha``: the same with ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy as ingress);
* ``serve-ha-tput``: HAProxy plus ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between replicas,
  user code and router on the replica's own event loop), Ray's documented high-throughput mode.

The load comes from ``wrk`` (Debian: ``apt-get install -y wrk``) with a Lua script that asks for a
random known user's top-``k`` each request and prints throughput, p50/p99 latency and errors
(socket errors, timeouts and non-2xx answers). The bare process stays up for the whole run; each
Serve target is started in turn and measured in ``--rounds`` rounds that alternate with the bare
process at every concurrency, and the table reports medians. On a machine shared with other work
the background load drifts by tens of percent within minutes; alternating keeps both sides of a
ratio under the same load.

``--scenario``: ``known`` (the default above: known users without events), ``events`` (each
request posts one event with a new ``event_id``, a random known user and item), ``fresh`` (each
target first gets one event for each of the users asked for, so every request takes the fresh
path: the user tower over the extended history, cached after the first answer). Each target
writes its own event log in the run's temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.serving_report import table, write_outputs
from bench.wrk import require_wrk, run_wrk, write_script

TARGETS = {  # name -> (extra CLI flags, extra environment)
    "bare": (["--no-ray"], {}),
    "serve": ([], {"RAY_SERVE_ENABLE_HA_PROXY": "0"}),
    "serve-ha": ([], {"RAY_SERVE_ENABLE_HA_PROXY": "1"}),
    "serve-ha-tput": (
        [],
        {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_target(
    name: str, storage: str, port: int, extra: list[str], log: Path, nice: int
) -> subprocess.Popen:
    flags, env = TARGETS[name]
    cmd = [sys.executable, "-m", "serving", "--storage", storage, "--port", str(port), *flags]
    if name == "bare" and nice:  # Ray runs its workers (replicas, HAProxy) at niceness 15
        cmd = ["nice", "-n", str(nice), *cmd]
    return subprocess.Popen(
        cmd + extra,
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}/healthz not ready after {timeout_s:.0f}s")


def stop_target(proc: subprocess.Popen, clean_s: float = 60) -> None:
    """Stops a server as ``kill`` would, then SIGKILLs whatever it started that is still alive.

    SIGTERM goes to the server process alone (``python -m serving`` shuts Serve down on it as on
    Ctrl-C). Not SIGINT: a server started from a background shell job inherits SIGINT ignored.
    Not the whole process group first: it holds the GCS and raylet that ``ray.init`` started,
    which then die before ``serve.shutdown()`` has stopped HAProxy, and the orphaned HAProxy
    keeps ports 8404/9101 so that the next Serve start fails. Both happened here.
    """
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:  # already gone
        started = []
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(clean_s)
    with contextlib.suppress(ProcessLookupError):  # the group: the server and Ray's daemons
        os.killpg(proc.pid, signal.SIGKILL)
    for child in started:  # and what left the group (Ray workers, HAProxy)
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait()


# The ML-100K artifacts the servers load, each with the job that writes it (in order: each needs
# the ones above). Two epochs: the benchmark measures serving, not the model's quality.
ARTIFACT_STEPS = [
    ("data", ["ray_jobs.prepare"]),
    ("model", ["ray_jobs.train", "--num-workers", "1", "--epochs", "2", "--data-loader", "local"]),
    ("index", ["ray_jobs.build_index"]),
    ("knn", ["ray_jobs.evaluate"]),
]


def ensure_artifacts(storage: str, prepare: bool) -> None:
    """Runs the jobs for the artifacts ``storage`` lacks (with ``prepare``, a few minutes), or
    exits naming them and the commands that write them."""
    from towers.storage.root import Storage

    complete = [Storage(storage).is_complete(artifact) for artifact, _ in ARTIFACT_STEPS]
    if all(complete):
        return
    first = complete.index(False)  # rerun from there: later artifacts depend on it
    commands = [
        [sys.executable, "-m", *job, "--storage", storage] for _, job in ARTIFACT_STEPS[first:]
    ]
    if not prepare:
        missing = [a for (a, _), done in zip(ARTIFACT_STEPS, complete, strict=True) if not done]
        sys.exit(
            f"{storage} lacks {', '.join(missing)}: rerun with --prepare, or run\n  "
            + "\n  ".join(" ".join(c) for c in commands)
        )
    for command in commands:
        print("preparing:", " ".join(command), flush=True)
        subprocess.run(command, check=True)


def user_ids(storage: str, limit: int = 1000) -> list[int]:
    from towers.data.prepared import USERS
    from towers.storage.root import Storage

    ids = Storage(storage).read_parquet(USERS, columns=["user_id"])["user_id"]
    return [int(i) for i in ids.to_numpy()[:limit]]


def event_value(storage: str) -> dict[str, float]:
    """What an event of this data set carries: a rating inside its scale (explicit data), or a
    weight (implicit data takes no rating)."""
    from towers.storage.root import Storage

    manifest = Storage(storage).read_manifest("data", checksums=False)
    return {"weight": 1.0} if manifest.get("implicit") else {"rating": 4.0}


def item_ids(storage: str, limit: int = 1000) -> list[int]:
    from towers.data.prepared import ITEMS
    from towers.storage.root import Storage

    ids = Storage(storage).read_parquet(ITEMS, columns=["item_id"])["item_id"]
    return [int(i) for i in ids.to_numpy()[:limit]]


def smoke_storage(folder: Path) -> str:
    """Tiny synthetic data + artifacts (no Ray) for ``--smoke-test``."""
    from towers.artifacts import publish_small_run
    from towers.data.prepared import write_prepared
    from towers.data.synthetic import SyntheticSpec, generate
    from towers.storage.root import Storage

    storage = Storage(folder)
    raw = generate(SyntheticSpec(n_users=120, n_items=200, n_interactions=6_000, seed=7))
    write_prepared(storage, raw, "synthetic", ["random"], seed=42)
    publish_small_run(storage, epochs=1, embedding_dim=16)
    return storage.uri


class Server:
    """One ``python -m serving`` target on a free port, checked to answer before use."""

    def __init__(self, name: str, args: argparse.Namespace, storage: str, workdir: Path) -> None:
        self.storage = storage
        self.name, self.log = name, workdir / f"{name}.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        extra = ["--max-batch-size", str(args.max_batch_size)]
        extra += ["--batch-wait-timeout-s", str(args.batch_wait_timeout_s)]
        extra = [] if name == "bare" else extra
        extra += ["--events-path", str(workdir / f"{name}-events.sqlite")]
        self.proc = start_target(name, storage, port, extra, self.log, args.bare_nice)

    def ready(self, first_user: int, k: int, timeout_s: float) -> None:
        wait_ready(self.url, self.proc, timeout_s)
        answer = httpx.get(f"{self.url}/recommend/{first_user}?k={k}", timeout=10)
        if answer.status_code != 200 or not answer.json()["items"]:
            raise RuntimeError(f"{self.name}: bad answer {answer.status_code} {answer.text[:200]}")

    def post_fresh_events(self, users: list[int], item: int) -> None:
        """One event for each of ``users``: every later request for them takes the fresh path."""
        value = event_value(self.storage)
        events = [{"event_id": f"f{u}", "user_id": u, "item_id": item, **value} for u in users]
        for start in range(0, len(events), 500):
            body = {"events": events[start : start + 500]}
            httpx.post(f"{self.url}/events", json=body, timeout=60).raise_for_status()

    def tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-15:])


def bench(args: argparse.Namespace, storage: str, workdir: Path) -> list[dict]:
    """Every Serve target is measured in rounds alternating with the bare process (kept up
    throughout), so both see the same background load from other processes."""
    script = workdir / "recommend.lua"
    ids = user_ids(storage)
    items = item_ids(storage)
    write_script(script, ids, items, args.scenario, args.k, args.model, event_value(storage))
    rows: list[dict] = []
    bare = Server("bare", args, storage, workdir)
    try:
        bare.ready(ids[0], args.k, args.startup_timeout)
        if args.scenario == "fresh":
            bare.post_fresh_events(ids, items[0])
        run_wrk(bare.url, script, 16, args.warmup)
        names = [n for n in args.targets.split(",") if n != "bare"]
        for name in names or [None]:
            server = Server(name, args, storage, workdir) if name else None
            try:
                if server is not None:
                    server.ready(ids[0], args.k, args.startup_timeout)
                    if args.scenario == "fresh":
                        server.post_fresh_events(ids, items[0])
                    run_wrk(server.url, script, 16, args.warmup)
                rows += measure(args, script, bare, server)
                if server is not None:
                    health = httpx.get(f"{server.url}/healthz", timeout=10).json()
                    mean = health["models"][args.model].get("replica_mean_batch_size") or 0.0
                    print(f"{name}: mean @serve.batch size {mean:.2f}", flush=True)
                    posts = (health.get("events") or {}).get("mean_batches_per_commit")
                    if args.scenario == "events" and posts:
                        print(f"{name}: mean POST /events batches per commit {posts:.2f}")
            except Exception as err:
                print(f"{name} failed: {err}; last log lines:", file=sys.stderr)
                print(server.tail() if server else "", file=sys.stderr)
            finally:
                if server is not None:
                    stop_target(server.proc)
    finally:
        stop_target(bare.proc)
    return rows


def measure(
    args: argparse.Namespace, script: Path, bare: Server, server: Server | None
) -> list[dict]:
    rows = []
    for connections in map(int, args.concurrency.split(",")):
        for round_ in range(args.rounds):
            for target in (bare, server) if server else (bare,):
                result = run_wrk(target.url, script, connections, args.duration)
                pair = server.name if server else "-"
                rows.append({"target": target.name, "pair": pair, "connections": connections,
                             "round": round_, "load1": os.getloadavg()[0],
                             "scenario": args.scenario, **result})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="/tmp/serve_bench", help="prepared storage root")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--concurrency", default="1,4,16,32", help="wrk connections, comma list")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up load")
    parser.add_argument("--model", default="two_tower", choices=("two_tower", "user_knn"))
    scenarios = ("known", "events", "fresh")  # see the module docstring
    parser.add_argument("--scenario", default="known", choices=scenarios, help="what to load")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--max-batch-size", type=int, default=16, help="Serve @serve.batch size")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.002, help="batch wait")
    parser.add_argument(
        "--bare-nice",
        type=int,
        default=15,
        help="niceness of the bare process; 15 = Ray's worker niceness, so both get the same "
        "CPU priority against other processes on a shared machine (0: default priority)",
    )
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="seconds")
    parser.add_argument("--smoke-test", action="store_true", help="tiny data, bare, 2 s runs")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="first write the ML-100K artifacts the storage lacks (prepare, 2-epoch train, "
        "index, evaluate: a few minutes)",
    )
    parser.add_argument(
        "--out", type=Path, help="also write rows.jsonl, table.md and serving.png (a plot) here"
    )
    parser.add_argument(
        "--from-rows",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="no measuring: the table (and --out files) from earlier runs' printed JSON rows",
    )
    args = parser.parse_args(argv)
    if args.from_rows:
        rows = [
            json.loads(line)
            for file in args.from_rows
            for line in file.read_text().splitlines()
            if line.startswith("{")
        ]
        if not rows:
            sys.exit(f"no JSON rows in {', '.join(map(str, args.from_rows))}")
        print(table(rows))
        if args.out:
            write_outputs(rows, args.out)
        return
    require_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        storage = args.storage
        if args.smoke_test:
            storage = smoke_storage(Path(tmp) / "run")
            if "--targets" not in (argv or sys.argv):
                args.targets = "bare"
            args.concurrency, args.duration, args.warmup, args.rounds = "1,4", 2.0, 1.0, 1
        else:
            ensure_artifacts(storage, args.prepare)
        print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
        rows = bench(args, storage, Path(tmp))
        print(f"load average at end: {os.getloadavg()}")
    print(table(rows))
    if args.out:
        write_outputs(rows, args.out)


if __name__ == "__main__":
    main()
