"""Rank 0's TensorBoard curves of a Ray Train run (``ray_jobs.train``), beside its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Curves:
    """Rank 0's TensorBoard scalars, one point per epoch and phase (``search/loss``,
    ``refit/samples_per_s``, ``search/ndcg_10``: TensorBoard tags have no ``@``), in ``folder``
    beside the checkpoints."""

    def __init__(self, folder: Path) -> None:
        from tensorboardX import SummaryWriter  # comes with ray[tune]

        self.writer = SummaryWriter(str(folder))

    def add(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key in ("loss", "samples_per_s", "lr") or "@" in key or key == "rmse":
                tag = f"{row['phase']}/{key.replace('@', '_')}"  # no "@" in TensorBoard tags
                self.writer.add_scalar(tag, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()  # the writer's thread drains its queue: the last epoch is kept
