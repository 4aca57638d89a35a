"""A multi-node Ray cluster on this machine, the way Ray's own multi-node tests build one: a head
and worker nodes started with ``ray start``, each with its own temp dir, free ports and resources,
token authentication on (the cluster's own token, handed to every node and client through
``RAY_AUTH_TOKEN_PATH``).

A node is lost the way a machine is: its raylet and every process under it (workers, agents)
get SIGKILL at once. Only processes started for this cluster are ever signalled: a node's are
found by its temp dir and as the descendants of its raylet.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.s3 import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# Every port a node opens, on a free one: another Ray on this machine (a test session's
# ray.init, a developer's cluster) holds the defaults.
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
)
# The GCS marks a node dead after this many missed health checks, this far apart (Ray's
# defaults, 5 x 3 s, would add ~15 s to every node-loss test; docs/RELIABILITY.md says which).
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclass
class Node:
    name: str
    temp_dir: Path
    node_manager_port: int
    resources: dict[str, float] = field(default_factory=dict)

    def raylet(self) -> psutil.Process | None:
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if "raylet" in (proc.info["name"] or "") and str(self.temp_dir) in cmdline:
                return proc
        return None

    def kill_all(self) -> None:
        for proc in self.processes():
            with suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)

    def processes(self) -> list[psutil.Process]:
        """The raylet, its descendants, and anything else whose command line names this node's
        temp dir (the head's GCS, dashboard and log monitor)."""
        found: dict[int, psutil.Process] = {}
        raylet = self.raylet()
        if raylet is not None:
            found[raylet.pid] = raylet
            with suppress(psutil.Error):
                found.update({p.pid: p for p in raylet.children(recursive=True)})
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.temp_dir) in " ".join(proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        found.pop(os.getpid(), None)
        return list(found.values())


class LocalCluster:
    """A head node and worker nodes on this machine; ``shutdown`` stops every one of them."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tag = f"rmn{os.getpid()}"  # short: Ray's socket paths have a length cap
        token = tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.token = token.read_text()
        # Every node's processes get this empty scratch TMPDIR: what is left in it is a leak.
        self.scratch = tmp / "scratch"
        self.scratch.mkdir()
        self.env = {
            **env,
            "TMPDIR": str(self.scratch),
            **HEALTH_CHECK,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            # The venv's bin first on PATH, as after `source .venv/bin/activate`: jobs' `python`.
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
        self.nodes: list[Node] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver process that joins this cluster (``init_ray``)."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address, **extra}

    def _start(self, name: str, args: list[str], num_cpus: int, resources: dict) -> Node:
        temp_dir = Path("/tmp") / f"{self.tag}{name}"
        ports = {flag: free_port() for flag in NODE_PORTS}
        cmd = [
            RAY,
            "start",
            *args,
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            f"--temp-dir={temp_dir}",
            "--object-store-memory=300000000",  # 300 MB: tiny data, and the machine is shared
            "--disable-usage-stats",
            *(f"--{flag}={port}" for flag, port in ports.items()),
        ]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:  # the reason is in Ray's own output: show it
            Node(name, temp_dir, 0).kill_all()  # what a half-started node left behind
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise RuntimeError(
                f"`ray start` ({name}) exited {done.returncode}\n--- stdout\n"
                f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            )
        node = Node(name, temp_dir, ports["node-manager-port"], {"CPU": num_cpus, **resources})
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        return self._start(
            "h",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}",
            ],
            num_cpus,
            resources or {},
        )

    def add_worker(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        name = f"w{len(self.nodes)}"
        args = [f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1"]
        node = self._start(name, args, num_cpus, resources or {})
        self.wait_for(lambda: len(self.alive_nodes()) == len(self.live), 60, "node join")
        return node

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.raylet() is not None]

    def kill_node(self, node: Node) -> int:
        """SIGKILLs the node's raylet and every process under it at once; returns how many."""
        procs = node.processes()
        for proc in procs:
            with suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def shutdown(self) -> None:
        """Stops every node this cluster started (workers first), then removes their temp dirs."""
        for node in reversed(self.nodes):
            procs = node.processes()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for proc in procs:
                    with suppress(psutil.Error):
                        proc.send_signal(sig)
                _, procs = psutil.wait_procs(procs, timeout=5)
                if not procs:
                    break
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    # --- the dashboard's REST API (token in the Authorization header) --------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        response = httpx.request(
            method, f"{self.dashboard_url}{path}", headers=headers, timeout=30, **kwargs
        )
        response.raise_for_status()
        return response.json() if response.content else None

    def state(self, kind: str, **filters: str) -> list[dict[str, Any]]:
        """``ray list <kind> --detail`` through the state API, e.g. ``state("actors",
        class_name="RayTrainWorker")``."""
        params: list[tuple[str, str]] = [("limit", "10000"), ("detail", "true")]
        for key, value in filters.items():
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        return self.api("GET", f"/api/v0/{kind}", params=params)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict[str, Any]]:
        return self.state("nodes", state="ALIVE")

    def wait_for(self, condition, timeout_s: float, what: str) -> float:
        """Polls ``condition`` until true; returns the seconds it took."""
        start = time.monotonic()
        while True:
            try:
                if condition():
                    return time.monotonic() - start
            except (httpx.HTTPError, KeyError):
                pass
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{what}: not done in {timeout_s}s")
            time.sleep(0.25)
