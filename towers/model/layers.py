"""The layers both towers are built from: an MLP, feature encoders, weighted bags, id dropout.

``towers.model.network`` assembles them into the item and user towers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from half-precision uniforms.

    PyTorch's CPU ``bernoulli_`` draws one double per element and was ~18% of a training step;
    a float16 ``rand`` (resolution 2^-11, ample for a keep probability) costs half as much. On
    accelerators the fused kernel is used unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape, dtype=torch.float16) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def mlp(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    """``in_dim`` → (Linear, ReLU, Dropout) per hidden width → Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def weighted_bags(
    indices: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``(B, E)`` per bag (``offsets (B,)`` into ``indices (H,)``) the sum of its ``table`` rows
    times their ``weights (H,)``: a mean when the weights are ``1 / bag size``."""
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)


def drop_ids(ids: torch.Tensor, rate: float, unknown: int) -> torch.Tensor:
    """Train-time id dropout: each id becomes the ``unknown`` row with chance ``rate``, so the
    tower also learns to work without it (cold-start users, items added after training)."""
    if rate <= 0:
        return ids
    dropped = torch.rand(ids.shape, device=ids.device) < rate
    return torch.where(dropped, torch.full_like(ids, unknown), ids)


class FeatureEncoders(nn.Module):
    """One encoder per schema feature, each to ``(N, F)``: an embedding (``index`` inputs), a
    mean-pooled embedding bag (``bag``: lists, hashed text) or a linear map (``dense``).

    Batches carry feature ``name`` as ``feat:name`` (and ``feat:name:offsets`` for bags), built
    by ``towers.training.inputs``; index 0 of every table is the reserved unknown value.
    """

    def __init__(self, inputs: tuple[tuple[str, str, int], ...], dim: int) -> None:
        super().__init__()
        self.inputs, self.dim = inputs, dim
        encoders: dict[str, nn.Module] = {}
        for name, kind, size in inputs:
            if kind == "index":
                encoders[name] = nn.Embedding(max(size, 1), dim)
            elif kind == "bag":
                encoders[name] = nn.EmbeddingBag(max(size, 1), dim, mode="mean")
            elif kind == "dense":
                encoders[name] = nn.Linear(size, dim)
            else:
                raise ValueError(f"feature {name!r}: unknown input kind {kind!r}")
        # ModuleDict keys may not contain "."; feature names are the schema's column names.
        self.encoders = nn.ModuleDict({feature_key(n): m for n, m in encoders.items()})

    @property
    def out_dim(self) -> int:
        return len(self.inputs) * self.dim

    def forward(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        parts = []
        for name, kind, _ in self.inputs:
            encoder = self.encoders[feature_key(name)]
            x = batch[f"feat:{name}"]
            if kind == "bag":
                parts.append(encoder(x, batch[f"feat:{name}:offsets"]))  # (N, F)
            else:
                parts.append(encoder(x))  # (N, F)
        return parts


def feature_key(name: str) -> str:
    return name.replace(".", "_")
