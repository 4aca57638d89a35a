"""End to end on a real local cluster: `ray start --head`, `ray job submit` the pipeline, stop."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from towers.storage.root import Storage

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.own_cluster]
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_head(tmp_path):
    """A head node on free ports in its own temp dir; stopped even when the test fails."""
    gcs, dashboard = free_port(), free_port()
    # Every port on a free one: another Ray on this machine (a test's ray.init, a developer's
    # cluster) holds the defaults, and a second agent on 52365 never comes up.
    ports = {
        name: free_port()
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
            "ray-client-server-port",
        )
    }
    temp_dir = Path("/tmp") / f"rtt-{os.getpid()}"  # short: Ray's socket paths have a length cap
    # The venv's bin first on PATH, as after `source .venv/bin/activate`: the job's `python`.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    # Token authentication stays on, with this cluster's own token (as `ray get-auth-token
    # --generate` makes one): a fresh machine has no ~/.ray/auth_token, and `ray start` refuses
    # to start without one. The head and the CLI both read it from RAY_AUTH_TOKEN_PATH.
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_TWO_TOWER_OFFLINE": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": path,
    }
    started = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={gcs}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if started.returncode != 0:  # the reason is in Ray's own output: show it
        pytest.fail(
            f"`ray start --head` exited {started.returncode}\n--- stdout\n{started.stdout[-3000:]}"
            f"\n--- stderr\n{started.stderr[-3000:]}"
        )
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        # Not `ray stop`, which stops every Ray on the machine (the test session's own too):
        # only processes started under this head's temp dir.
        for signal in ("-TERM", "-KILL"):
            subprocess.run(["pkill", signal, "-f", str(temp_dir)], capture_output=True)
            deadline = time.monotonic() + 3  # until they are gone, 3 s at most
            while time.monotonic() < deadline and alive(temp_dir):
                time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)


def alive(temp_dir: Path) -> bool:
    """Whether a process started under ``temp_dir`` is still running."""
    return subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True).returncode == 0


def test_pipeline_via_ray_job_submit(local_head, tmp_path, ml100k_dir):
    address, env = local_head
    storage = tmp_path / "run"
    cmd = [
        RAY,
        "job",
        "submit",
        f"--address={address}",
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        '{"env_vars": {"RAY_TWO_TOWER_OFFLINE": "1"}}',
        "--",
        "python",
        "-m",
        "ray_jobs.pipeline",
        "--storage",
        str(storage),
        "--data-dir",
        str(ml100k_dir),
        "--num-workers",
        "1",
        "--epochs",
        "1",
        "--no-paper",
    ]
    start = time.time()
    for _ in range(30):  # the job agent comes up a few seconds after `ray start` returns
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if "No available agent" not in result.stdout + result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    s = Storage(storage)
    for artifact in ("data", "model", "reports", "knn", "index"):
        assert s.is_complete(artifact), artifact
    report = s.read_json("reports/metrics.json")
    assert set(report["models"]) >= {"two_tower", "user_knn", "popularity"}
    assert s.read_manifest("index")["model_version"] == s.read_manifest("model")["version"]
    assert time.time() - start < 900
