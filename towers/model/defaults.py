"""How the training defaults are chosen from the data: every rule in one place.

A :class:`~towers.model.config.TwoTowerConfig` field left ``None`` (or ``"auto"``) is resolved
here once the config is sized for a data set (``TwoTowerConfig.for_data``), from the facts of
the data the config carries: catalog size, training pairs, whether the held-out parts are each
user's latest interactions (``time_ordered``) or each user's next one (``next_item``), explicit
or implicit feedback. The resolved values are stored with the model, so a checkpoint says what
ran (STYLE rule 12: no per-data-set presets, nothing chosen on a test part). The comments give
the evidence in a line; docs/QUALITY.md summarises each rule, docs/QUALITY_LOG.md has the runs.
"""

from __future__ import annotations

from typing import Any

# negatives="auto": the full softmax of user rows ("user_full", towers/training/folds.py) up to
# USER_FULL_MAX_ITEMS, mixed negatives above, whose step cost does not grow with the catalog.
# sparse_embeddings=None: sparse tables and LazyAdam above FULL_SOFTMAX_MAX_ITEMS items where a
# step samples its negatives (below it a step touches most rows: the crossover measured by
# bench/bench_loss.py on 2 cores, docs/BENCHMARKS.md).
FULL_SOFTMAX_MAX_ITEMS = 2_500
USER_FULL_MAX_ITEMS = 100_000
# history_decay=None where the held-out parts are each user's latest interactions (a temporal
# split; PreparedData.time_ordered): the k-th newest item weighs 0.8^k in the history pool. On
# Amazon Beauty's temporal validation part, NDCG@10 after 3 epochs: 0.0416 at 1.0, 0.0469 at 0.8
# (an EASE model scored with the same decayed histories: 0.0543 -> 0.0621; 0.6: 0.0603). Under
# ML-100K's random split it costs (epoch 1: 0.1153 vs 0.1432): resolved from the time order.
HISTORY_DECAY = 0.8
# epochs=None: the more of two counts, MIN_WIDE_EPOCHS to MAX_EPOCHS: as many as make about
# WIDE_TRAIN_PAIRS training pairs (the shared maps' steps: Amazon Beauty's 143k pairs flatten
# after a few hundred thousand pairs' worth) and as many as make each item a target about
# TARGETS_PER_ITEM times (its own row's updates; an epoch makes it n_train / n_items times).
# Beauty (12 an epoch) flattens from its fifth epoch of seven (~60-80 targets an item); Gowalla
# (730k pairs, 41k items: 18 an epoch, 1 epoch by the pairs) still climbs at its sixth (~107 an
# item), and its test values all rise from 4 epochs to 6 (docs/QUALITY.md). Beauty gets 8
# epochs, Gowalla 6, ML-100K's random split (68k pairs) 15.
WIDE_TRAIN_PAIRS = 1_000_000
TARGETS_PER_ITEM = 100
MIN_WIDE_EPOCHS = 4
MAX_EPOCHS = 20
# The towers (docs/QUALITY.md has the runs). The user is the mean of their items' own embeddings
# (the item tower's table, as in YouTube-DNN and SimpleX), both towers end in one linear map,
# nothing is dropped, the space is 256-d, and Adam steps at 3e-2: the model must hold many
# specific item-item relations, and capacity and faster table updates mattered more than
# regularisation. Each item also reads its two-hop neighbourhood (item_two_hop: the mean over its
# users of their mean item row, LightGCN's second layer): an item with ~10-30 interactions learns
# little from its own row, its co-occurring items say more. Validation NDCG@10 with it: Gowalla
# after a 2-epoch cosine 0.0866 -> 0.0967 (0.0969 gated), Amazon Beauty 0.0648 -> 0.0680. On a
# time-ordered split the user rows train in causal folds with the decay (ML-100K temporal:
# 0.1691 against deep ReLU towers' 0.1133). Deep towers (two 256-wide ReLU layers with dropout
# over a 64-d pool, tuned on ML-100K's random split) were the rule for small catalogs under a
# random split until the temperature was chosen on validation: there the wide towers reach
# 0.1828 at 0.2 and 0.1738 at 0.12 with the softmax (the deep ones 0.1760; test NDCG@10
# 0.4676 against 0.4520) in 0.41x the training time (80 s against 193 s), 0.1863 with the
# squared loss below.
WIDE_TOWERS: dict[str, Any] = dict(
    embedding_dim=256,
    id_dim=256,
    hidden_dims=(),
    dropout=0.0,
    share_history_embeddings=True,
    history_dropout=0.0,
    item_two_hop=True,
    lr=3e-2,
)
# temperature=None: the softmax temperature of the cosine scores is chosen on the validation part
# (towers/training/selection.py): each of TEMPERATURES trains the run's first SELECT_EPOCHS
# epochs, from the same initial weights, and the best validation NDCG@10 goes on (the others cost
# SELECT_EPOCHS epochs each). No single value suits every data set. Validation NDCG@10 at
# 0.07 / 0.12 / 0.2 after the run's first 2 epochs (its pick), and the whole run's best
# (docs/QUALITY.md):
#   ML-100K random: 0.1531 / 0.1628 / 0.1587, best 0.1629 / 0.1738 / 0.1828 (the squared loss
#     below: 0.1710 after 2 epochs; after the 4 of select_epochs 0.1624 / 0.1700 / 0.1714 and
#     0.1791, chosen)
#   Yelp temporal: 0.0247 / 0.0270 / 0.0242 (0.12), best 0.0261 / 0.0292 / 0.0276
#   Amazon Beauty temporal: 0.0617 / 0.0578 / 0.0462 (0.07); Gowalla 0.1017 / 0.0915 / 0.0664
#   (0.07); ML-100K temporal 0.1684 / 0.1670 / 0.1588 (0.07; after its 3 of select_epochs
#   0.1702 / 0.1726 / 0.1707, 0.12).
# Searched where the scores are cosines of pooled towers (normalize, a softmax loss, a fixed
# temperature; not the sequence tower, not screened); TEMPERATURE elsewhere.
TEMPERATURE = 0.07
TEMPERATURES = (0.07, 0.12, 0.2)
# select_epochs=None: each candidate trains the run's first SELECT_EPOCHS epochs, or more on a
# small set, as many as make about SELECT_PAIRS training pairs (Beauty's and Yelp's 2 epochs are
# 285k and 437k pairs; ML-100K's 2 are 135k, and there the order after 2 epochs moved with the
# seed: the squared loss below led by 0.0082 at seed 0 and trailed 0.12 by 0.0006 at seed 1,
# whose run then kept the softmax, test NDCG@10 0.4375. After 3 epochs it led at seeds 1 and 2 by
# 0.0048 and 0.0098, after 4 by 0.0107 at seed 1). ML-100K gets 4 (random split) or 3
# (temporal), the larger sets 2; more than 2 only up to half the run's epochs.
SELECT_EPOCHS = 2
SELECT_PAIRS = 250_000
# ranking_loss=None: where every user row is scored against the whole catalog (the pooled
# towers' user_full rows, n_items <= row_negatives), the search also tries the weighted squared
# error over the catalog (iALS's and EASE's objective) as one more candidate, with the settings
# it trains with: plain dot products (a cosine caps an item's norm, which carries its
# popularity: EASE's item factors' norms correlate 0.96 with log popularity on ML-100K, and
# normalising them costs its rank-64 form 0.484 -> 0.430 test NDCG@10), tables starting at
# 0.01x PyTorch's N(0, 1) draws (at 1x its dot products start huge: 0.18 after 20 epochs in a
# linear prototype against 0.50 at 0.01), Adam 3e-3 (1e-2: level), unseen items at weight 0.1
# (0.05 / 0.3: -0.6% / -2.5% validation) and the rating MSE at weight 1 (30 pulls the towers
# to ratings: validation NDCG@10 0.1818 against 0.1859). ML-100K random, validation NDCG@10
# (`bench.quality --no-refit`): 0.1869 against the softmax's 0.1834 at 0.2; after the
# candidates' 4 epochs 0.1791 against 0.1714 (0.2), so it is chosen (test NDCG@10 0.4969 against
# EASE's 0.4829); ML-100K temporal: 0.1670 against 0.1726 (0.12 goes on). docs/QUALITY.md.
SQUARED_LOSS: dict[str, Any] = dict(
    ranking_loss="squared",
    normalize=False,
    embedding_init_scale=0.01,
    lr=3e-3,
    unobserved_weight=0.1,
    rating_weight=1.0,
)
RANKING_LOSSES = ("softmax", "squared")
# The sequence user tower (sequence_model="attention", towers/model/sequence.py): the user's
# sequence_length most recent items, in order, through a small causal self-attention stack,
# trained on every prefix of each training sequence (each slot predicts the next item). None: on
# where the held-out part is each user's next item (the leave-one-out split:
# PreparedData.next_item), the towers above elsewhere. The wide towers' item side, tables and
# step (3e-2); the attention stack its own step (sequence_lr 1e-3: at 1e-2 for everything Amazon
# Beauty's validation NDCG@10 stalled at 0.012, at 1e-3 for everything it crawled, 0.012 after
# 4 epochs; tables at 3e-2 and the stack at 1e-3: 0.041 at 64-d, 0.059 at 256-d;
# docs/QUALITY.md, "Amazon Beauty, leave-one-out").
SEQUENCE_MODELS = ("none", "attention")
SEQUENCE_TOWERS: dict[str, Any] = {**WIDE_TOWERS, "sequence_lr": 1e-3}


