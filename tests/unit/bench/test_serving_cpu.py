"""``bench/serving_cpu.py``: each serving process's CPU per request, named as Ray names them."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import psutil
import pytest

from bench.serving_cpu import cpu_per_request, cpu_seconds, main, process_name


def test_a_ray_worker_is_named_by_its_actor_and_its_cpu_is_counted():
    # Ray sets a worker's argv[0] to ``ray::<actor class>[.<method>]``: the same with exec -a.
    busy = "ray::ServeReplica:recommender:Ingress.handle_request"
    proc = subprocess.Popen(  # `yes` into /dev/null: a busy core under the worker's name
        ["bash", "-c", f'exec -a "{busy}" yes'], stdout=subprocess.DEVNULL
    )
    try:
        worker = psutil.Process(proc.pid)
        deadline = time.monotonic() + 10
        while process_name(worker) != "ServeReplica:recommender:Ingress":
            assert time.monotonic() < deadline, worker.cmdline()
            time.sleep(0.05)
        before = cpu_seconds(worker)
        time.sleep(0.5)
        after = cpu_seconds(worker)
    finally:
        proc.kill()
        proc.wait()
    [(name, ms, count)] = cpu_per_request(before, after, requests=10)
    assert name == "ServeReplica:recommender:Ingress" and count == 1
    assert 10 < ms < 1000  # ~0.5 s of one busy core over 10 requests


def test_cpu_is_summed_by_name_and_a_new_process_counts_from_zero():
    before = {1: ("TwoTower", 1.0), 2: ("TwoTower", 2.0), 3: ("Ingress", 5.0), 9: ("gone", 1.0)}
    after = {1: ("TwoTower", 1.5), 2: ("TwoTower", 2.5), 3: ("Ingress", 5.2), 4: ("Ingress", 0.3)}
    rows = cpu_per_request(before, after, requests=100)
    assert [(n, round(ms, 6), c) for n, ms, c in rows] == [
        ("TwoTower", 10.0, 2),
        ("Ingress", 5.0, 2),
    ]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_smoke_run_prints_the_servers_share(capsys):
    main(["--smoke-test"])
    out = capsys.readouterr().out
    serving = re.search(r"^\| serving \| ([0-9.]+) \| 1 \|$", out, re.M)
    total = re.search(r"^\| \*\*all\*\* \| \*\*([0-9.]+)\*\* \|", out, re.M)
    assert serving and total, out
    assert 0 < float(serving.group(1)) <= float(total.group(1))
    assert re.search(r"\d+ cores allow at most \d+/s", out), out
