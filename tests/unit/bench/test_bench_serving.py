"""``bench/bench_serving.py`` process handling, without Ray: what a stopped target leaves."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.bench_serving import stop_target

# A stand-in for `python -m serving` started from a background shell job: SIGINT ignored, a
# SIGTERM handler that exits cleanly, and a grandchild in its own session (as HAProxy is, under a
# Ray worker), which a signal to the server's process group does not reach.
SERVER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_target_stops_a_sigint_deaf_server_and_what_it_started_outside_its_group():
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    grandchild = psutil.Process(int(proc.stdout.readline()))
    assert grandchild.is_running()
    assert grandchild.pid in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}

    stop_target(proc, clean_s=20)

    assert proc.returncode == 0  # SIGTERM's clean exit, not SIGKILL (-9)
    assert gone(grandchild)


def test_stop_target_escalates_to_sigkill_when_the_server_ignores_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\n"
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().strip() == "up"
    stop_target(proc, clean_s=1)
    assert proc.returncode == -signal.SIGKILL


def gone(process: psutil.Process, timeout_s: float = 10) -> bool:
    """Exited (a zombie counts: its parent, not us, has to reap it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_table_and_plot_from_saved_rows(tmp_path, capsys):
    from bench.bench_serving import main

    rows = [
        {"target": t, "pair": "serve", "connections": c, "round": r, "rps": rps, "p50_ms": 5.0,
         "p99_ms": p99, "errors": 0, "requests": 100}
        for c in (1, 16)
        for r in range(3)
        for t, rps, p99 in (("bare", 1000.0 + r, 10.0), ("serve", 400.0 + 100 * r, 40.0 + r))
    ]  # fmt: skip
    log = tmp_path / "run.txt"
    log.write_text("load average ...\n" + "".join(json.dumps(r) + "\n" for r in rows) + "| x |\n")
    main(["--from-rows", str(log), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "| serve | 16 | 500 | 1001 | 0.50 | 5.0 | 41.0 | 10.0 | 0 / 300 |" in out
    assert (tmp_path / "out" / "table.md").read_text().count("| serve |") == 2
    assert len((tmp_path / "out" / "rows.jsonl").read_text().splitlines()) == len(rows)
    assert (tmp_path / "out" / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_artifacts_are_named_with_the_commands_that_write_them(tmp_path):
    from bench.bench_serving import ensure_artifacts
    from towers.storage.root import Storage

    with pytest.raises(SystemExit, match="lacks data, model, index, knn: rerun with --prepare"):
        ensure_artifacts(str(tmp_path), prepare=False)
    storage = Storage(tmp_path)
    for artifact in ("data", "model", "index"):
        storage.write_bytes(f"{artifact}/x", b"1")
        storage.publish(artifact, {})
    with pytest.raises(SystemExit) as stop:
        ensure_artifacts(str(tmp_path), prepare=False)
    message = str(stop.value)
    assert "lacks knn:" in message and "ray_jobs.evaluate --storage" in message
    assert "ray_jobs.train" not in message  # only what follows the first missing artifact
    storage.write_bytes("knn/x", b"1")
    storage.publish("knn", {})
    ensure_artifacts(str(tmp_path), prepare=False)  # complete: nothing to do
