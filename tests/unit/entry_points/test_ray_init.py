"""``towers.launch.ray_init``: how jobs and the local server start Ray (``ray.init`` replaced)."""

from __future__ import annotations

import copy
import logging
import os

import pytest
import ray
import yaml

from towers.launch import ray_init

DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
DATA_LOGGING = "RAY_DATA_LOGGING_CONFIG"
SET_BY_US = (*ray_init.LOCAL_RAY_ENV, DATA_LOGGING)


@pytest.fixture
def init_calls(monkeypatch):
    """``ray.init`` calls as ``(kwargs, the environment Ray's processes would inherit)``."""
    from ray._private import ray_constants

    calls = []
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # Linux default, restored after
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ray, "init", lambda **kw: calls.append((kw, {k: os.environ.get(k) for k in SET_BY_US}))
    )
    for name in (*SET_BY_US, "RAY_ADDRESS"):  # unset here, and as before after the test
        monkeypatch.setenv(name, "")  # (recorded even when absent, unlike a bare delenv)
        monkeypatch.delenv(name)
    return calls


def test_a_local_instance_gets_the_local_defaults_before_ray_starts(init_calls, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    ray_init.init_ray(min_cpus=3.5)
    [(kwargs, env)] = init_calls
    assert kwargs == {"num_cpus": 4}  # Ray's processes inherit the environment
    assert env[DRAIN] == "3" and env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"  # not Ray's 2 s: see LOCAL_RAY_ENV
    assert env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "60"  # not Ray's 5 s: see LOCAL_RAY_ENV
    assert env[DATA_LOGGING] == str(ray_init.QUIET_RAY_DATA_LOGGING)
    # A loopback-only node: the driver resolves its address now, Ray's processes inherit the switch.
    assert env[ray_init.LOOPBACK_SWITCH] == "0"
    assert ray_constants_enable_cluster() is False


def ray_constants_enable_cluster() -> bool:
    from ray._private import ray_constants

    return ray_constants.ENABLE_RAY_CLUSTER


def test_a_user_can_keep_the_external_address(init_calls, monkeypatch):
    monkeypatch.setenv(ray_init.LOOPBACK_SWITCH, "1")
    ray_init.start_ray()
    assert init_calls[0][1][ray_init.LOOPBACK_SWITCH] == "1"
    assert ray_constants_enable_cluster() is True


def test_verbose_keeps_ray_datas_console(init_calls):
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.DEBUG)  # what --verbose sets
    try:
        ray_init.start_ray()
        assert ray_init.ray_train_log_level() == "INFO"
    finally:
        root.setLevel(before)
    assert init_calls[0][1][DATA_LOGGING] is None
    assert ray_init.ray_train_log_level() == "WARNING"


def test_a_users_setting_wins(init_calls, monkeypatch):
    monkeypatch.setenv(DRAIN, "30")
    ray_init.start_ray(include_dashboard=False)
    assert init_calls[0][0] == {"include_dashboard": False}
    assert init_calls[0][1][DRAIN] == "30"


def test_joining_a_cluster_changes_nothing(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    ray_init.init_ray(min_cpus=8)
    assert init_calls == [({}, dict.fromkeys(SET_BY_US))]  # the cluster's own settings apply
    assert ray_constants_enable_cluster() is True  # and the driver resolves its address as usual


def test_quiet_ray_data_config_is_rays_own_with_a_quieter_console():
    """The shipped file differs from Ray Data's default only where it says (guards a Ray bump)."""
    from ray.data._internal.logging import DEFAULT_CONFIG

    shipped = yaml.safe_load(ray_init.QUIET_RAY_DATA_LOGGING.read_text())
    expected = copy.deepcopy(DEFAULT_CONFIG)
    expected["handlers"]["console"]["level"] = "WARNING"
    expected["loggers"]["ray.data._internal.progress"] = {"level": "ERROR"}
    assert shipped == expected
    logging.config.dictConfig(copy.deepcopy(shipped))  # and the logging module accepts it
    logging.config.dictConfig(copy.deepcopy(DEFAULT_CONFIG))  # as it was
