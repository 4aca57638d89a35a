"""How long and how much memory `ray_jobs.prepare` takes: ML-100K and large synthetic data.

    .venv/bin/python -m bench.bench_prepare [--synthetic-interactions 10000000]

Each run is a separate `python -m ray_jobs.prepare` process; peak memory is its max RSS.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time


def measure(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one prepare process."""
    with tempfile.TemporaryDirectory() as storage:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ray_jobs.prepare", "--storage", storage, *args],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far: run the small case first.
    return wall, max(peak_kib, before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synthetic-interactions", type=int, default=10_000_000)
    parser.add_argument("--synthetic-users", type=int, default=100_000)
    parser.add_argument("--synthetic-items", type=int, default=30_000)
    args = parser.parse_args()
    cases = {
        "ml-100k (both splits)": ["--dataset", "ml-100k"],
        f"synthetic {args.synthetic_interactions:,} (both splits)": [
            "--dataset",
            "synthetic",
            "--synthetic-interactions",
            str(args.synthetic_interactions),
            "--synthetic-users",
            str(args.synthetic_users),
            "--synthetic-items",
            str(args.synthetic_items),
        ],
    }
    print(f"{'case':<40} {'wall s':>8} {'peak RSS GiB':>13}")
    for name, case in cases.items():
        wall, peak = measure(case)
        print(f"{name:<40} {wall:>8.1f} {peak:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
