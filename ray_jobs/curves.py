"""Rank 0's TensorBoard curves of a Ray Train run (``ray_jobs.train``), beside its checkpoints."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class Curves:
    """Rank 0's TensorBoard scalars, one point per epoch and phase (``search/loss``,
    ``refit/samples_per_s``, ``search/ndcg_10``: TensorBoard tags have no ``@``), in ``folder``
    beside the checkpoints.

    Each point is in the file when ``add`` returns: a worker group that Ray stops or a fault kills
    later keeps every epoch it reported. tensorboardX's ``SummaryWriter`` does not give that (its
    ``flush`` does not wait for the events its thread has not taken yet: a point written just
    before a SIGKILL was lost), so the events go through its synchronous ``EventsWriter``. Every
    writer has its own file: names carry the second a file was made, so the nanoseconds and the
    process id keep a restarted group's file from replacing one made the same second, in order.
    """

    def __init__(self, folder: Path) -> None:
        from tensorboardX.event_file_writer import EventsWriter  # comes with ray[tune]

        folder.mkdir(parents=True, exist_ok=True)
        suffix = f".{time.time_ns()}.{os.getpid()}"
        self.events = EventsWriter(str(folder / "events"), filename_suffix=suffix)

    def add(self, row: dict[str, Any]) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        now = time.time()
        for key, value in row.items():
            if key in ("loss", "samples_per_s", "lr") or "@" in key or key == "rmse":
                tag = f"{row['phase']}/{key.replace('@', '_')}"  # no "@" in TensorBoard tags
                summary = scalar(tag, float(value))
                self.events.write_event(
                    event_pb2.Event(summary=summary, step=int(row["epoch"]), wall_time=now)
                )
        self.events.flush()

    def close(self) -> None:
        self.events.close()
