"""Connect to the Ray cluster a job runs on, or start a local one sized for the job."""

from __future__ import annotations

import os
from typing import Any

# Environment defaults for a Ray instance started here (its processes read them at start-up).
LOCAL_RAY_ENV = {
    # Serve's HAProxy mode keeps a stopping Ingress replica reachable this long so that load
    # balancers can deregister it. Ray's 30 s made every Ctrl-C of a local server take 33 s; the
    # local HAProxy is reconfigured within a second.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
}


def start_ray(**init_kwargs: Any) -> None:
    """``ray.init(**init_kwargs)`` with ``LOCAL_RAY_ENV`` as defaults when it starts Ray here."""
    import ray

    if not os.environ.get("RAY_ADDRESS"):
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    ray.init(**init_kwargs)


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
        start_ray(num_cpus=max(os.cpu_count() or 1, int(-(-min_cpus // 1))))
