"""Serve the recommender locally: ``python -m serving --storage runs/demo``.

Starts (or joins) a local Ray instance, starts Serve's HTTP ingress on ``--host``/``--port``
(127.0.0.1:8000 by default: not reachable from other machines), deploys the app and blocks until
Ctrl-C or a SIGTERM (to it or to its whole process group), which shuts Serve down: the server
and its Ray run in a session of their own under this process (``run_in_own_session``).
``--no-ray`` serves the same FastAPI app and models in this one process with uvicorn instead
(no batching, no replicas, no roll-outs): the reference the benchmark compares Serve with. Every
``ServingArgs`` field is a flag (``--k-max``, ``--max-batch-size``, ...). For HAProxy as Serve's
ingress, start with ``RAY_SERVE_ENABLE_HA_PROXY=1`` in the environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from serving.schemas import ServingArgs
from serving.server import run_in_own_session, run_server


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


def main(argv: Sequence[str] | None = None) -> None:
    ns, args = parse_args(argv)
    if not ns.no_ray:  # uvicorn alone stops by itself
        run_in_own_session("serving", sys.argv[1:] if argv is None else argv)
    run_server(args, ns.host, ns.port, access_log=ns.access_log, no_ray=ns.no_ray)


if __name__ == "__main__":
    main()
