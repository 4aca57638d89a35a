"""Fault injection for the reliability tests: a test-only hook, not a user flag.

Set ``TWO_TOWER_FAULTS`` in the environment of the process that starts training, e.g.
``TWO_TOWER_FAULTS=crash_after_epoch=0`` (the worker group raises once after epoch 0) or
``TWO_TOWER_FAULTS=kill_worker_at=1:2`` (the last rank SIGKILLs itself at epoch 1, step 2, once;
what an OOM kill or a lost node looks like to Ray Train). The driver reads it and hands the plan
to the workers; without it nothing is injected.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "TWO_TOWER_FAULTS"


@dataclass(frozen=True)
class FaultPlan:
    crash_after_epoch: int = -1  # raise once after this epoch (-1: never)
    kill_worker_at: str = ""  # "EPOCH:STEP": the last rank SIGKILLs itself there, once

    @classmethod
    def from_env(cls) -> FaultPlan:
        """The plan in ``$TWO_TOWER_FAULTS`` (``key=value[,key=value]``), or no faults."""
        text = os.environ.get(ENV, "").strip()
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key == "crash_after_epoch" and re.fullmatch(r"\d+", value):
                values[key] = int(value)
            elif key == "kill_worker_at" and re.fullmatch(r"\d+:\d+", value):
                values[key] = value
            else:
                raise ValueError(
                    f"{ENV}: cannot read {part!r}; expected crash_after_epoch=N or "
                    "kill_worker_at=EPOCH:STEP"
                )
        return cls(**values)


def kill_at(
    batches: Iterable, plan: FaultPlan, epoch: int, rank: int, world: int, marker: Path
) -> Iterator:
    """Yields ``batches``; the last rank kills its own process at ``plan.kill_worker_at``, once.

    ``marker`` (a file beside the checkpoints) makes it fire only on the first attempt.
    """
    armed = bool(plan.kill_worker_at) and rank == world - 1
    for step, batch in enumerate(batches):
        if armed and f"{epoch}:{step}" == plan.kill_worker_at and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"killed pid {os.getpid()} at epoch {epoch} step {step}\n")
            # Ray Train's controller registers reported checkpoints when it polls the workers
            # (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default). A real mid-epoch death comes
            # long after the last report; dying sooner would (correctly) redo one more epoch.
            time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2")))
            print(f"fault injection: SIGKILL to pid {os.getpid()} at {epoch}:{step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
