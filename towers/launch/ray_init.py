"""Connect to the Ray cluster a job runs on, or start a local one sized for the job."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# Ray 2.60: with this off, a node takes 127.0.0.1 as its address instead of the machine's
# external one (and refuses to join other nodes). Set to 1 to reach a local instance from outside.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Environment defaults for a Ray instance started here (its processes read them at start-up).
LOCAL_RAY_ENV = {
    # Serve's HAProxy mode keeps a stopping Ingress replica reachable this long so that load
    # balancers can deregister it. Ray's 30 s made every Ctrl-C of a local server take 33 s; the
    # local HAProxy is reconfigured within a second.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
    # Serve's controller kills an HTTP proxy that is not ready 5 s after it was created (Ray's
    # default), and `serve.start` then fails: on a busy 2-core machine the proxy's worker took
    # longer to start. Up to 60 s here, `serve.start`'s own wait for it; and 30 s (not 10) for
    # each health check of a running proxy, so that a loaded machine's slow answer is not a death.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    # Ray Train's controller collects a worker's report when it polls the worker group, every
    # 2 s by Ray's default, and a worker's next report waits until the last one is collected (a
    # queue of one): epochs under 2 s (small data sets) took 2 s each, and every fit ended up to
    # 2 s after its last epoch. A tiny 12-epoch fit 67.5 -> 40.7 s; ML-100K's paper preset
    # (9 epochs of ~5 s) 75.5 -> 73.3 s (docs/BENCHMARKS.md, "Training throughput").
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's preemption watcher polls for spot-instance notices, which a local instance never
    # gets; its actor's creation prints an error-looking core_worker line on every fit().
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's own DatasetManager passes an option Ray Data deprecates (Ray 2.60): its warning
    # in every training run is not the user's to act on.
    "PYTHONWARNINGS": (
        "ignore:`ExecutionOptions.exclude_resources` is deprecated:DeprecationWarning"
    ),
    # A local instance is a single machine: its node address is the loopback one, so every server
    # it starts (GCS, raylet, object manager, workers, agents) listens on 127.0.0.1 only. This is
    # Ray's own switch for single-machine Windows/macOS installs (`loopback_node` below).
    LOOPBACK_SWITCH: "0",
}


def verbose() -> bool:
    """Whether the job runs with ``--verbose`` (``towers.launch.cli`` puts the root logger at
    DEBUG): then Ray's own per-report and per-dataset lines are shown too."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


# Ray Data's console at WARNING for a local instance started without --verbose (its processes read
# this at import; the INFO lines still go to ray-data.log in the session folder).
QUIET_RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def ray_train_log_level() -> str:
    """Ray Train's console level: its per-report and checkpoint lines only with ``--verbose``."""
    return "INFO" if verbose() else "WARNING"


def quiet_ray_data() -> None:
    """Ray Data's per-dataset lines ("Starting execution", "Execution plan", "execution
    finished") and its progress bars (sub-second on these data sets) only with ``--verbose``,
    in this process and in the actors that run the datasets it creates."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = context.enable_progress_bars = verbose()
    if not verbose():
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # Its one warning, that the bars are off, is about this very setting.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def quiet_ray_train_worker(show: bool) -> None:
    """In a Ray Train worker (where ``show`` is the driver's ``verbose()``): its per-report line
    only when shown. Ray names that logger by its file path, outside ``ray.train``, so
    ``LoggingConfig`` does not reach it."""
    if show:
        return
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: leave its logging alone
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def loopback_node() -> None:
    """Make the Ray instance this process starts next a loopback-only node, unless
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` says otherwise (the machine's external address, Ray's
    default on Linux). Ray reads that variable once, when ``ray`` is imported, so the value is put
    on ``ray_constants``; ``start_ray`` also puts it in the environment its processes inherit."""
    from ray._private import ray_constants

    value = os.environ.get(LOOPBACK_SWITCH, LOCAL_RAY_ENV[LOOPBACK_SWITCH])
    ray_constants.ENABLE_RAY_CLUSTER = value.lower() in ("1", "true")


def start_ray(**init_kwargs: Any) -> None:
    """``ray.init(**init_kwargs)`` with ``LOCAL_RAY_ENV`` as defaults when it starts Ray here."""
    import ray

    if not os.environ.get("RAY_ADDRESS"):
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
        if not verbose():
            os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(QUIET_RAY_DATA_LOGGING))
        loopback_node()
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
