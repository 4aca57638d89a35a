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

from towers.model.network import TwoTower, weighted_bags
from towers.training.inputs import TrainingContext
from towers.training.tables import Batch, csr_gather, user_mean_weights


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
            if model.config.two_hop_leave_out:
                cache["user_means"] = user_means(model.item_tower.item_id.weight.detach(), ctx)
        cache["due"] = len(ctx.history_items) / model.config.two_hop_refreshes
    cache["due"] -= n_targets


def user_means(table: torch.Tensor, ctx: TrainingContext) -> torch.Tensor:
    """``(n_users, E)`` each user's mean item-table row over their training history, weighed
    as in the neighbourhoods (``two_hop_debias``)."""
    indptr = ctx.history_indptr
    users = torch.arange(len(indptr) - 1, device=indptr.device)  # (n_users,)
    _, rows, offsets = csr_gather(indptr, users)
    debias = ctx.config.two_hop_debias
    weights = user_mean_weights(ctx.history_items, rows, len(users), ctx.item_user_indptr, debias)
    return weighted_bags(ctx.history_items, table, offsets, weights)


def leave_out_own_users(ctx: TrainingContext, item_batch: Batch, users: torch.Tensor) -> Batch:
    """A training step's item batch whose first ``len(users)`` items, each a target of the
    matching ``(T,)`` user, read their neighbourhood without that user (``two_hop_leave_out``).

    A validation or test item's neighbourhood never holds the user it is scored for (the pair
    is not in training); a training target's always does, a shortcut the tower would learn and
    serving never offers. Its exact removal: ``(deg_i h_i - m_u) / (deg_i - 1)``, ``h_i`` the
    item's neighbourhood, ``m_u`` the user's mean item row, zeros when ``u`` is its only user
    (as for an item nobody trained on). Rows are read from the table and user means that
    :func:`refresh_two_hop` keeps; the rest of the batch is unchanged.
    """
    if "hop_table" not in item_batch or "user_means" not in ctx.two_hop_cache:
        return item_batch
    rows = item_batch["hop_rows"]  # (N,)
    hop = item_batch["hop_table"][rows]  # (N, E)
    t = len(users)
    degree = (ctx.item_user_indptr[rows[:t] + 1] - ctx.item_user_indptr[rows[:t]]).float()
    own = ctx.two_hop_cache["user_means"][users]  # (T, E)
    left = (degree[:, None] * hop[:t] - own) / (degree - 1).clamp(min=1)[:, None]  # (T, E)
    left = torch.where((degree > 1)[:, None], left, torch.zeros_like(left))
    batch = {k: v for k, v in item_batch.items() if k not in ("hop_table", "hop_rows")}
    return {**batch, "hop": torch.cat([left, hop[t:]])}  # (N, E)
