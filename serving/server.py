"""Starting the server: the port and artifact checks, then Serve (or one uvicorn process).

``python -m serving`` (``serving/__main__.py``) parses the command line and calls these; the
pipeline's ``--serve`` and ``make demo`` call them too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time

from serving.schemas import ServingArgs

APP_NAME = "recommender"


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

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` shuts down as cleanly as Ctrl-C
    # Serve's controller and proxy log each deployment step at INFO (a dozen lines per start);
    # at WARNING unless --verbose. The replicas' own lines (the version each one loaded) stay.
    system_logs = {"log_level": "INFO" if verbose() else "WARNING"}
    if not verbose():
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this driver's "Started Serve"
    serve.start(http_options={"host": host, "port": port}, logging_config=system_logs)
    # Access logs cost ~3 log lines per request across processes; off unless asked for.
    logging_config = {"enable_access_log": access_log}
    try:
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
        # Deleting the app first stops its replicas together, each after its in-flight
        # requests (~2 s); serve.shutdown() alone stops them one dependency level at a time,
        # and the EventStore last, after its followers' long polls (~9 s in all here).
        with contextlib.suppress(Exception):  # an app that never deployed: shut down anyway
            serve.delete(APP_NAME)
        serve.shutdown()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
