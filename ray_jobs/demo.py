"""``make demo``: the whole pipeline on MovieLens-100K on a local Ray, the table, then HTTP.

    python -m ray_jobs.demo [--storage runs/demo] [--no-serve] [any ray_jobs.pipeline flag]

Runs ``ray_jobs.pipeline --dataset ml-100k --serve`` (prepare, train the default and paper
presets with Ray Train, evaluate against UserKNN and popularity, build the ScaNN index), prints
the comparison table and example requests, and serves on 127.0.0.1:8000 until Ctrl-C or a
SIGTERM (to it or to its whole process group). A second run skips every step whose outputs are
already up to date.
"""

from __future__ import annotations

import sys

from ray_jobs import pipeline
from serving.server import require_free_port, run_in_own_session

# One Ray Train worker with both cores: with the full-catalog softmax every DDP rank recomputes
# the whole item tower, so on 2 cores 2 workers x 1 CPU train no faster than 1 worker x 1 CPU,
# while 1 worker x 2 CPUs is ~1.3x faster (docs/BENCHMARKS.md). Flags given later override these.
DEMO_DEFAULTS = ["--dataset", "ml-100k", "--num-workers", "1", "--cpus-per-worker", "2"]

EXAMPLES = """
Try, from another terminal, while this one serves (Ctrl-C here stops it):
  curl '127.0.0.1:{port}/recommend/196?k=5'
  curl '127.0.0.1:{port}/recommend/196?k=5&model=user_knn'
  curl '127.0.0.1:{port}/similar/50?k=5'
  curl -X POST '127.0.0.1:{port}/recommend?k=5' -H 'content-type: application/json' \\
       -d '{{"features": {{"age": 25, "gender": "F"}}, "liked_item_ids": [50, 181]}}'
  open http://127.0.0.1:{port}/            # a page to browse users, items and a new user
  open http://127.0.0.1:{port}/docs        # OpenAPI
"""


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    serve = "--no-serve" not in given
    argv = [a for a in given if a != "--no-serve"]
    cfg = pipeline.parse_config(pipeline.PipelineConfig, [*DEMO_DEFAULTS, *argv])
    if serve:  # before minutes of work, not after
        require_free_port("127.0.0.1", cfg.port)
    # The local Ray and this pipeline in a session of their own, under a process that passes
    # Ctrl-C and SIGTERM on: a signal to the whole process group stops it cleanly too.
    run_in_own_session("ray_jobs.demo", given)
    pipeline.run(cfg)
    if serve:
        pipeline.serve_forever(cfg, EXAMPLES.format(port=cfg.port))


if __name__ == "__main__":
    main()