def is_sequential(sequence_model: str | None) -> bool:
    """The user tower reads the history as a sequence."""
    return sequence_model not in (None, "none")


def squared_loss_runs(values: dict[str, Any]) -> bool:
    """The squared loss can train a resolved config (its fields by name): pooled towers whose
    user rows are scored against the whole catalog."""
    exact = values["negatives"] == "user_full" and values["n_items"] <= values["row_negatives"]
    return exact and values["loss"] != "pointwise" and not is_sequential(values["sequence_model"])


def resolve_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """What the data-dependent ``None``/``"auto"`` fields of a sized config (its fields by
    name, ``n_items > 0``) stand for: only the fields that change, each resolved once here."""
    v = dict(config)
    if v["sequence_model"] is None:
        sequence = "attention" if v["next_item"] and v["loss"] != "pointwise" else "none"
        v["sequence_model"] = sequence
    sequential = is_sequential(v["sequence_model"])
    time_ordered = bool(v["time_ordered"])
    if v["history_decay"] is None:
        v["history_decay"] = HISTORY_DECAY if time_ordered else 1.0
    if v["causal_folds"] is None:
        v["causal_folds"] = time_ordered
    if v["epochs"] is None:
        epochs = MAX_EPOCHS
        if v["n_train"] > 0:
            by_pairs = round(WIDE_TRAIN_PAIRS / v["n_train"])
            by_items = round(TARGETS_PER_ITEM * v["n_items"] / v["n_train"])
            epochs = min(MAX_EPOCHS, max(MIN_WIDE_EPOCHS, by_pairs, by_items))
        v["epochs"] = epochs
    for name, value in (SEQUENCE_TOWERS if sequential else WIDE_TOWERS).items():
        if v[name] is None:
            if name == "share_history_embeddings":  # only where there is a shared table
                value = value and v["use_item_id"] and v["use_history"]
            if name == "item_two_hop":  # only where there is an item table
                value = value and v["use_item_id"]
            v[name] = value
    if v["negatives"] == "auto":
        if v["loss"] == "pointwise":
            negatives = "full"  # unused: the pointwise loss reads observed pairs only
        elif sequential:
            negatives = "user_full"  # rows of sequences, the catalog softmax or draws
        else:
            negatives = "user_full" if v["n_items"] <= USER_FULL_MAX_ITEMS else "mixed"
        v["negatives"] = negatives
    if v["temperature_candidates"] is None:
        cosine = v["normalize"] and not v["learn_temperature"] and v["loss"] != "pointwise"
        searched = cosine and not sequential and v["temperature"] is None
        v["temperature_candidates"] = TEMPERATURES if searched else ()
    if v["select_epochs"] is None:
        by_pairs = round(SELECT_PAIRS / v["n_train"]) if v["n_train"] > 0 else 0
        v["select_epochs"] = max(SELECT_EPOCHS, min(by_pairs, v["epochs"] // 2))
    if v["ranking_loss_candidates"] is None:
        searched = squared_loss_runs(v) and v["ranking_loss"] is None and not v["learn_temperature"]
        v["ranking_loss_candidates"] = RANKING_LOSSES if searched else ()
    if v["ranking_loss"] is None:  # the softmax until the search has chosen
        v["ranking_loss"] = "softmax"
    if v["temperature"] is None:  # the first candidate until the search has chosen
        candidates = v["temperature_candidates"]
        v["temperature"] = candidates[0] if candidates else TEMPERATURE
    if v["sparse_embeddings"] is None:
        # Sparse rows pay off when a step touches few of them; a full softmax touches all
        # (user_full samples its negatives above row_negatives items).
        sampled = v["negatives"] in ("mixed", "in_batch") or (
            v["negatives"] == "user_full" and v["n_items"] > v["row_negatives"]
        )
        large = v["n_items"] > FULL_SOFTMAX_MAX_ITEMS
        v["sparse_embeddings"] = large and sampled and v["weight_decay"] == 0
    return {k: value for k, value in v.items() if config[k] != value}
