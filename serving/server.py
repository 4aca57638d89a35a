"""Starting the server: the port and artifact checks, then Serve (or one uvicorn process).

``python -m serving`` (``serving/__main__.py``) parses the command line and calls these; the
pipeline's ``--serve`` and ``make demo`` call them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from serving.schemas import ServingArgs

APP_NAME = "recommender"

# Set in the environment of the server process that `run_in_own_session` starts (and of Ray's
# processes under it): that process serves instead of starting another.
OWN_SESSION = "TWO_TOWER_OWN_SESSION"
# Seconds the orderly stop (delete the app, stop Serve) may take before Ray's processes are
# killed instead: ~5 s on a 2-core machine; a stop signal's caller (docker stop, systemd) waits
# 10-90 s before it kills.
STOP_TIMEOUT_S = 10.0
# Each stops the server as Ctrl-C does (SIGHUP: its terminal closed).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def require_free_port(host: str, port: int) -> None:
    """Exits with a clear message when ``host:port`` cannot be bound (a server already there).

    Checked before anything starts: otherwise Ray and the app come up first and Serve's proxy
    then fails with a traceback per retry, and ``make demo`` finds out after its pipeline.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SystemExit(
                f"cannot serve on {host}:{port}: {err.strerror} (another server, or an earlier "
                "demo still running?). Stop it, or choose another port with --port."
            ) from None


def require_artifacts(args: ServingArgs) -> None:
    """Exits naming every artifact the app would fail to load for want of a complete manifest.

    Before Ray starts: otherwise each replica fails in turn, with a traceback per attempt, and
    the reason surfaces ~30 s later. Sizes only: the replicas check the digests, and whether the
    artifacts fit each other, when they load them.
    """
    from towers.storage.root import ArtifactError, Storage

    storage = Storage(args.storage)
    problems = []
    for artifact in ("data", args.model_artifact, args.index_artifact, args.knn_artifact):
        try:
            storage.read_manifest(artifact, checksums=False)
        except ArtifactError as err:
            problems.append(str(err))
    if problems:
        raise SystemExit(
            f"cannot serve {args.storage}:\n  "
            + "\n  ".join(problems)
            + f"\nwrite them with: python -m ray_jobs.pipeline --storage {args.storage}"
        )


def serve_without_ray(args: ServingArgs, host: str, port: int) -> None:
    """The app and both models in this process (uvicorn, one event loop)."""
    import torch
    import uvicorn

    from serving.artifacts import load_services, settle_heap
    from serving.http import LocalBackend, create_app

    torch.set_num_threads(1)
    services = load_services(
        args.storage, args.model_artifact, args.index_artifact, args.knn_artifact
    )
    from serving.event_feed import resolve_events_path
    from towers.storage.events import EventLog

    event_log = EventLog(resolve_events_path(args.storage, args.events_path))
    app = create_app(LocalBackend(services, event_log), args.k_max, args.max_body_bytes)
    settle_heap()  # what is loaded stays out of the collector's walks (p99, docs/BENCHMARKS.md)
    print(f"serving (no Ray) on http://{host}:{port}  docs: /docs", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def serve_with_ray(
    args: ServingArgs, host: str, port: int, access_log: bool = False, ready_message: str = ""
) -> None:
    """Deploys the Serve app, prints ``ready_message`` once it answers, blocks until Ctrl-C."""
    import ray
    from ray import serve

    from serving.app import build_app

    if not ray.is_initialized():
        from towers.launch.ray_init import start_ray

        start_ray(include_dashboard=False)
    from towers.launch.ray_init import verbose

    for signum in STOP_SIGNALS:  # `kill` and a closed terminal stop as cleanly as Ctrl-C
        signal.signal(signum, _interrupt)
    # Serve's controller and proxy log each deployment step at INFO (a dozen lines per start);
    # at WARNING unless --verbose. The replicas' own lines (the version each one loaded) stay.
    system_logs = {"log_level": "INFO" if verbose() else "WARNING"}
    if not verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this driver's "Started Serve"
    # Access logs cost ~3 log lines per request across processes; off unless asked for.
    logging_config = {"enable_access_log": access_log}
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=system_logs)
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", logging_config=logging_config)
        print(f"serving on http://{host}:{port}  docs: /docs  (Ctrl-C stops)", flush=True)
        if ready_message:
            print(ready_message, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("shutting down Serve", flush=True)
        stop_serve(STOP_TIMEOUT_S)


def stop_serve(timeout_s: float) -> None:
    """Deletes the app and stops Serve, in at most ``timeout_s``; else, or as soon as the local
    Ray instance this process started has lost its GCS or raylet (a signal sent to every process
    of the service, as systemd's ``KillMode=control-group`` does), kills that instance's
    processes and exits 0 at once: every call to a dead GCS would wait 60 s, and then Ray's core
    worker aborts this process."""
    from ray import serve

    def orderly() -> None:
        # Deleting the app first stops its replicas together, each after its in-flight
        # requests (~2 s); serve.shutdown() alone stops them one dependency level at a time,
        # and the EventStore last, after its followers' long polls (~9 s in all here).
        with contextlib.suppress(Exception):  # an app that never deployed: shut down anyway
            serve.delete(APP_NAME)
        with contextlib.suppress(Exception):
            serve.shutdown()

    started = _ray_processes()  # its workers too, before a dying raylet leaves them to init
    stopping = threading.Thread(target=orderly, name="stop-serve", daemon=True)
    stopping.start()
    deadline = time.monotonic() + timeout_s
    while stopping.is_alive() and time.monotonic() < deadline and _local_ray_alive():
        stopping.join(0.2)
    if stopping.is_alive():
        reason = f"did not stop in {timeout_s:g} s" if _local_ray_alive() else "lost its GCS"
        print(f"Ray {reason}: killing its processes", file=sys.stderr, flush=True)
        _kill(started + _ray_processes())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # not through Ray's exit hooks: they wait on the dead GCS


def _local_node() -> object | None:
    """The Ray node this process started with ``ray.init`` (None when it joined a cluster)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    return node if node is not None and getattr(node, "head", False) else None


def _local_ray_alive() -> bool:
    """False once the GCS or the raylet of the instance this process started has exited."""
    from ray._private import ray_constants

    node = _local_node()
    if node is None:
        return True  # a cluster joined: not ours to judge
    for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET):
        for info in node.all_processes.get(kind, ()):
            if info.process.poll() is not None:
                return False
    return True


def _ray_processes() -> list:
    """The processes under this one: the local Ray's GCS, raylet, agents and workers (none when
    it joined a cluster)."""
    if _local_node() is None:
        return []
    import psutil  # Ray's own copy when not installed

    return psutil.Process().children(recursive=True)


def _kill(processes: list) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()  # checks that the pid is still that process
    psutil.wait_procs(processes, timeout=1)  # SIGKILL: gone at once (zombies aside)


def _interrupt(signum: int, frame: object) -> None:
    """The first stop signal: a KeyboardInterrupt, and every later one ignored. A second one (a
    supervisor's SIGTERM beside the one passed on, a second Ctrl-C) would break off the stop,
    and its exception would go to Ray's excepthook, which reports it to a GCS perhaps dead, 60 s.
    The stop is bounded (``stop_serve``)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, _ignore)
    raise KeyboardInterrupt


