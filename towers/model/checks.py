"""What a :class:`~towers.model.config.TwoTowerConfig` must satisfy: its checks, each with a
message that names the field and what it takes. ``TwoTowerConfig.__post_init__`` runs
:func:`check_fields` on the fields as given, resolves the data's defaults
(``towers.model.defaults``), then runs :func:`check_resolved`. Both also turn JSON's lists back
into tuples, so a config read from a checkpoint compares equal to the one written.
"""

from __future__ import annotations

from typing import Any

from towers.model.defaults import RANKING_LOSSES, SEQUENCE_MODELS, squared_loss_runs

# The checks take the config (towers.model.config imports them: no import back, no cycle).
TwoTowerConfig = Any

LOSSES = ("pointwise", "softmax", "hybrid")
NEGATIVES = ("auto", "full", "user_full", "in_batch", "mixed")
LR_SCHEDULES = ("cosine", "constant")
TWO_HOP_MIXES = ("concat", "gated")


def ranking_losses(config: TwoTowerConfig) -> tuple[str, ...]:
    """The ranking losses a config names: its own and its search's."""
    losses = (config.ranking_loss,) if config.ranking_loss is not None else ()
    return losses + (config.ranking_loss_candidates or ())


def check_fields(config: TwoTowerConfig) -> None:
    """The checks that need no data: before the defaults are resolved."""
    if config.loss not in LOSSES:
        raise ValueError(f"TwoTowerConfig.loss must be one of {LOSSES}, got {config.loss!r}")
    if config.ranking_loss_candidates is not None:
        object.__setattr__(config, "ranking_loss_candidates", tuple(config.ranking_loss_candidates))
        if config.ranking_loss_candidates[:1] not in ((), ("softmax",)):
            raise ValueError(
                "TwoTowerConfig.ranking_loss_candidates must start with 'softmax' (the "
                f"model as built is the search's first candidate), got {ranking_losses(config)}"
            )
    if any(loss not in RANKING_LOSSES for loss in ranking_losses(config)):
        raise ValueError(
            f"TwoTowerConfig.ranking_loss and ranking_loss_candidates take {RANKING_LOSSES}, "
            f"got {ranking_losses(config)}"
        )
    if config.unobserved_weight <= 0 or config.embedding_init_scale <= 0:
        raise ValueError("TwoTowerConfig: unobserved_weight and embedding_init_scale must be > 0")
    if config.select_epochs is not None and config.select_epochs < 1:
        raise ValueError(f"TwoTowerConfig.select_epochs must be >= 1, got {config.select_epochs}")
    if config.negatives not in NEGATIVES:
        raise ValueError(f"TwoTowerConfig.negatives must be one of {NEGATIVES}")


