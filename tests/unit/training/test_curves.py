"""The TensorBoard curves of a Ray Train run survive a worker killed right after an epoch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.curves import scalars

# Rank 0 of a worker group writes three epochs' points and is SIGKILLed at once, as a worker
# killed by a fault (or by Ray when a peer dies) is: nothing closes the writer.
WRITE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from ray_jobs.curves import Curves

    curves = Curves(Path(sys.argv[1]))
    for epoch in range(3):
        curves.add({"phase": "search", "epoch": epoch, "loss": 1.0 / (epoch + 1), "ndcg@10": 0.1})
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def steps(folder: Path) -> dict[str, list[int]]:
    return {tag: [step for step, _ in points] for tag, points in scalars(folder).items()}


def test_every_epoch_point_is_on_disk_when_add_returns(tmp_path):
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(tmp_path)], cwd=root)
    assert done.returncode == -9  # killed, as a worker is: no close, no atexit
    assert steps(tmp_path) == {"search/loss": [0, 1, 2], "search/ndcg_10": [0, 1, 2]}


def test_a_restarted_group_continues_the_curve(tmp_path):
    """A new worker group (a new writer, a new event file) adds the epochs after its checkpoint;
    TensorBoard reads both files as one curve."""
    from ray_jobs.curves import Curves

    first = Curves(tmp_path)
    first.add({"phase": "search", "epoch": 0, "loss": 1.0})
    first.close()
    second = Curves(tmp_path)
    second.add({"phase": "search", "epoch": 1, "loss": 0.5})
    second.add({"phase": "refit", "epoch": 0, "loss": 0.7, "samples_per_s": 10.0})
    second.close()
    assert steps(tmp_path) == {
        "search/loss": [0, 1],
        "refit/loss": [0],
        "refit/samples_per_s": [0],
    }