def _ignore(signum: int, frame: object) -> None:
    """A stop signal once stopping (a handler, not SIG_IGN: one already pending still calls
    the Python handler, and SIG_IGN there prints a warning)."""


def run_in_own_session(module: str, argv: Sequence[str]) -> None:
    """Runs ``python -m module argv`` in a session of its own and exits with its status; returns
    at once in that process, where no local Ray is to start (``RAY_ADDRESS``), or off POSIX.

    A local Ray instance's processes (GCS, raylet, agents) are started in the process group of
    the ``ray.init`` caller. A SIGTERM to that group (``kill -- -PGID``, a supervisor, a
    terminal) reached them together with the server, which then stopped Serve through a dying
    GCS: 61 s, exit 1, a worker left running. Here only this process is in the caller's group:
    it passes SIGINT, SIGTERM and SIGHUP on to the server, which stops Serve and Ray in order,
    and then kills whatever is left in the server's session. The server gets SIGTERM if this
    process dies (Linux)."""
    if os.environ.get(OWN_SESSION) or os.environ.get("RAY_ADDRESS") or os.name != "posix":
        return
    server = subprocess.Popen(
        [sys.executable, "-m", module, *argv],
        env={**os.environ, OWN_SESSION: "1"},
        start_new_session=True,
        preexec_fn=_term_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
    )

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # a hang-up stops it as SIGTERM does
            server.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    code = server.wait()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    _kill_session(server.pid)
    if code < 0:  # ended by a signal: end the same way
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _term_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _kill_session(sid: int) -> None:
    """SIGKILL to every process left in session ``sid`` (a Ray worker the server's stop left)."""
    left = [pid for pid in _session_pids(sid) if pid != os.getpid()]
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"killed {len(left)} process(es) the server left", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 3
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``: /proc on Linux, else ``ps``."""
    if os.path.isdir("/proc/self"):
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as stat:  # "pid (comm) S ppid pgrp session"
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:
                pids.append(int(name))
        return pids
    listing = subprocess.run(["ps", "-A", "-o", "pid=,sess=,stat="], capture_output=True, text=True)
    rows = (line.split() for line in listing.stdout.splitlines())
    return [int(r[0]) for r in rows if len(r) == 3 and int(r[1]) == sid and "Z" not in r[2]]


def run_server(
    args: ServingArgs,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    access_log: bool = False,
    no_ray: bool = False,
    ready_message: str = "",
) -> None:
    """Checks the port and the artifacts, then serves until Ctrl-C (Serve, or uvicorn alone)."""
    require_free_port(host, port)
    require_artifacts(args)
    if no_ray:
        serve_without_ray(args, host, port)
    else:
        serve_with_ray(args, host, port, access_log, ready_message)