def check_resolved(config: TwoTowerConfig) -> None:
    """The checks of the resolved fields (the data's defaults filled in where it is sized)."""
    if config.sparse_embeddings and config.weight_decay > 0:
        raise ValueError("TwoTowerConfig: sparse_embeddings takes Adam, not AdamW's decay")
    if config.history_folds < 2:
        raise ValueError(f"TwoTowerConfig.history_folds must be >= 2, got {config.history_folds}")
    if config.sampled_negatives < 1:
        raise ValueError(
            f"TwoTowerConfig.sampled_negatives must be >= 1, got {config.sampled_negatives}"
        )
    if config.item_two_hop and not config.use_item_id:
        raise ValueError("TwoTowerConfig.item_two_hop reads the item table: needs use_item_id")
    if config.two_hop_mix not in TWO_HOP_MIXES or config.two_hop_debias < 0:
        raise ValueError(f"TwoTowerConfig: two_hop_mix in {TWO_HOP_MIXES}, two_hop_debias >= 0")
    if config.validation_users < 0 or config.min_improvement < 0:
        raise ValueError("TwoTowerConfig: validation_users and min_improvement must be >= 0")
    if config.two_hop_refreshes < 1:
        raise ValueError(
            f"TwoTowerConfig.two_hop_refreshes must be >= 1, got {config.two_hop_refreshes}"
        )
    if config.share_history_embeddings and not (config.use_item_id and config.use_history):
        raise ValueError("TwoTowerConfig.share_history_embeddings needs use_item_id and history")
    if config.sequence_model is not None and config.sequence_model not in SEQUENCE_MODELS:
        raise ValueError(f"TwoTowerConfig.sequence_model must be one of {SEQUENCE_MODELS}")
    if config.sequence_length < 1 or config.sequence_layers < 1 or config.sequence_heads < 1:
        raise ValueError("TwoTowerConfig: sequence_length, _layers and _heads must be >= 1")
    if config.sequential and not (config.use_item_id and config.use_history):
        raise ValueError("TwoTowerConfig.sequence_model reads the item table's rows of the "
                         "user's history: needs use_item_id and use_history")  # fmt: skip
    if config.sequential and config.id_dim is not None and config.id_dim % config.sequence_heads:
        raise ValueError(
            f"TwoTowerConfig: id_dim {config.id_dim} must divide into {config.sequence_heads} heads"
        )
    if config.sequential and config.negatives not in ("user_full", "auto"):
        raise ValueError(
            "TwoTowerConfig.sequence_model trains user rows (every prefix of a sequence): "
            f"negatives must be 'user_full' or 'auto', got {config.negatives!r}"
        )
    runs = squared_loss_runs(vars(config))
    if "squared" in ranking_losses(config) and config.n_items > 0 and not runs:
        raise ValueError(
            "TwoTowerConfig.ranking_loss 'squared' scores each user row against the whole "
            "catalog: it needs the pooled towers, negatives 'user_full', n_items <= "
            f"row_negatives and a loss other than 'pointwise'; here sequence_model "
            f"{config.sequence_model!r}, negatives {config.negatives!r}, {config.n_items:,} "
            f"items, row_negatives {config.row_negatives:,}, loss {config.loss!r}"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"TwoTowerConfig.lr_schedule must be one of {LR_SCHEDULES}")
    if config.history_decay is not None and not 0.0 < config.history_decay <= 1.0:
        raise ValueError(
            f"TwoTowerConfig.history_decay must be in (0, 1], got {config.history_decay}"
        )
    if config.temperature is not None and config.temperature <= 0:
        raise ValueError(f"TwoTowerConfig.temperature must be > 0, got {config.temperature}")
    if config.temperature_candidates is not None:
        candidates = tuple(float(t) for t in config.temperature_candidates)
        if any(t <= 0 for t in candidates):
            raise ValueError(f"TwoTowerConfig.temperature_candidates must be > 0, got {candidates}")
        object.__setattr__(config, "temperature_candidates", candidates)
    rates = ("dropout", "user_id_dropout", "item_id_dropout", "history_dropout")
    rates += ("sequence_dropout",)
    for name in (*rates, "rating_history_dropout"):
        rate = getattr(config, name)
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ValueError(f"TwoTowerConfig.{name} must be in [0, 1)")
    # JSON round trips turn tuples into lists; keep the dataclass hashable and comparable.
    if config.hidden_dims is not None:
        object.__setattr__(config, "hidden_dims", tuple(int(h) for h in config.hidden_dims))
    if config.item_hidden_dims is not None:
        item_hidden = tuple(int(h) for h in config.item_hidden_dims)
        object.__setattr__(config, "item_hidden_dims", item_hidden)
    for name in ("user_inputs", "item_inputs"):
        specs = tuple((str(n), str(k), int(s)) for n, k, s in getattr(config, name))
        object.__setattr__(config, name, specs)
    profiles = tuple((str(n), int(w)) for n, w in config.item_profiles)
    object.__setattr__(config, "item_profiles", profiles)
    if not config.has_ratings and config.loss != "softmax":
        raise ValueError(
            f"TwoTowerConfig.loss={config.loss!r} needs explicit ratings; this data set is "
            "implicit (no rating column): use loss='softmax'"
        )
