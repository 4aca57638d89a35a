"""The two-tower model's configuration: one dataclass, stored in every checkpoint and export.

:class:`TwoTowerConfig` holds the data sizes (filled by ``sized_for``), the tower shapes, the loss
and the optimisation settings, each with a comment on its default; ``PRESETS`` names the two
settings the project reports (``default`` and ``paper``, the paper's own). What depends on the data
is resolved from it once the catalog size is known (``sized_for``) and stored: the negatives,
sparse tables, the towers' shape (``WIDE_TOWERS``, or ``SEQUENCE_TOWERS`` on a next-item split)
and the epochs; the temperature is chosen on the validation part before training
(``towers/training/selection.py``).
``towers.model.network`` builds the towers from it.

What was measured behind each rule is beside it in ``towers/model/defaults.py`` and, with the
runs, in docs/QUALITY.md. On ML-100K's random split, with the towers of the time (two ReLU
layers over a pair-wise softmax), neutral or worse: a learned temperature, unnormalised dot
products, weight decay, sum/sqrt(n) history pooling, a recent-items pool.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from towers.data.features import FeatureTables
from towers.model.checks import (  # noqa: F401 (named where they're read)
    LOSSES,
    LR_SCHEDULES,
    NEGATIVES,
    TWO_HOP_MIXES,
    check_fields,
    check_resolved,
)
from towers.model.defaults import (  # noqa: F401 (the rules' constants, named where they're read)
    FULL_SOFTMAX_MAX_ITEMS,
    HISTORY_DECAY,
    MAX_EPOCHS,
    MIN_WIDE_EPOCHS,
    RANKING_LOSSES,
    SEQUENCE_MODELS,
    SEQUENCE_TOWERS,
    SQUARED_LOSS,
    TARGETS_PER_ITEM,
    TEMPERATURE,
    TEMPERATURES,
    USER_FULL_MAX_ITEMS,
    WIDE_TOWERS,
    WIDE_TRAIN_PAIRS,
    is_sequential,
    resolve_defaults,
)


@dataclass(frozen=True)
class TwoTowerConfig:
    """Everything needed to build, train and rebuild a :class:`TwoTower` (JSON-serialisable)."""

    # --- Data sizes: filled from the data by `sized_for`, stored so a checkpoint rebuilds alone.
    n_users: int = 0  # user vocabulary size; the tower adds one "unknown user" row for cold start
    n_items: int = 0  # item vocabulary size; the tower adds one "unknown item" row
    # (name, input kind, size) per schema feature: "index" (embedding rows), "bag" (pooled
    # embedding rows), "dense" (input width); from towers.data.features.EncodedTable.inputs.
    user_inputs: tuple[tuple[str, str, int], ...] = ()
    item_inputs: tuple[tuple[str, str, int], ...] = ()
    item_profiles: tuple[tuple[str, int], ...] = ()  # item features pooled over the history
    has_ratings: bool = True  # explicit ratings; False (implicit data) drops rating losses/inputs
    n_train: int = 0  # training pairs (sized_for), for the epoch budget of epochs=None
    # --- Towers.
    # "| None" fields: WIDE_TOWERS or SEQUENCE_TOWERS by the split, once known.
    embedding_dim: int | None = None  # D: output width of both towers, the retrieval space
    id_dim: int | None = None  # width of the user-id, item-id and history embeddings
    feature_dim: int = 16  # width of each demographic / genre / year embedding
    hidden_dims: tuple[int, ...] | None = None  # dense ReLU layers of each tower before the output
    item_hidden_dims: tuple[int, ...] | None = None  # the item tower's, when not hidden_dims
    dropout: float | None = None  # dropout after every hidden layer
    use_user_id: bool = False  # a per-user id embedding: it overfits ML-100K, history suffices
    use_item_id: bool = True  # a per-item id embedding (items never trained share "unknown")
    item_id_dropout: float = 0.0  # train-time chance an item id becomes "unknown": the tower then
    # learns to embed from features alone, as it must for items added after training
    user_id_dropout: float = 0.1  # train-time chance an id becomes "unknown" (with use_user_id)
    use_features: bool = True  # the schema's user and item features (demographics, genres, ...)
    use_history: bool = True  # mean of the user's training items' embeddings (off in the paper)
    share_history_embeddings: bool | None = None  # history bags read the item tower's id table
    # (co-occurring items pulled together, more signal per item on sparse data) instead of their own
    history_dropout: float | None = None  # train-time chance a history item leaves the pool
    max_history: int = 64  # > 0: training pools a random ~max_history of a user's items (speed)
    recent_history: int = 0  # > 0: also pool the user's N most recent items (own table)
    item_two_hop: bool | None = None  # the item tower also reads the item's two-hop
    # neighbourhood, the mean over its training users of their mean item-table row (LightGCN's
    # second layer), as an input without gradient; None: on with the wide towers
    two_hop_refreshes: int = 10  # training recomputes the neighbourhoods this often an epoch
    two_hop_mix: str = "gated"  # how the item tower reads it: added to the item's row through a
    # learned per-dimension gate, or "concat": beside it, the map twice as wide (Gowalla: 0.85x
    # the step, validation NDCG@10 after 2 epochs 0.0969 vs 0.0967, docs/QUALITY.md)
    two_hop_leave_out: bool = False  # a target's neighbourhood without its own user (lost: Gowalla)
    two_hop_debias: float = 0.5  # a user's mean in it weighs item j by deg_j ** -x (LightGCN's
    # symmetric normalisation: 0.5; 0: the plain mean; Gowalla, Beauty: docs/QUALITY.md)
    causal_folds: bool | None = None  # user_full on time-ordered data: a row pools only the items
    # before its target fold (its first fold: those after), decayed from the fold; None: on where
    # history_decay is (time-ordered data, wide towers)
    history_decay: float | None = None  # < 1: the history bag weighs the user's k-th newest
    # item by decay^k (recent interests count more; the paper's future work); 1: the plain mean;
    # None: HISTORY_DECAY with the wide towers where the held-out parts are the latest
    # (time_ordered), else 1
    time_ordered: bool = False  # held-out parts are each user's latest interactions (sized_for)
    next_item: bool = False  # the held-out part is each user's next interaction (leave-one-out)
    # --- The sequence user tower (towers/model/sequence.py).
    sequence_model: str | None = None  # "attention": the user tower reads the user's most recent
    # items in order through a causal self-attention stack (it replaces the history pools);
    # "none": the pooled towers; None: "attention" where next_item, else "none"
    sequence_length: int = 50  # the most recent items it reads (memory per user is fixed)
    sequence_layers: int = 2  # self-attention blocks (SASRec's 2)
    sequence_heads: int = 1  # attention heads per block
    sequence_dropout: float = 0.2  # dropout in the blocks and on their input
    sequence_lr: float | None = None  # the attention stack's own peak Adam rate (the tables
    # step at lr); None: lr
    use_profiles: bool = True  # mean of the history's small-vocabulary item features (genres)
    use_rating_history: bool = True  # history pooled by centred rating (+ mean rating): tastes
    rating_history_dropout: float = 0.1  # train-time chance a row's ratings are hidden (cold start)
    normalize: bool = True  # L2-normalise both towers (cosine); logits are cos / temperature
    temperature: float | None = None  # softmax temperature for normalised embeddings (initial
    # if learned); None: chosen on validation among temperature_candidates before training
    # (towers/training/selection.py), TEMPERATURE (0.07) where there is no search
    temperature_candidates: tuple[float, ...] | None = None  # what the search tries, in order
    # (the first is built first); (): no search; None: TEMPERATURES where the scores are cosines
    # of pooled towers (towers/model/defaults.py)
    select_epochs: int | None = None  # the epochs each candidate of the search trains (None:
    # SELECT_EPOCHS, or about SELECT_PAIRS pairs' worth on a small set: towers/model/defaults.py)
    learn_temperature: bool = False  # learn the temperature (as log 1/T, clamped at 1/T <= 100)
    item_bias: bool = True  # a learned per-item term added to the logit (cos / T + b_i): what
    # cosine scores cannot say (an item's pull on everyone); served as one more coordinate (the
    # user side's is 1), so a maximum-inner-product index ranks by it unchanged. Validation
    # NDCG@10 with it: Gowalla 0.0844 -> 0.0882 (3-epoch cosine), ML-100K random 0.1737 ->
    # 0.1760, Amazon Beauty (with history_folds 10, 7-epoch cosine) 0.0593 -> 0.0644
    embedding_init_scale: float = 1.0  # every embedding table starts at PyTorch's N(0, 1)
    # draws times this (the squared loss's dot products start near 0 at 0.01)
    # --- Loss (towers/model/losses.py).
    ranking_loss: str | None = None  # what the towers' scores are trained with, beside the
    # rating MSE of "hybrid": "softmax" (see negatives) or "squared": the weighted squared
    # error of each user row's scores over the whole catalog (iALS's and EASE's objective:
    # targets towards 1, unseen items towards 0 at unobserved_weight; needs user rows over the
    # whole catalog: pooled towers, negatives "user_full", n_items <= row_negatives); None:
    # chosen on validation among ranking_loss_candidates, "softmax" where there is no search
    ranking_loss_candidates: tuple[str, ...] | None = None  # the losses the search tries; (): no
    # search; None: both where the squared loss can run (towers/model/defaults.py)
    unobserved_weight: float = 0.1  # squared: the weight of an item the row has not seen
    loss: str = "hybrid"  # "pointwise" (paper BCE), "softmax" (retrieval), "hybrid" (softmax+MSE)
    negatives: str = "auto"  # "full": every catalog item; "in_batch": the batch's other items;
    # "mixed": the batch's items plus `sampled_negatives` drawn uniformly (Yang et al. 2020);
    # "user_full": the full softmax over user rows (towers/training/folds.py);
    # "auto": full with the deep towers (ML-100K), user_full with the wide ones up to
    # USER_FULL_MAX_ITEMS, mixed above
    sampled_negatives: int = 1024  # mixed: catalog items drawn per step, shared by the batch
    logq_correction: bool = True  # in-batch, mixed: subtract log of each candidate's inclusion
    mask_train_positives: bool = True  # full only: the user's other training items aren't negatives
    history_folds: int = 10  # user_full: an epoch splits each user's items into up to this many
    # folds, one row per fold (a user with fewer items: one row per item, leave-one-out). A row
    # pools the other folds, so more folds train on histories closer to the whole one the model
    # is asked with, at about the same step cost (the softmax's cost is per target). 5 -> 10:
    # Gowalla validation NDCG@10 0.0882 -> 0.0911 (with item_bias, 3-epoch cosine)
    row_negatives: int = 4096  # user_full: the whole catalog up to this many items; above, this
    # many uniform draws per step, shared by the batch (the catalog sum rescaled by n_items / M)
    row_batch_negatives: bool = False  # user_full with drawn negatives: the batch's targets
    # (drawn by popularity: the hard negatives a uniform draw rarely holds) join the draws, each
    # candidate's term divided by its expected count. Off: Gowalla's test Recall@20 / NDCG@20
    # stayed 0.1526 / 0.1253 (0.1527 / 0.1259 without), Beauty's validation 0.0593 -> 0.0594
    rating_weight: float = 30.0  # hybrid: weight of the rating MSE (ratings scaled to [0, 1])
    rating_hidden: int = 64  # hybrid: hidden width of the rating head MLP
    # --- Optimisation (towers/training/).
    lr: float | None = None  # peak Adam learning rate (the paper uses 1e-3, constant)
    weight_decay: float = 0.0  # decoupled weight decay; > 0 switches Adam to AdamW
    # Catalog- and user-sized tables with sparse gradients and LazyAdam: a step's cost then no
    # longer grows with the catalog (with negatives="mixed"; docs/SCALE.md). None: on above
    # FULL_SOFTMAX_MAX_ITEMS items unless weight_decay > 0 (AdamW has no lazy form here).
    sparse_embeddings: bool | None = None
    lr_schedule: str = "cosine"  # "cosine": per-step decay to 0 over `epochs`; "constant"
    batch_size: int = 1024  # training pairs per optimizer step, over all DDP workers together
    epochs: int | None = None  # maximum epochs, also the cosine schedule's length (None: by size)
    patience: int = 10  # early stopping: epochs without validation improvement
    min_improvement: float = 0.005  # an epoch beats the best only by more than this share of it:
    # the refit stops at the earliest epoch within it of the best (docs/QUALITY.md)
    early_stopping_metric: str = "ndcg@10"  # validation metric to maximise ("rmse": minimise)
    validation_users: int = 10_000  # each epoch's validation ranks a fixed sample of at most
    # this many validation users (0: all; the catalog-wide ranking was ~20% of a Gowalla epoch)
    bf16: bool = False  # bf16 autocast on CUDA; ignored on CPU
    seed: int = 0  # parameter init and batch order

    def __post_init__(self) -> None:
        check_fields(self)
        self._resolve_auto()
        check_resolved(self)

    def _resolve_auto(self) -> None:
        """Once the catalog size is known (``n_items > 0``), ``negatives="auto"``,
        ``sparse_embeddings=None`` and the towers' None fields become what they stand for
        (``towers.model.defaults``), so a stored config says what ran."""
        if self.n_items <= 0:
            return
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in resolve_defaults(values).items():
            object.__setattr__(self, name, value)

    @property
    def sequential(self) -> bool:
        """The user tower reads the history as a sequence (``sequence_model`` "attention")."""
        return is_sequential(self.sequence_model)

    @property
    def has_rating_head(self) -> bool:
        return self.loss == "hybrid"

    @property
    def retrieval_dim(self) -> int:
        """Width of the served user and item vectors: D, plus the item-bias coordinate."""
        return int(self.embedding_dim or 0) + int(self.item_bias)

    def sized_for(
        self,
        features: FeatureTables,
        has_ratings: bool | None = None,
        time_ordered: bool | None = None,
        n_train: int | None = None,
        next_item: bool | None = None,
    ) -> TwoTowerConfig:
        """Returns a copy with the data sizes and feature inputs taken from ``features``.

        On implicit data (``has_ratings=False``; None keeps ``self.has_ratings``) the rating parts
        go: the hybrid loss becomes its softmax half and the rating-pooled history is off. The
        pointwise loss needs ratings. ``time_ordered`` (None keeps ``self.time_ordered``): the
        held-out parts are each user's latest interactions (``PreparedData.time_ordered``).
        ``n_train`` (None keeps ``self.n_train``): the training pairs, for ``epochs=None``.
        ``next_item`` (None keeps ``self.next_item``): the held-out part is each user's next
        interaction (``PreparedData.next_item``), for ``sequence_model=None``.
        """
        implicit: dict[str, Any] = {}
        if next_item is not None:
            implicit["next_item"] = bool(next_item)
        if n_train is not None:
            implicit["n_train"] = int(n_train)
        if time_ordered is not None:
            implicit["time_ordered"] = bool(time_ordered)
        if has_ratings is False or (has_ratings is None and not self.has_ratings):
            loss = "softmax" if self.loss == "hybrid" else self.loss
            implicit.update(has_ratings=False, loss=loss, use_rating_history=False)
        return replace(
            self,
            n_users=features.n_users,
            n_items=features.n_items,
            user_inputs=features.users.inputs(),
            item_inputs=features.items.inputs(),
            item_profiles=features.item_profiles(),
            **implicit,
        )

    def for_data(self, data: Any) -> TwoTowerConfig:
        """:meth:`sized_for` a prepared split (``towers.data.prepared.PreparedData``): every
        fact about the data that a default is resolved from, read in one place."""
        return self.sized_for(
            data.features,
            data.has_ratings,
            data.time_ordered,
            n_train=len(data.train),
            next_item=data.next_item,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TwoTowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TwoTowerConfig: unknown keys {unknown}")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: dict[str, Any]) -> TwoTowerConfig:
        """The config a checkpoint or model export stored: fields added since such a model could
        have been written take the value it ran with (:data:`STORED_BEFORE`), not today's."""
        return cls.from_dict({**STORED_BEFORE, **values})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TwoTowerConfig:
        """``PRESETS[name]`` over the defaults, then ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Fields added after models were first stored, and what a stored config without them ran with.
STORED_BEFORE: dict[str, Any] = {
    "item_bias": False, "item_two_hop": False, "two_hop_mix": "concat", "two_hop_debias": 0.0,
    "sequence_model": "none", "temperature_candidates": (), "ranking_loss": "softmax",
    "ranking_loss_candidates": (), "select_epochs": 2,
}  # fmt: skip

# Overrides of the dataclass defaults. "paper": the paper's weak setting (pointwise BCE on observed
# pairs only, small ReLU towers, constant Adam 1e-3, ids and features but no history). "default":
# the dataclass defaults, resolved from the data (towers/model/defaults.py).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        loss="pointwise",
        embedding_dim=32,
        id_dim=32,
        feature_dim=8,
        hidden_dims=(64,),
        dropout=0.0,
        use_user_id=True,
        user_id_dropout=0.0,
        use_history=False,
        history_dropout=0.0,
        item_two_hop=False,
        use_profiles=False,
        use_rating_history=False,
        rating_history_dropout=0.0,
        normalize=False,
        item_bias=False,
        mask_train_positives=False,
        lr=1e-3,
        weight_decay=0.0,
        lr_schedule="constant",
        batch_size=256,
        epochs=30,
        patience=5,
    ),
    "default": {},
}
