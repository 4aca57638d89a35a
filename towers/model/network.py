"""The two-tower model: a user tower and an item tower that map ids and features into one space.

Read top to bottom: the item tower, the user tower (its history pooled, or read in order by the
sequence encoder of ``towers/model/sequence.py``), the optional rating head, and ``TwoTower``
which joins them; the layers they are built from (the MLP both towers end in, the feature
encoders) are in ``towers/model/layers.py``. Each module takes the one config dataclass
(``towers/model/config.py``), which every checkpoint stores so the model rebuilds from it alone.

``TwoTower.forward`` returns ``(user_emb, item_emb)`` already prepared for retrieval: when
``normalize`` is on, both are L2-normalised and the user side is divided by the temperature, so
``user_emb @ item_emb.T`` *is* the logit matrix in training and the score in serving (a plain
maximum-inner-product index needs no extra step). Losses live beside it in
``towers/model/losses.py``.

The defaults of :class:`TwoTowerConfig` and why (what helped, what did not, on which data) are
in ``towers/model/defaults.py``'s notes and docs/QUALITY.md.

Batches are dicts of tensors built by ``towers.training.inputs.TrainingContext``:

- user batch: ``user_idx (B,)``, the user features ``feat:<name>``, ``history_items (H,)``,
  ``history_offsets (B,)``, ``history_weights (H,)`` (``1/n`` per kept item, so the bag is a
  mean; 0 for removed items), ``profile:<name> (B, V)`` (mean multi-hot of an item feature),
  ``history_rating_weights (H,)`` (centred rating / bag size) and ``history_mean_rating (B,)``
  (ratings scaled to [0, 1]); with the sequence tower ``sequence_items (B, L)`` (the newest
  items in order, left-padded with ``n_items``) and, in training, ``sequence_slots (T,)``.
- item batch: ``item_idx (N,)``, ``item_id_row (N,)`` (``n_items`` for items never trained),
  the item features ``feat:<name>`` (``feat:<name>:offsets`` for bags) and, with
  ``item_two_hop``, the item's neighbourhood in the user-item graph (``hop_*``: the bags of
  ``towers.training.two_hop``, or a training step's cached table and rows).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from towers.model.config import TwoTowerConfig
from towers.model.layers import FeatureEncoders, drop_ids, feature_key, mlp, weighted_bags
from towers.model.sequence import SequenceEncoder

# Config fields a built model can take new values of (TwoTower.reconfigure): no weight's shape
# depends on them.
RECONFIGURABLE = (
    "temperature",
    "normalize",
    "ranking_loss",
    "unobserved_weight",
    "lr",
    "embedding_init_scale",
    "rating_weight",
)

__all__ = ["ItemTower", "RatingHead", "TwoTower", "UserTower", "weighted_bags"]


class ItemTower(nn.Module):
    """Item id + the schema's item features (genres, year, ...) → MLP → ``(N, D)``."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = 0
        if config.use_item_id:
            sparse = config.sparse_embeddings  # catalog-sized: sparse gradients when asked
            # Row n_items is "unknown item": items with no training pairs (and items added after
            # training) use it, zero at start, so their embedding comes from their features.
            self.item_id = nn.Embedding(config.n_items + 1, config.id_dim, sparse=sparse)
            with torch.no_grad():
                self.item_id.weight[config.n_items].zero_()
            in_dim += config.id_dim
            if config.item_two_hop and config.two_hop_mix == "gated":  # row + gate * two-hop
                self.hop_gate = nn.Parameter(torch.ones(config.id_dim))
            elif config.item_two_hop:  # the two-hop mean beside the row
                in_dim += config.id_dim
        self.features = None
        if config.use_features and config.item_inputs:
            self.features = FeatureEncoders(config.item_inputs, config.feature_dim)
            in_dim += self.features.out_dim
        if in_dim == 0:
            raise ValueError("ItemTower: enable the item id or give the items features")
        hidden = config.hidden_dims if config.item_hidden_dims is None else config.item_hidden_dims
        self.mlp = mlp(in_dim, hidden, config.embedding_dim, config.dropout)

    def forward(self, item_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        cfg = self.config
        if cfg.use_item_id:
            rows = item_batch["item_id_row"]  # (N,)
            if self.training:
                rows = drop_ids(rows, cfg.item_id_dropout, cfg.n_items)
            parts.append(self.item_id(rows))  # (N, E)
            if cfg.item_two_hop and cfg.two_hop_mix == "gated":
                parts[-1] = parts[-1] + self.hop_gate * self.two_hop(item_batch)  # (N, E)
            elif cfg.item_two_hop:
                parts.append(self.two_hop(item_batch))  # (N, E)
        if self.features is not None:
            parts += self.features(item_batch)  # per feature (N, F)
        return self.mlp(torch.cat(parts, dim=-1))  # (N, D)

    def two_hop(self, item_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, E)`` each item's two-hop neighbourhood (``towers/training/two_hop.py``):
        from its exact bags, from the rows of a training step's cached table (``hop_table``),
        or zeros for items embedded without one. An input, not a path for gradients: the
        tower's gate (or map, ``two_hop_mix="concat"``) learns how much of it to use (a gradient
        through sampled paths cost 2.5x a step and gained nothing on Gowalla, docs/QUALITY.md)."""
        if "hop" in item_batch:  # given (towers.training.two_hop.leave_out_own_users)
            return item_batch["hop"]  # (N, E)
        if "hop_table" in item_batch:  # rows of the cached table
            return item_batch["hop_table"][item_batch["hop_rows"]]  # (N, E)
        table = self.item_id.weight.detach()  # an input, the same in training and serving
        if "hop_user_items" not in item_batch:
            return table.new_zeros(len(item_batch["item_id_row"]), table.shape[1])
        b = item_batch
        users = weighted_bags(
            b["hop_user_items"], table, b["hop_user_offsets"], b["hop_user_weights"]
        )
        # (U, E) each user's mean item row; then (B, E) one row a bag, the mean of its users'
        items = weighted_bags(
            b["hop_item_users"], users, b["hop_item_offsets"], b["hop_item_weights"]
        )
        return items[item_batch["hop_rows"]] if "hop_rows" in item_batch else items  # (N, E)


class UserTower(nn.Module):
    """User id + the schema's user features + pooled training history (+ profiles of the
    history's item features) → MLP → ``(B, D)``."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = 0
        sparse = config.sparse_embeddings  # user- and catalog-sized: sparse gradients when asked
        if config.use_user_id:
            # Row n_users is "unknown user": cold-start users and train-time id dropout use it.
            self.user_id = nn.Embedding(config.n_users + 1, config.id_dim, sparse=sparse)
            in_dim += config.id_dim
        self.features = None
        if config.use_features and config.user_inputs:
            self.features = FeatureEncoders(config.user_inputs, config.feature_dim)
            in_dim += self.features.out_dim
        self.sequence = None
        if config.sequential:
            # The history as a sequence, not pools: the bags below would show a training slot
            # the items after it (towers/model/sequence.py).
            self.sequence = SequenceEncoder(config)
            in_dim += config.id_dim
        elif config.use_history:
            # Own table (not the item tower's): "what I watched" and "what I am" are different
            # roles, as in YouTube-DNN. Mode "sum" with weights that sum to 1 per bag is a mean.
            # With share_history_embeddings the bag reads the item tower's id table instead.
            if not config.share_history_embeddings:
                self.history = nn.EmbeddingBag(
                    config.n_items, config.id_dim, mode="sum", sparse=sparse
                )
            in_dim += config.id_dim
        if config.recent_history > 0 and not config.sequential:
            self.recent_history = nn.EmbeddingBag(
                config.n_items, config.id_dim, mode="sum", sparse=sparse
            )
            in_dim += config.id_dim
        self.profiles = nn.ModuleDict()
        if config.use_profiles and config.use_features and not config.sequential:
            # A bias-free map of the mean multi-hot: the mean of per-value embeddings.
            for name, width in config.item_profiles:
                profile = nn.Linear(max(width, 1), config.feature_dim, bias=False)
                self.profiles[feature_key(name)] = profile
                in_dim += config.feature_dim
        if config.use_rating_history and not config.sequential:
            # Like SVD++'s implicit factors but signed: items rated above the user's own mean
            # pull one way, below it the other. Plus the mean rating itself (1 column).
            self.rated_history = nn.EmbeddingBag(
                config.n_items, config.id_dim, mode="sum", sparse=sparse
            )
            in_dim += config.id_dim + 1
        if in_dim == 0:
            raise ValueError("UserTower: enable at least one of user id, features, history")
        self.mlp = mlp(in_dim, config.hidden_dims, config.embedding_dim, config.dropout)

    def forward(
        self, user_batch: dict[str, torch.Tensor], item_table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``item_table``: the item tower's id embeddings, which the history bag (with
        ``share_history_embeddings``) and the sequence read.

        With the sequence tower, ``user_batch["sequence_items"] (B, L)`` is each row's items and
        the output is one user vector per row, read at its newest slot, or with
        ``sequence_slots (T,)`` (flat indices ``row * L + slot``) one per listed slot: ``(T, D)``.
        """
        cfg = self.config
        parts = []
        rows = None  # the row of each output, where outputs are slots of sequences
        if self.sequence is not None:
            assert item_table is not None
            items = user_batch["sequence_items"]  # (B, L)
            states = self.sequence(items, item_table).flatten(0, 1)  # (B * L, E)
            length = items.shape[1]
            slots = user_batch.get("sequence_slots")
            if slots is None:  # the newest slot of each row
                slots = torch.arange(len(items), device=items.device) * length + length - 1
            parts.append(states[slots])  # (T, E)
            rows = slots // length  # (T,)
        if cfg.use_user_id:
            user_idx = user_batch["user_idx"]  # (B,)
            if self.training:
                user_idx = drop_ids(user_idx, cfg.user_id_dropout, cfg.n_users)
            parts.append(self.user_id(user_idx))  # (B, E)
        if self.features is not None:
            parts += self.features(user_batch)  # per feature (B, F)
        if rows is not None:  # a row's id and features beside each of its slots
            parts[1:] = [part[rows] for part in parts[1:]]  # (T, ...)
            return self.mlp(torch.cat(parts, dim=-1))  # (T, D)
        if cfg.use_history:
            bag = (user_batch["history_items"], user_batch["history_offsets"])  # (H,), (B,)
            weights = user_batch["history_weights"]  # (H,)
            if cfg.share_history_embeddings:
                assert item_table is not None
                pooled = F.embedding_bag(
                    bag[0],
                    item_table,
                    bag[1],
                    mode="sum",
                    per_sample_weights=weights,
                    sparse=cfg.sparse_embeddings,
                )  # (B, E)
            else:
                pooled = self.history(*bag, per_sample_weights=weights)  # (B, E)
            parts.append(pooled)
        if cfg.recent_history > 0:
            recent = self.recent_history(
                user_batch["recent_items"],  # (R,)
                user_batch["recent_offsets"],  # (B,)
                per_sample_weights=user_batch["recent_weights"],  # (R,)
            )  # (B, E)
            parts.append(recent)
        for name, _ in cfg.item_profiles if len(self.profiles) else ():
            parts.append(self.profiles[feature_key(name)](user_batch[f"profile:{name}"]))  # (B, F)
        if cfg.use_rating_history:
            rated = self.rated_history(
                user_batch["history_items"],  # (H,)
                user_batch["history_offsets"],  # (B,)
                per_sample_weights=user_batch["history_rating_weights"],  # (H,)
            )  # (B, E)
            mean_rating = user_batch["history_mean_rating"][:, None] - 0.5  # (B, 1)
            if self.training and cfg.rating_history_dropout > 0:
                # Some rows lose their ratings, as a cold-start user's liked items have none.
                keep = torch.rand_like(mean_rating) >= cfg.rating_history_dropout  # (B, 1)
                rated, mean_rating = rated * keep, mean_rating * keep
            parts += [rated, mean_rating]  # (B, E), (B, 1)
        return self.mlp(torch.cat(parts, dim=-1))  # (B, D)


class RatingHead(nn.Module):
    """Predicts the rating scaled to [0, 1]: global + user + item biases + MLP(u, i, u*i)."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        d = config.embedding_dim
        self.global_bias = nn.Parameter(torch.tensor(0.6))  # ML ratings average ~3.5/5
        sparse = config.sparse_embeddings
        self.user_bias = nn.Embedding(config.n_users + 1, 1, sparse=sparse)  # + "unknown user"
        self.item_bias = nn.Embedding(config.n_items + 1, 1, sparse=sparse)  # + "unknown item"
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.mlp = mlp(3 * d, (config.rating_hidden,), 1, config.dropout)

    def forward(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat([user_emb, item_emb, user_emb * item_emb], dim=-1)  # (B, 3D)
        item_row = item_idx.clamp(max=self.item_bias.num_embeddings - 1)  # new items: unknown
        bias = self.global_bias + self.user_bias(user_idx)[:, 0] + self.item_bias(item_row)[:, 0]
        return bias + self.mlp(x)[:, 0]  # (B,)


class TwoTower(nn.Module):
    """User tower + item tower (+ rating head for the hybrid loss)."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        if config.n_users <= 0 or config.n_items <= 0:
            raise ValueError("TwoTower: config has no data sizes; call config.sized_for(features)")
        self.config = config
        self.user_tower = UserTower(config)
        self.item_tower = ItemTower(config)
        # log(1/T); a buffer when fixed so that checkpoints carry it either way.
        log_inv_temp = torch.tensor(math.log(1.0 / config.temperature))
        if config.learn_temperature:
            self.log_inv_temperature = nn.Parameter(log_inv_temp)
        else:
            self.register_buffer("log_inv_temperature", log_inv_temp)
        self.rating_head = RatingHead(config) if config.has_rating_head else None
        self.scale_embeddings(config.embedding_init_scale)
        self.item_bias = None
        if config.item_bias:  # + "unknown item": 0, and kept there (padding_idx: no gradient),
            # so items never trained, drawn as negatives, do not teach later items a pull
            self.item_bias = nn.Embedding(
                config.n_items + 1, 1, sparse=config.sparse_embeddings, padding_idx=config.n_items
            )
            nn.init.zeros_(self.item_bias.weight)

    def scale_embeddings(self, factor: float) -> None:
        """Multiplies every embedding table built so far by ``factor`` (rows at 0 stay 0):
        ``embedding_init_scale`` at construction, and the validation search when a candidate
        starts from the same draws at another scale."""
        if factor == 1.0:
            return
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                    module.weight.mul_(factor)

    def reconfigure(self, config: TwoTowerConfig) -> None:
        """Takes ``config``, which may differ from the one built only in :data:`RECONFIGURABLE`
        settings, those no weight's shape depends on (what the validation search sets before
        training: ``towers/training/selection.py``). The weights are left as they are."""
        names = [f.name for f in dataclasses.fields(config) if f.name not in RECONFIGURABLE]
        differ = [n for n in names if getattr(config, n) != getattr(self.config, n)]
        if differ:
            raise ValueError(f"TwoTower.reconfigure: {differ} cannot change, only {RECONFIGURABLE}")
        self.config = config
        with torch.no_grad():
            self.log_inv_temperature.fill_(math.log(1.0 / config.temperature))

    @property
    def inv_temperature(self) -> torch.Tensor:
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    def user_embeddings(self, user_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` retrieval embeddings of a user batch (normalised and divided by T if on)."""
        shared = None
        if self.config.share_history_embeddings or self.config.sequential:
            shared = self.item_tower.item_id.weight
        user_emb = self.user_tower(user_batch, shared)  # (B, D)
        if self.config.normalize:
            user_emb = F.normalize(user_emb, dim=-1) * self.inv_temperature
        if self.item_bias is not None:  # the coordinate that reads each item's bias
            user_emb = torch.cat([user_emb, user_emb.new_ones(len(user_emb), 1)], dim=-1)
        return user_emb

    def item_embeddings(self, item_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(N, D)`` retrieval embeddings of an item batch (pass all items for full scoring)."""
        item_emb = self.item_tower(item_batch)  # (N, D)
        if self.config.normalize:
            item_emb = F.normalize(item_emb, dim=-1)
        if self.item_bias is not None:
            bias = self.item_bias(item_batch["item_id_row"])  # (N, 1)
            item_emb = torch.cat([item_emb, bias.to(item_emb.dtype)], dim=-1)  # (N, D + 1)
        return item_emb

    def forward(
        self, user_batch: dict[str, torch.Tensor], item_batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(user_emb (B, D), item_emb (N, D))``; ``user_emb @ item_emb.T`` are logits."""
        return self.user_embeddings(user_batch), self.item_embeddings(item_batch)

    def predict_rating(
        self,
        user_emb: torch.Tensor,
        item_emb: torch.Tensor,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
    ) -> torch.Tensor:
        """Rating scaled to [0, 1] for ``B`` aligned pairs of ``(B, D)`` embeddings → ``(B,)``.

        Hybrid models use the rating head; others read ``sigmoid(<u, i>)`` (the pointwise target).
        """
        if self.rating_head is None:
            return torch.sigmoid((user_emb * item_emb).sum(-1))
        if self.item_bias is not None:  # the head reads the towers' own D coordinates
            user_emb, item_emb = user_emb[:, :-1], item_emb[:, :-1]
        if self.config.normalize:
            user_emb = user_emb / self.inv_temperature  # back to unit length, like item_emb
        # Unknown users (index n_users) share the "unknown" bias row.
        return self.rating_head(user_emb, item_emb, user_idx, item_idx)
