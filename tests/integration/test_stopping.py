"""Stopping ``python -m serving`` with a local Ray instance of its own (as ``make demo`` serves):
SIGTERM to its whole process group (what a supervisor or ``kill -- -PGID`` sends), SIGTERM to
the main process alone, and Ctrl-C (SIGINT to the terminal's foreground group) each stop it
within ``STOP_S`` seconds with exit status 0, no process it started left (its process tree and
every session in it), and the event posted before the stop still in the event log.

Marked ``own_cluster`` (each case starts Ray itself), as ``test_local_server.py``; its storage
is the security module's ``served_run`` (a tiny published run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from serving.event_feed import resolve_events_path
from tests.unit.serving.test_security import (  # noqa: F401 (served_run: a fixture)
    ROOT,
    _free_port,
    served_run,
)
from towers.storage.events import EventLog

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.own_cluster]

START_S = 240  # a loaded 2-core machine
STOP_S = 15


def session_ids(processes: list[psutil.Process]) -> set[int]:
    ids = set()
    for process in processes:
        try:
            ids.add(os.getsid(process.pid))
        except OSError:
            continue
    return ids


def in_sessions(ids: set[int]) -> list[psutil.Process]:
    """The running processes of the sessions ``ids`` (never one of this test's own session)."""
    ids = ids - {os.getsid(0)}
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) in ids and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (OSError, psutil.Error):
            continue
    return found


def alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            continue
    return left


def wait_until_serving(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            if proc.poll() is not None:
                pytest.fail(f"the server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            assert time.monotonic() < deadline, f"the server did not answer in {START_S} s"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["group-SIGTERM", "main-SIGTERM", "group-SIGINT"])
def test_a_signal_stops_the_server_cleanly(served_run, tmp_path, how):  # noqa: F811
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        # A session of its own (so its process group is this server's alone), as a terminal or
        # a supervisor starts it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--storage", served_run.uri, "--port", str(port)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    tree: list[psutil.Process] = []
    sessions = {proc.pid}
    try:
        wait_until_serving(proc, port, log)
        event = {"event_id": f"stop-{how}", "user_id": 1, "item_id": 1, "rating": 4.0}
        posted = httpx.post(f"http://127.0.0.1:{port}/events", json={"events": [event]}, timeout=60)
        assert posted.status_code == 200 and posted.json()["accepted"] == 1, posted.text
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        sessions |= session_ids(tree)
        assert len(tree) > 5, tree  # Ray's processes were seen, not just the server's

        started = time.monotonic()
        if how == "main-SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM if how == "group-SIGTERM" else signal.SIGINT)
        try:
            code = proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_S} s after {how}:\n{log.read_text()[-4000:]}")
        took = time.monotonic() - started
        print(f"{how}: exited {code} in {took:.1f} s")
        assert code == 0, log.read_text()[-4000:]
        time.sleep(0.5)  # a process killed at the end is reaped by init
        left = alive(tree) + [f"{p.pid} {p.name()}" for p in in_sessions(sessions)]
        assert not left, left
        stored = EventLog(resolve_events_path(served_run.uri, None)).since()
        assert event["event_id"] in {e.event_id for e in stored}
    finally:  # whatever this run left: its own processes only
        for process in {*tree, *in_sessions(sessions)}:
            try:
                process.kill()
            except psutil.Error:
                continue
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
