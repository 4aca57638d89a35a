"""The item tower's two-hop neighbourhood (``TwoTowerConfig.item_two_hop``): its inputs.

An item's two-hop neighbourhood is the mean over its training users of their mean item-table
row, ``1/deg_i sum_u 1/n_u sum_{j in u} e_j`` (LightGCN's second propagation layer, without
the symmetric normalisation): on sparse catalogs an item's own row learns from ~10-30
interactions, its co-occurring items' rows from many more. ``ItemTower.two_hop``
(``towers/model/network.py``) computes it from the bags built here; it is an input of the
tower, not a path for gradients.

- ``TrainingContext.two_hop_exact`` (``towers.training.tables.two_hop_bags``) — the bags of
  any item rows, for embedding (serving, evaluation).
- ``TrainingContext.catalog_two_hop`` — those of the whole catalog, built once per context.
- :func:`refresh_two_hop` — the table the training steps read, recomputed a few times an
  epoch (``two_hop_refreshes``): one pass over the graph instead of one per step.
"""

from __future__ import annotations

import torch

from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext


def refresh_two_hop(model: TwoTower, ctx: TrainingContext, n_targets: int) -> None:
    """Keeps ``ctx.two_hop_cache["table"]``, the ``(n_items + 1, E)`` neighbourhoods that
    training steps read, at most ``1 / two_hop_refreshes`` of an epoch old: recomputed from the
    current item table (no gradient) once that many targets have been trained on since,
    ``n_targets`` being this step's. A no-op without ``item_two_hop``."""
    if not model.config.item_two_hop:
        return
    cache = ctx.two_hop_cache
    if cache.get("due", 0) <= 0:
        with torch.no_grad():
            cache["table"] = model.item_tower.two_hop(ctx.catalog_two_hop())  # (N + 1, E)
        cache["due"] = len(ctx.history_items) / model.config.two_hop_refreshes
    cache["due"] -= n_targets
