"""Encoded feature tables as tensors (:class:`TableTensors`) and CSR row gathers.

A batch's ``feat:*`` inputs come from :meth:`TableTensors.gather`: index and dense features by
row, bag features (lists) through :func:`csr_gather` of their offsets. ``towers.training.inputs``
builds the users' and items' tables once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from towers.data.features import EncodedTable

Batch = dict[str, torch.Tensor]


def csr_gather(
    indptr: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entries of CSR ``rows (B,)``: ``(positions (H,), row of each (H,), offsets (B,))``."""
    starts = indptr[rows]  # (B,)
    lengths = indptr[rows + 1] - starts  # (B,)
    offsets = torch.cumsum(lengths, 0) - lengths  # (B,)
    entry_rows = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
    positions = torch.arange(len(entry_rows), device=rows.device) - offsets[entry_rows]
    return positions + starts[entry_rows], entry_rows, offsets


@dataclass
class TableTensors:
    """One side's encoded features as tensors; :meth:`gather` gives a batch's ``feat:*`` inputs.

    ``index``/``dense`` features are ``(n, ...)`` tensors; ``bag`` features CSR ``values`` and
    ``offsets (n + 1,)`` (the encoded layout of ``towers.data.features``).
    """

    inputs: tuple[tuple[str, str, int], ...]
    tensors: dict[str, torch.Tensor]

    @classmethod
    def build(cls, table: EncodedTable, device: str | torch.device = "cpu") -> TableTensors:
        tensors = {k: torch.tensor(v).to(device) for k, v in table.arrays.items()}  # copies
        return cls(table.inputs(), tensors)

    def to(self, device: str | torch.device) -> TableTensors:
        return TableTensors(self.inputs, {k: v.to(device) for k, v in self.tensors.items()})

    def gather(self, rows: torch.Tensor) -> Batch:
        out: Batch = {}
        for name, kind, _ in self.inputs:
            values = self.tensors[name]
            if kind == "bag":
                positions, _, offsets = csr_gather(self.tensors[f"{name}:offsets"], rows)
                out[f"feat:{name}"], out[f"feat:{name}:offsets"] = values[positions], offsets
            else:
                out[f"feat:{name}"] = values[rows]
        return out

    def profile_matrix(self, name: str) -> torch.Tensor:
        """``(n, size - 1)`` multi-hot of an index or bag feature (the unknown 0 left out)."""
        kind, size = next((k, s) for n, k, s in self.inputs if n == name)
        values = self.tensors[name]
        n = len(self.tensors[f"{name}:offsets"]) - 1 if kind == "bag" else len(values)
        if kind == "bag":
            counts = self.tensors[f"{name}:offsets"].diff()
            rows = torch.repeat_interleave(torch.arange(n, device=values.device), counts)
        else:
            rows = torch.arange(n, device=values.device)
        dense = torch.zeros(n, size, device=values.device)
        dense[rows, values] = 1.0
        return dense[:, 1:]
