"""Connect to the Ray cluster a job runs on, or start a local one sized for the job."""

from __future__ import annotations

import os


def init_ray(min_cpus: float = 1) -> None:
    """``ray.init`` once: joins ``RAY_ADDRESS`` (``ray job submit``, ``ray start``) when set,
    otherwise starts a local instance with at least ``min_cpus`` logical CPUs (a small, safe
    over-subscription on a laptop, where Ray Data needs a CPU beside the training workers)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(-(-min_cpus // 1))))
