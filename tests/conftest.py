"""Shared fixtures: seeded synthetic data, a prepared storage root, and one session-wide Ray."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from towers.data.interactions import Interactions
from towers.data.prepared import PreparedData, load_prepared, write_prepared
from towers.data.synthetic import SyntheticSpec, generate
from towers.launch.ray_init import LOCAL_RAY_ENV
from towers.storage.root import Storage

# Tests never reach GroupLens; the one test of the RecBole fallback is marked `network`.
os.environ.setdefault("RAY_TWO_TOWER_OFFLINE", "1")
# Ray Train's controller takes its workers' reports and notices their end or failure when it
# polls them, at least this far apart (Ray's default 2 s left ~2-6 s idle per tiny run; a local
# instance of the jobs polls every 0.5 s, `LOCAL_RAY_ENV`); every Ray started from here (the
# session's, the own clusters', their jobs) inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Serve's proxy start-up and health-check limits of a local instance (`LOCAL_RAY_ENV`): with
# Ray's 5 s ready check, a clean-clone CI run lost its one Serve proxy while the other side's
# clusters started, and every Serve test with it.
for _name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
    os.environ.setdefault(_name, LOCAL_RAY_ENV[_name])

TINY_SPEC = SyntheticSpec(n_users=120, n_items=200, n_interactions=6_000, seed=7)


def block_interactions(
    n_groups: int = 4, users_per_group: int = 10, items_per_group: int = 12, seed: int = 0
) -> Interactions:
    """Users in group g interact with most items of block g only: the right answer is known."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for g in range(n_groups):
        for u in range(g * users_per_group, (g + 1) * users_per_group):
            chosen = rng.choice(items_per_group, items_per_group - 3, replace=False)
            users += [u] * len(chosen)
            items += (g * items_per_group + chosen).tolist()
    n = len(users)
    return Interactions(
        np.array(users),
        np.array(items),
        rng.integers(3, 6, n).astype(np.float32),
        np.arange(n, dtype=np.int64),
        n_groups * users_per_group,
        n_groups * items_per_group,
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-tensor tests, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_raw():
    """A small MovieLens-shaped synthetic data set (120 users, 200 items)."""
    return generate(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_storage(tmp_path_factory, tiny_raw) -> Storage:
    """A storage root with ``data/`` prepared from ``tiny_raw`` (both splits)."""
    storage = Storage(tmp_path_factory.mktemp("tiny-run"))
    write_prepared(storage, tiny_raw, "synthetic", ["random", "temporal"], seed=42)
    return storage


@pytest.fixture(scope="session")
def tiny_data(tiny_storage) -> PreparedData:
    return load_prepared(tiny_storage, "random")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The ML-100K files from the installed RecBole wheel (``make install`` puts it there)."""
    from towers.data.sources import _recbole_installed

    folder = _recbole_installed()
    if folder is None:
        pytest.skip("recbole wheel not installed (run `make install`)")
    return folder


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every Ray-marked test (over-subscribing 2 cores is safe)."""
    import ray
    from ray._private import ray_constants

    from towers.launch.ray_init import loopback_node

    default = ray_constants.ENABLE_RAY_CLUSTER
    if not ray.is_initialized():
        loopback_node()  # its ports on 127.0.0.1, as the jobs' and the server's local instances
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    ray_constants.ENABLE_RAY_CLUSTER = default  # drivers joining other clusters resolve as usual


SERVE_MODULES: set[str] = set()  # the collected modules with a test that uses ``serve_port``
SERVE_STARTED: list[int] = []  # the port, once ``serve_port`` has started Serve


@pytest.fixture(scope="session")
def serve_port(ray_session) -> int:
    """Serve (its controller and HTTP proxy) on the session's Ray, started once on a free
    127.0.0.1 port: every Serve module deploys its app onto it. Not shut down here: the
    session's ``ray.shutdown`` stops it with the rest of Ray (``serve.shutdown`` first would
    only add its own ~10 s)."""
    import socket

    from ray import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except (TimeoutError, ray_session.exceptions.ActorDiedError) as lost:
        # The proxy did not come up in `serve.start`'s fixed 60 s: once more, from scratch,
        # rather than failing every Serve test of the session on one slow start.
        warnings.warn(f"Serve's proxy did not start ({lost!r}); starting Serve again", stacklevel=1)
        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    SERVE_STARTED.append(port)
    return port


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--own-clusters",
        choices=("all", "only", "skip"),
        default="all",
        help="only the tests marked own_cluster, or all but them (make test runs the two sets "
        "at once: tests/run_integration.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--own-clusters only|skip`` deselects the tests not marked ``own_cluster``, or those."""
    mode = config.getoption("own_clusters")
    if mode == "all":
        return
    kept, deselected = [], []
    for item in items:
        own = item.get_closest_marker("own_cluster") is not None
        (kept if own == (mode == "only") else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    SERVE_MODULES.update(i.nodeid.split("::")[0] for i in session.items if uses_serve(i))


def uses_serve(item: pytest.Item) -> bool:
    return "serve_port" in getattr(item, "fixturenames", ())


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of a run of Serve modules, deletes every Serve app, so no replica
    holds the session's CPUs or memory while Ray Train tests or other clusters run; the next
    Serve module deploys its app again."""
    module = item.nodeid.split("::")[0]
    following = None if nextitem is None else nextitem.nodeid.split("::")[0]
    if not SERVE_STARTED or module not in SERVE_MODULES or following in SERVE_MODULES:
        return
    from ray import serve

    for app in serve.status().applications:
        serve.delete(app, _blocking=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback for the whole session, with ``AWS_*`` pointing at it in this
    process's environment (and so in every Ray node and job started from it); stopped and the
    environment restored at the end."""
    from tests.s3 import environ_with, restore_environ, start_s3_server, stop_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto_server.log")
    saved = environ_with(server.env)
    try:
        yield server
    finally:
        restore_environ(saved)
        stop_s3_server(server)


@pytest.fixture
def s3_root(s3_server) -> str:
    """``s3://<fresh bucket>/run``: an empty storage root on the test S3 server."""
    return f"s3://{s3_server.new_bucket()}/run"
