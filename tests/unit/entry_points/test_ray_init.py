"""``towers.launch.ray_init``: how jobs and the local server start Ray (``ray.init`` replaced)."""

from __future__ import annotations

import os

import pytest
import ray

from towers.launch import ray_init

DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


@pytest.fixture
def init_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, os.environ.get(DRAIN))))
    for name in (DRAIN, "RAY_ADDRESS"):  # unset here, and as before after the test
        monkeypatch.setenv(name, "")  # (recorded even when absent, unlike a bare delenv)
        monkeypatch.delenv(name)
    return calls


def test_a_local_instance_gets_the_local_defaults_before_ray_starts(init_calls, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    ray_init.init_ray(min_cpus=3.5)
    assert init_calls == [({"num_cpus": 4}, "3")]  # Ray's processes inherit the environment


def test_a_users_setting_wins(init_calls, monkeypatch):
    monkeypatch.setenv(DRAIN, "30")
    ray_init.start_ray(include_dashboard=False)
    assert init_calls == [({"include_dashboard": False}, "30")]


def test_joining_a_cluster_changes_nothing(init_calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    ray_init.init_ray(min_cpus=8)
    assert init_calls == [({}, None)]  # the cluster's own settings apply
