"""Soak test of the Serve app: sustained ``GET /recommend/{user_id}`` load, errors and memory.

    python -m bench.soak --storage /tmp/serve_bench                 # 120 s, 16 connections
    python -m bench.soak --smoke-test                               # tiny data, bare, 5 s
    python -m bench.soak --help

One ``python -m serving`` target (``serve-ha-tput`` by default: HAProxy plus Ray's
throughput-optimized mode, the set-up ``docs/bench_serving.md`` found best) is started on a free
127.0.0.1 port, as ``bench.bench_serving`` starts it, warmed up, then loaded by ``wrk`` with the
same Lua script (a random known user's top-``k`` each request) for ``--seconds``, measured in
back-to-back windows of ``--window`` seconds. For each window: requests, throughput, errors
(socket errors, timeouts, non-2xx), p50/p99 latency, and the resident memory (RSS) of every
Serve process (proxy, HAProxy, controller, each replica) found under the target's process tree.

It passes when no request failed and no process's RSS grew by more than ``--max-growth`` (20%
by default) between the end of the warm-up and the end of the run, growth of under
``--growth-floor-mib`` aside (page-level noise on small processes). The exit status is 1 when it
does not pass, so a script or CI job can rely on it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.bench_serving import Server, ensure_artifacts, smoke_storage, stop_target, user_ids
from bench.wrk import require_wrk, run_wrk, write_script

MIB = 1 << 20
# cmdline fragment → role; Ray names a worker process after its actor ("ray::ProxyActor").
ROLES = {
    "ServeReplica:recommender:TwoTower": "TwoTower replica",
    "ServeReplica:recommender:UserKNN": "UserKNN replica",
    "ServeReplica:recommender:Ingress": "Ingress replica",
    "ProxyActor": "proxy actor",
    "ServeController": "controller",
    "haproxy": "HAProxy",
}


def serve_processes(root_pid: int) -> dict[int, str]:
    """``{pid: role}`` of the Serve processes under ``root_pid`` (the target itself when bare)."""
    root = psutil.Process(root_pid)
    found = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        for fragment, role in ROLES.items():
            if fragment in cmdline:
                found[proc.pid] = role
                break
    return found or {root_pid: "bare server"}


def rss_mib(pids: list[int]) -> dict[int, float | None]:
    """RSS of each pid in MiB; ``None`` for a process that is gone (replaced or crashed)."""
    out: dict[int, float | None] = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss / MIB
        except psutil.Error:
            out[pid] = None
    return out


@dataclass
class Soak:
    """Windows measured so far and the memory samples taken after each."""

    processes: dict[int, str]
    windows: list[dict] = field(default_factory=list)
    memory: list[dict[int, float | None]] = field(default_factory=list)

    def totals(self) -> tuple[int, int]:
        return sum(w["requests"] for w in self.windows), sum(w["errors"] for w in self.windows)

    def growth(self, floor_mib: float) -> dict[int, tuple[float | None, float | None, float]]:
        """``{pid: (start MiB, end MiB, growth fraction)}``; growth under the floor counts 0."""
        start, end = self.memory[0], self.memory[-1]
        out = {}
        for pid in self.processes:
            a, b = start.get(pid), end.get(pid)
            if a is None or b is None:
                out[pid] = (a, b, math.inf)  # a process that vanished is a failure, not growth
            else:
                out[pid] = (a, b, 0.0 if b - a < floor_mib else (b - a) / a)
        return out


def soak(args: argparse.Namespace, storage: str, workdir: Path) -> Soak:
    script = workdir / "recommend.lua"
    ids = user_ids(storage)
    write_script(script, ids, [], "known", args.k, "two_tower")  # GET /recommend only
    server = Server(args.target, args, storage, workdir)
    try:
        server.ready(ids[0], args.k, args.startup_timeout)
        run_wrk(server.url, script, args.connections, args.warmup)
        result = Soak(serve_processes(server.proc.pid))
        result.memory.append(rss_mib(list(result.processes)))
        print(f"processes: {result.processes}", flush=True)
        started = time.monotonic()
        for i in range(max(1, math.ceil(args.seconds / args.window))):
            seconds = min(args.window, args.seconds - i * args.window)
            row = run_wrk(server.url, script, args.connections, max(1.0, seconds))
            row["t_s"] = round(time.monotonic() - started)
            result.windows.append(row)
            result.memory.append(rss_mib(list(result.processes)))
            total = sum(v for v in result.memory[-1].values() if v is not None)
            print(f"window {i}: {row}, RSS total {total:.0f} MiB", flush=True)
        return result
    except Exception:
        print(server.tail(), file=sys.stderr)
        raise
    finally:
        stop_target(server.proc)


def report(result: Soak, args: argparse.Namespace) -> tuple[str, bool]:
    """Markdown tables and the verdict."""
    lines = [
        "| window | end s | requests | req/s | errors | p50 ms | p99 ms | RSS total MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (w, mem) in enumerate(zip(result.windows, result.memory[1:], strict=True)):
        rss = sum(v for v in mem.values() if v is not None)
        lines.append(
            f"| {i} | {w['t_s']} | {w['requests']} | {w['rps']:.0f} | {w['errors']} | "
            f"{w['p50_ms']:.1f} | {w['p99_ms']:.1f} | {rss:.0f} |"
        )
    requests, errors = result.totals()
    lines += ["", "| process | pid | RSS after warm-up MiB | RSS at end MiB | growth |",
              "|---|---|---|---|---|"]  # fmt: skip
    growth = result.growth(args.growth_floor_mib)
    for pid, (start, end, _) in sorted(growth.items(), key=lambda g: result.processes[g[0]]):
        shown = "gone" if end is None or start is None else f"{(end - start) / start:+.1%}"
        lines.append(
            f"| {result.processes[pid]} | {pid} | {start or 0:.0f} | {end or 0:.0f} | {shown} |"
        )
    worst = max(g[2] for g in growth.values())
    raw = max((b - a) / a if a and b else math.inf for a, b, _ in growth.values())
    passed = errors == 0 and worst <= args.max_growth
    lines.append(
        f"\n{requests} requests, {errors} errors ({errors / max(1, requests):.3%}); largest RSS "
        f"growth {raw:+.1%}, counted {worst:.1%} against the bound of {args.max_growth:.0%} "
        f"(growth under {args.growth_floor_mib:g} MiB ignored): {'PASS' if passed else 'FAIL'}"
    )
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="/tmp/serve_bench", help="prepared storage root")
    parser.add_argument("--target", default="serve-ha-tput", help="a bench.bench_serving target")
    parser.add_argument("--seconds", type=float, default=120.0, help="measured load, seconds")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load first")
    parser.add_argument("--k", type=int, default=10, help="items per request")
    parser.add_argument("--max-growth", type=float, default=0.20, help="RSS growth bound")
    parser.add_argument("--growth-floor-mib", type=float, default=8.0, help="ignored growth")
    parser.add_argument("--max-batch-size", type=int, default=16, help="Serve @serve.batch size")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.002, help="batch wait")
    parser.add_argument("--bare-nice", type=int, default=15, help="niceness of a bare target")
    parser.add_argument("--startup-timeout", type=float, default=240.0, help="seconds")
    parser.add_argument("--smoke-test", action="store_true", help="tiny data, bare, 5 s")
    parser.add_argument(
        "--prepare", action="store_true", help="first write the artifacts the storage lacks"
    )
    args = parser.parse_args(argv)
    require_wrk()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        storage = args.storage
        if args.smoke_test:
            storage = smoke_storage(Path(tmp) / "run")
            given = argv if argv is not None else sys.argv[1:]
            if "--target" not in given:
                args.target = "bare"
            if "--seconds" not in given:
                args.seconds = 5.0
            args.window, args.warmup = min(args.window, 2.0), 1.0
        else:
            ensure_artifacts(storage, args.prepare)
        print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
        result = soak(args, storage, Path(tmp))
        print(f"load average at end: {os.getloadavg()}")
    text, passed = report(result, args)
    print(f"\n{args.target}, {args.connections} connections, {args.seconds:g} s\n\n{text}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
