"""Where a request's CPU goes: each serving process's CPU time under load, per request.

    python -m bench.serving_cpu --storage /tmp/bench_events_run --target serve-ha-tput \
        --scenario events                                  # one Serve target, POST /events
    python -m bench.serving_cpu --smoke-test               # the bare server on tiny data, seconds
    python -m bench.serving_cpu --help

Starts one target as ``bench.bench_serving`` does (``bare``, ``serve``, ``serve-ha``,
``serve-ha-tput``), warms it up, then reads the CPU time (user + system, psutil) of the server
process and of everything it started (Ray's workers, each Serve replica by deployment, HAProxy)
before and after ``--duration`` seconds of ``wrk`` load, and prints each process's share in
milliseconds of CPU per request. The sum is what one request costs the machine: with ``N`` cores
the rate cannot pass ``N / sum``, whatever the latency of each hop. On issue 25's event path it
showed 3.2 ms an event spread over the ingress, the TwoTower check and the ``EventStore``, which
led to sending concurrent posts in one call (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from bench.bench_serving import (
    TARGETS,
    Server,
    ensure_artifacts,
    item_ids,
    smoke_storage,
    stop_target,
    user_ids,
)
from bench.wrk import require_wrk, run_wrk, write_script


def process_name(process: psutil.Process) -> str:
    """``ServeReplica:<app>:<deployment>`` for a replica (Ray names its workers' processes
    ``ray::<actor>``), otherwise the executable's name."""
    try:
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    first = command[0] if command else process.name()
    if first.startswith("ray::"):
        return first.removeprefix("ray::").split(".")[0].strip()
    if "-m" in command[:-1]:  # python -m serving, Ray's own python modules
        return command[command.index("-m") + 1]
    return Path(first).name


def cpu_seconds(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """``{pid: (name, user + system CPU seconds)}`` of ``root`` and its descendants."""
    times = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            cpu = process.cpu_times()
            times[process.pid] = (process_name(process), cpu.user + cpu.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited meanwhile
            continue
    return times


def cpu_per_request(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], requests: int
) -> list[tuple[str, float, int]]:
    """``(name, CPU ms per request, processes)`` by process name, largest first. A process
    started during the run counts from zero; one that exited is left out (its CPU is lost)."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for pid, (name, seconds) in after.items():
        by_name[name].append(seconds - before.get(pid, (name, 0.0))[1])
    rows = [(n, 1000 * sum(s) / max(requests, 1), len(s)) for n, s in by_name.items()]
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="/tmp/serve_bench", help="prepared storage root")
    parser.add_argument("--target", default="serve-ha-tput", choices=list(TARGETS))
    parser.add_argument("--scenario", default="known", choices=("known", "events", "fresh"))
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="seconds")
    parser.add_argument("--smoke-test", action="store_true", help="tiny data, bare, 2 s")
    args = parser.parse_args(argv)
    require_wrk()
    with tempfile.TemporaryDirectory(prefix="serving-cpu-") as tmp:
        storage = args.storage
        if args.smoke_test:
            storage = smoke_storage(Path(tmp) / "run")
            args.target, args.duration, args.warmup = "bare", 2.0, 1.0
        else:
            ensure_artifacts(storage, prepare=False)
        ids, items = user_ids(storage), item_ids(storage)
        script = Path(tmp) / "load.lua"
        write_script(script, ids, items, args.scenario, args.k, "two_tower")
        settings = argparse.Namespace(max_batch_size=16, batch_wait_timeout_s=0.002, bare_nice=0)
        server = Server(args.target, settings, storage, Path(tmp))
        try:
            server.ready(ids[0], args.k, args.startup_timeout)
            if args.scenario == "fresh":
                server.post_fresh_events(ids, items[0])
            run_wrk(server.url, script, args.connections, args.warmup)
            root = psutil.Process(server.proc.pid)
            before, started = cpu_seconds(root), time.monotonic()
            result = run_wrk(server.url, script, args.connections, args.duration)
            after, wall = cpu_seconds(root), time.monotonic() - started
        finally:
            stop_target(server.proc)
    rows = cpu_per_request(before, after, result["requests"])
    total = sum(ms for _, ms, _ in rows)
    print(json.dumps({"target": args.target, "scenario": args.scenario, **result}))
    print("| process | CPU ms / request | processes |\n|---|---:|---:|")
    for name, ms, count in rows:
        if ms >= 0.001:
            print(f"| {name} | {ms:.3f} | {count} |")
    cores = os.cpu_count() or 1
    print(f"| **all** | **{total:.3f}** | {len(after)} |")
    print(f"{result['rps']:.0f} requests/s over {wall:.1f} s; at {total:.2f} ms of CPU a request "
          f"{cores} cores allow at most {1000 * cores / max(total, 1e-9):.0f}/s")  # fmt: skip


if __name__ == "__main__":
    main()
