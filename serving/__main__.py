"""Serve the recommender locally: ``python -m serving --storage runs/demo``.

Starts (or joins) a local Ray instance, starts Serve's HTTP ingress on ``--host``/``--port``
(127.0.0.1:8000 by default: not reachable from other machines), deploys the app and blocks until
Ctrl-C, which shuts Serve down. ``--no-ray`` serves the same FastAPI app and models in this one
process with uvicorn instead (no batching, no replicas, no roll-outs): the reference the
benchmark compares Serve with. Every ``ServingArgs`` field is a flag (``--k-max``,
``--max-batch-size``, ...). For HAProxy as Serve's ingress, start with
``RAY_SERVE_ENABLE_HA_PROXY=1`` in the environment.
"""

from __future__ import annotations

import argparse
import signal
import socket
import time
from collections.abc import Sequence

from serving.schemas import ServingArgs

APP_NAME = "recommender"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ServingArgs]:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[1])
    for name, field in ServingArgs.model_fields.items():
        kind = field.annotation if field.annotation in (int, float) else str
        default = "required" if field.is_required() else f"default: {field.default}"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            required=field.is_required(),
            default=argparse.SUPPRESS,
            help=f"{field.description} ({default})",
        )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (8000)")
    parser.add_argument(
        "--access-log", action="store_true", help="log every request (Serve replicas and proxy)"
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="one uvicorn process, no Ray (benchmark reference)"
    )
    ns = parser.parse_args(argv)
    values = {k: v for k, v in vars(ns).items() if k in ServingArgs.model_fields}
    try:
        return ns, ServingArgs(**values)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable


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
    from towers.storage import ArtifactError, Storage

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

    from serving.artifacts import load_two_tower_service, load_user_knn_service
    from serving.http import LocalBackend, create_app
    from serving.schemas import ModelSettings

    torch.set_num_threads(1)
    services = {
        "two_tower": load_two_tower_service(
            args.storage,
            ModelSettings(model_artifact=args.model_artifact, index_artifact=args.index_artifact),
        ),
        "user_knn": load_user_knn_service(
            args.storage, ModelSettings(model_artifact=args.knn_artifact)
        ),
    }
    app = create_app(LocalBackend(services), args.k_max, args.max_body_bytes)
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
        from ray_jobs.ray_setup import start_ray

        start_ray(include_dashboard=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` shuts down as cleanly as Ctrl-C
    serve.start(http_options={"host": host, "port": port})
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
        serve.shutdown()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, ready_message: str = "") -> None:
    ns, args = parse_args(argv)
    require_free_port(ns.host, ns.port)
    require_artifacts(args)
    if ns.no_ray:
        serve_without_ray(args, ns.host, ns.port)
    else:
        serve_with_ray(args, ns.host, ns.port, ns.access_log, ready_message)


if __name__ == "__main__":
    main()
