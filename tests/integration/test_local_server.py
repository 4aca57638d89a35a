"""``python -m serving`` starting a local Ray instance of its own (as ``make demo`` does): the
typed builder through ``serve.run(build_app(args))`` answers a recommendation from each model;
every listening socket of the server and of every process under it (GCS, raylet, workers,
agents, the Serve proxy) is on 127.0.0.1, and a connection to the machine's other address is
refused.

Marked ``own_cluster`` (it starts Ray itself, not on the suite's session instance), so ``make
test`` runs it in the process beside the session's tests. Its helpers are the security module's
(tests/unit/serving/test_security.py), which checks the single-process server the same way."""

from __future__ import annotations

import pytest

from tests.unit.serving.test_security import (  # noqa: F401 (served_run: a fixture)
    LOOPBACK,
    serve_and_list_sockets,
    served_run,
)

pytestmark = [pytest.mark.serve, pytest.mark.slow, pytest.mark.own_cluster]


def test_a_local_ray_instance_listens_on_loopback_only(served_run):  # noqa: F811
    listening, port = serve_and_list_sockets(["--storage", served_run.uri], 240, answered=True)
    assert ("127.0.0.1", port) in {(ip, p) for _, ip, p in listening}
    assert len(listening) > 5, listening  # Ray's own servers were seen, not just the HTTP port
    outside = {(name, ip, p) for name, ip, p in listening if ip not in LOOPBACK}
    assert not outside, sorted(outside)
