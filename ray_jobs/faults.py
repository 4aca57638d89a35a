"""Fault injection for the reliability tests: a test-only hook, not a user flag.

Set ``TWO_TOWER_FAULTS`` in the environment of the process that starts training, e.g.
``TWO_TOWER_FAULTS=crash_after_epoch=0`` (the worker group raises once after epoch 0),
``TWO_TOWER_FAULTS=kill_worker_at=1:2`` (the last rank SIGKILLs itself at epoch 1, step 2, once;
what an OOM kill looks like to Ray Train) or ``TWO_TOWER_FAULTS=pause_at=1:2`` (every rank stops
at epoch 1, step 2, once, for up to ``PAUSE_S``: a test kills a whole node meanwhile, see
``tests/integration/test_multinode.py``). The driver reads it and hands the plan to the workers;
without it nothing is injected. Faults combine (``crash_after_epoch=0,kill_worker_at=1:2``: a
crash, then a kill in the restarted group). A marker beside the run's checkpoints
(``fault_injected``, on any storage root, object storage included) holds a line per fault that
fired and keeps each from firing again.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from towers.storage.root import Storage

ENV = "TWO_TOWER_FAULTS"
MARKER = "fault_injected"  # in the Ray Train run folder, train/<run>/
PAUSE_S = 300.0  # a paused run carries on after this, whether or not its node was killed


@dataclass(frozen=True)
class FaultPlan:
    crash_after_epoch: int = -1  # raise once after this epoch (-1: never)
    kill_worker_at: str = ""  # "EPOCH:STEP": the last rank SIGKILLs itself there, once
    pause_at: str = ""  # "EPOCH:STEP": every rank stops there once, for up to PAUSE_S

    @classmethod
    def from_env(cls) -> FaultPlan:
        """The plan in ``$TWO_TOWER_FAULTS`` (``key=value[,key=value]``), or no faults."""
        text = os.environ.get(ENV, "").strip()
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key == "crash_after_epoch" and re.fullmatch(r"\d+", value):
                values[key] = int(value)
            elif key in ("kill_worker_at", "pause_at") and re.fullmatch(r"\d+:\d+", value):
                values[key] = value
            else:
                raise ValueError(
                    f"{ENV}: cannot read {part!r}; expected crash_after_epoch=N, "
                    "kill_worker_at=EPOCH:STEP or pause_at=EPOCH:STEP"
                )
        return cls(**values)


# The first word of a fault's line in the marker: which fault fired.
CRASHED, KILLED, PAUSED = "crashed", "killed", "paused"


@dataclass(frozen=True)
class FaultMarker:
    """``train/<run>/fault_injected`` under a storage root: a line per fault that fired, each
    starting with its kind (:data:`CRASHED`, :data:`KILLED`, :data:`PAUSED`)."""

    storage: str
    run_folder: str  # e.g. "train/model-1764590000"

    @property
    def rel(self) -> str:
        return f"{self.run_folder}/{MARKER}"

    def lines(self) -> list[str]:
        storage = Storage(self.storage)
        if not storage.exists(self.rel):
            return []
        return storage.read_bytes(self.rel).decode().splitlines()

    def fired(self, kind: str) -> bool:
        """Whether a fault of ``kind`` fired already in this run (any attempt)."""
        return any(line.split(" ", 1)[0] == kind for line in self.lines())

    def write(self, line: str) -> None:
        """Adds ``line`` (every rank that raises writes the same one: kept once)."""
        lines = self.lines()
        if line not in lines:
            text = "".join(f"{x}\n" for x in [*lines, line])
            Storage(self.storage).write_bytes(self.rel, text.encode())


def kill_at(
    batches: Iterable, plan: FaultPlan, epoch: int, rank: int, world: int, marker: FaultMarker
) -> Iterator:
    """Yields ``batches``; at ``plan.kill_worker_at`` the last rank kills its own process, at
    ``plan.pause_at`` every rank waits; each fires on the first attempt only (``marker``)."""
    kill = bool(plan.kill_worker_at) and rank == world - 1
    pause = bool(plan.pause_at)
    for step, batch in enumerate(batches):
        here = f"{epoch}:{step}"
        if pause and here == plan.pause_at and not marker.fired(PAUSED):
            _fire(PAUSED, here, rank, world, marker)
        if kill and here == plan.kill_worker_at and not marker.fired(KILLED):
            _fire(KILLED, here, rank, world, marker)
        yield batch


def crash_after(plan: FaultPlan, epoch: int, loop: dict[str, Any]) -> None:
    """Raises after ``plan.crash_after_epoch``, once (the marker), and only after Ray Train's
    controller has had time to register the epoch's checkpoint: crashing sooner made the
    restarted group start afresh and crash again (a flaky test, seen once under load)."""
    marker = FaultMarker(loop["storage"], loop["run_folder"])
    if plan.crash_after_epoch != epoch or marker.fired(CRASHED):
        return
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    marker.write(f"{CRASHED} after epoch {epoch}")
    raise RuntimeError(f"fault injection: crashing after epoch {epoch}")


def _fire(kind: str, here: str, rank: int, world: int, marker: FaultMarker) -> None:
    # Ray Train's controller registers reported checkpoints when it polls the workers
    # (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). A real mid-epoch death comes long
    # after the last report; dying sooner would (correctly) redo one more epoch.
    time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
    epoch, step = here.split(":")
    if kind == PAUSED:
        if rank == world - 1:
            marker.write(f"{PAUSED} {world} ranks at epoch {epoch} step {step}")
        print(f"fault injection: rank {rank} pauses at {here}", flush=True)
        time.sleep(PAUSE_S)
        return
    marker.write(f"{KILLED} pid {os.getpid()} at epoch {epoch} step {step}")
    print(f"fault injection: SIGKILL to pid {os.getpid()} at {here}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
