"""The config, both towers and ``TwoTower``: shapes, dtypes, normalisation, history pooling."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.features import random_features
from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import PRESETS, TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext

# Tiny tensors: one intra-op thread (tests/conftest.py) avoids spin-waiting on 2 busy cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_USERS, N_ITEMS, N_GENRES = 12, 20, 5


def make_features(seed: int = 0) -> FeatureTables:
    return random_features(N_USERS, N_ITEMS, seed)


def make_train(seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS - 1):  # the last user has no history
        chosen = rng.choice(N_ITEMS, 5, replace=False)
        users += [u] * 5
        items += chosen.tolist()
    n = len(users)
    return Interactions(
        np.array(users), np.array(items), rng.integers(1, 6, n).astype(np.float32),
        np.arange(n), N_USERS, N_ITEMS,
    )  # fmt: skip


def build(preset: str = "default", **overrides) -> tuple[TwoTower, TrainingContext]:
    torch.manual_seed(0)
    features = make_features()
    config = TwoTowerConfig.from_preset(preset, **overrides).sized_for(features)
    return TwoTower(config), TrainingContext.build(features, make_train(), config)


def test_config_json_round_trip() -> None:
    config = TwoTowerConfig.from_preset("default").sized_for(make_features())
    again = TwoTowerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert isinstance(again.hidden_dims, tuple) and isinstance(again.user_inputs, tuple)


def test_stored_configs_keep_what_they_ran_with() -> None:
    """A config stored before ``item_bias`` existed ran without it; today's default is on."""
    stored = TwoTowerConfig().to_dict()
    assert stored["item_bias"] is True
    assert TwoTowerConfig.from_stored(stored) == TwoTowerConfig()
    del stored["item_bias"]
    assert TwoTowerConfig.from_stored(stored).item_bias is False
    assert TwoTowerConfig.from_preset("paper").item_bias is False  # the paper's plain dot product


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        TwoTowerConfig.from_preset("nope")
    with pytest.raises(ValueError, match="unknown keys"):
        TwoTowerConfig.from_dict({"embeding_dim": 3})
    with pytest.raises(ValueError, match="loss"):
        TwoTowerConfig(loss="bpr")
    with pytest.raises(ValueError, match="temperature"):
        TwoTowerConfig(temperature=0.0)
    with pytest.raises(ValueError, match="sized_for"):
        TwoTower(TwoTowerConfig())


def test_auto_negatives_and_sparse_tables_follow_the_catalog_size() -> None:
    from towers.model.config import FULL_SOFTMAX_MAX_ITEMS, USER_FULL_MAX_ITEMS

    unsized = TwoTowerConfig()
    assert (unsized.negatives, unsized.sparse_embeddings) == ("auto", None)  # not known yet
    small = TwoTowerConfig(n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS)
    assert (small.negatives, small.sparse_embeddings) == ("user_full", False)  # ML-100K's
    large = replace(small, n_items=FULL_SOFTMAX_MAX_ITEMS + 1, negatives="auto")
    assert (large.negatives, large.sparse_embeddings) == ("user_full", False)
    paper = TwoTowerConfig.from_preset("paper", n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS)
    assert paper.negatives == "full"  # observed pairs only: no rows to build
    # A full softmax touches every item row each step: dense tables; above row_negatives items
    # user_full draws its negatives, and a step touches few rows: sparse tables.
    exact = TwoTowerConfig(n_users=10, n_items=4_000, row_negatives=4_000)
    assert (exact.negatives, exact.sparse_embeddings) == ("user_full", False)
    large = TwoTowerConfig(n_users=10, n_items=USER_FULL_MAX_ITEMS)
    assert (large.negatives, large.sparse_embeddings) == ("user_full", True)
    huge = TwoTowerConfig(n_users=10, n_items=USER_FULL_MAX_ITEMS + 1)
    assert (huge.negatives, huge.sparse_embeddings) == ("mixed", True)
    decayed = TwoTowerConfig(n_users=10, n_items=USER_FULL_MAX_ITEMS + 1, weight_decay=1e-4)
    assert (decayed.negatives, decayed.sparse_embeddings) == ("mixed", False)  # AdamW: dense
    chosen = TwoTowerConfig(n_users=10, n_items=60_000, negatives="full", sparse_embeddings=False)
    assert (chosen.negatives, chosen.sparse_embeddings) == ("full", False)  # a choice is kept
    with pytest.raises(ValueError, match="history_folds"):
        TwoTowerConfig(history_folds=1)
    # What a stored config says is what ran, and it loads back the same.
    assert TwoTowerConfig.from_dict(json.loads(json.dumps(large.to_dict()))) == large
    assert TwoTowerConfig.from_preset("default").sized_for(make_features()).negatives == "user_full"


def test_presets() -> None:
    paper = TwoTowerConfig.from_preset("paper")
    assert paper.loss == "pointwise" and not paper.use_history and not paper.normalize
    assert paper.lr == 1e-3 and not paper.has_rating_head
    default = TwoTowerConfig.from_preset("default", embedding_dim=8)
    assert default.embedding_dim == 8 and default.use_history
    assert set(PRESETS) >= {"paper", "default"}


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_forward_shapes_and_dtypes(preset: str) -> None:
    model, ctx = build(preset, embedding_dim=8, id_dim=6, feature_dim=3, hidden_dims=(10,))
    model.eval()
    users = torch.tensor([0, 3, N_USERS - 1])
    user_emb, item_emb = model(ctx.user_batch(users), ctx.item_batch())
    dim = 8 + (preset == "default")  # the default's item-bias coordinate
    assert user_emb.shape == (3, dim) and item_emb.shape == (N_ITEMS, dim)
    assert user_emb.dtype == item_emb.dtype == torch.float32
    assert torch.isfinite(user_emb).all() and torch.isfinite(item_emb).all()
    some_items = model.item_embeddings(ctx.item_batch(torch.tensor([4, 2])))
    torch.testing.assert_close(some_items, item_emb[[4, 2]])


def test_normalised_embeddings_carry_the_temperature() -> None:
    model, ctx = build(temperature=0.1, embedding_dim=8, item_bias=False)
    model.eval()
    user_emb, item_emb = model(ctx.user_batch(torch.arange(4)), ctx.item_batch())
    torch.testing.assert_close(item_emb.norm(dim=-1), torch.ones(N_ITEMS))
    torch.testing.assert_close(user_emb.norm(dim=-1), torch.full((4,), 10.0))


def test_item_bias_is_one_more_coordinate_of_the_served_vectors() -> None:
    """``item_bias``: the served score is cos / T + b_i, so an inner-product index ranks by it."""
    model, ctx = build(temperature=0.1, embedding_dim=8, item_bias=True)
    plain, _ = build(temperature=0.1, embedding_dim=8, item_bias=False)
    assert model.config.retrieval_dim == 9 and plain.config.retrieval_dim == 8
    with torch.no_grad():
        model.item_bias.weight[:N_ITEMS].normal_()
    model.eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "item_bias.weight"})
    plain.eval()
    users = torch.tensor([0, 3, N_USERS - 1])
    user_emb, item_emb = model(ctx.user_batch(users), ctx.item_batch())  # (3, 9), (N, 9)
    cos_user, cos_item = plain(ctx.user_batch(users), ctx.item_batch())  # (3, 8), (N, 8)
    rows = ctx.item_batch()["item_id_row"]  # (N,) items never trained share "unknown"
    assert (rows == N_ITEMS).any() and (rows < N_ITEMS).any()
    bias = model.item_bias.weight[rows, 0]  # (N,)
    torch.testing.assert_close(user_emb @ item_emb.T, cos_user @ cos_item.T + bias)
    assert user_emb.shape == (3, 9) and torch.all(user_emb[:, -1] == 1)
    torch.testing.assert_close(model.item_bias.weight[N_ITEMS], torch.zeros(1))  # unknown item
    # The rating head reads the towers' own D coordinates, not the bias.
    hybrid, hctx = build(embedding_dim=8, item_bias=True, loss="hybrid")
    hybrid.eval()
    u, i = hybrid(hctx.user_batch(torch.tensor([0, 1])), hctx.item_batch(torch.tensor([2, 5])))
    rating = hybrid.predict_rating(u, i, torch.tensor([0, 1]), torch.tensor([2, 5]))
    assert rating.shape == (2,) and torch.isfinite(rating).all()


@pytest.mark.parametrize("sparse", [False, True])
def test_the_unknown_items_bias_stays_zero_through_training(sparse: bool) -> None:
    """Items never trained share the "unknown" row; drawn as negatives they would push its bias
    down and every item added later would inherit that. The row gets no gradient."""
    from towers.training.steps import make_optimizer

    model, ctx = build(embedding_dim=8, item_bias=True, sparse_embeddings=sparse)
    rows = ctx.item_batch()["item_id_row"]
    assert (rows == N_ITEMS).any()
    optimizer = make_optimizer(model, model.config)
    for _ in range(3):  # every item scored as a negative of every user
        optimizer.zero_grad()
        user_emb, item_emb = model(ctx.user_batch(torch.arange(4)), ctx.item_batch())
        torch.logsumexp(user_emb @ item_emb.T, dim=1).sum().backward()
        optimizer.step()
    assert torch.all(model.item_bias.weight[N_ITEMS] == 0)
    assert model.item_bias.weight[rows[rows < N_ITEMS], 0].abs().min() > 0  # the others learn


def test_learned_temperature_is_a_parameter() -> None:
    learned, _ = build(learn_temperature=True)
    fixed, _ = build(learn_temperature=False)
    assert "log_inv_temperature" in dict(learned.named_parameters())
    assert "log_inv_temperature" not in dict(fixed.named_parameters())
    assert "log_inv_temperature" in fixed.state_dict()  # checkpoints carry it either way


def test_rating_head_only_for_hybrid() -> None:
    hybrid, ctx = build(loss="hybrid")
    softmax, _ = build(loss="softmax")
    assert hybrid.rating_head is not None and softmax.rating_head is None
    hybrid.eval()
    users, items = torch.tensor([0, 1]), torch.tensor([5, 6])
    user_emb = hybrid.user_embeddings(ctx.user_batch(users))
    item_emb = hybrid.item_embeddings(ctx.item_batch(items))
    assert hybrid.predict_rating(user_emb, item_emb, users, items).shape == (2,)


def test_history_pool_excludes_the_target_item() -> None:
    model, ctx = build(history_dropout=0.0, share_history_embeddings=False)  # its own table
    user = 0
    history = ctx.history_items[ctx.history_indptr[user] : ctx.history_indptr[user + 1]]
    target = history[2]
    batch = ctx.user_batch(torch.tensor([user]), exclude_items=torch.tensor([target]))
    weights = batch["history_weights"]
    assert weights[batch["history_items"] == target].sum() == 0
    others = batch["history_items"] != target
    torch.testing.assert_close(weights[others], torch.full((int(others.sum()),), 0.25))
    # The pooled vector is exactly the mean of the *other* items' history embeddings.
    pooled = model.user_tower.history(
        batch["history_items"], batch["history_offsets"], per_sample_weights=weights
    )
    expected = model.user_tower.history.weight[history[history != target]].mean(0)
    torch.testing.assert_close(pooled[0], expected)
    # ... and the target's rating does not enter the mean rating either.
    ratings = ctx.history_ratings[ctx.history_indptr[user] : ctx.history_indptr[user + 1]]
    assert batch["history_mean_rating"][0].item() == pytest.approx(
        ratings[history != target].mean().item()
    )


def test_history_dropout_keeps_bags_normalised() -> None:
    _, ctx = build()
    torch.manual_seed(1)
    batch = ctx.user_batch(torch.arange(N_USERS - 1), history_dropout=0.5)
    sums = torch.zeros(N_USERS - 1).index_add(0, batch["history_rows"], batch["history_weights"])
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))


def test_max_history_samples_long_histories_but_masks_every_positive() -> None:
    _, ctx = build()
    users = torch.arange(N_USERS - 1).repeat(400)  # each user 400 times, 5 history items each
    torch.manual_seed(2)
    batch = ctx.user_batch(users, max_history=2)
    kept = torch.bincount(batch["history_rows"], minlength=len(users)).float()
    assert kept.max().item() == 2  # a row's cost is max_history draws, however long its history
    sums = torch.zeros(len(users)).index_add(0, batch["history_rows"], batch["history_weights"])
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))  # still a mean per row
    # Every history item is equally likely to be drawn: an unbiased sample of the mean.
    counts = torch.bincount(batch["history_items"], minlength=N_ITEMS).float()
    full = torch.bincount(ctx.history_items, minlength=N_ITEMS).float() * 400
    rate = counts[full > 0] / full[full > 0]
    assert rate.min() > 0.3 and rate.max() < 0.5  # each kept ~2/5 of the time
    # The loss still sees the whole history (all positives masked), not the sample.
    assert len(batch["positive_items"]) == 5 * len(users)
    assert torch.equal(torch.bincount(batch["positive_rows"]), torch.full((len(users),), 5))


def test_recent_history_pools_the_newest_items_without_the_target() -> None:
    model, ctx = build(recent_history=2)
    train = make_train()  # timestamps grow with the row: a user's last rows are the newest
    newest = train.item_idx[train.user_idx == 0][-2:]  # (2,)
    batch = ctx.user_batch(torch.tensor([0, 0]), exclude_items=torch.tensor([99, newest[1]]))
    split = int(batch["recent_offsets"][1])  # row 0's bag, then row 1's
    first, second = batch["recent_items"][:split], batch["recent_items"][split:]
    assert sorted(first.tolist()) == sorted(newest.tolist())
    assert second.tolist() == [newest[0]]  # the target left out
    assert torch.allclose(batch["recent_weights"], torch.tensor([0.5, 0.5, 1.0]))
    cold = ctx.cold_user_batch(None, [4, 5, 6])
    assert cold["recent_items"].tolist() == [5, 6]  # the last liked items are the recent ones
    model.eval()
    assert model.user_embeddings(batch).shape == (2, model.config.retrieval_dim)


def test_user_without_history_and_cold_start() -> None:
    model, ctx = build()
    model.eval()
    empty = ctx.user_batch(torch.tensor([N_USERS - 1]))
    assert empty["history_items"].numel() == 0
    features = make_features().encode_user({"age": 40, "gender": "M", "occupation": "y"})
    cold = ctx.cold_user_batch(features, [4, 5])
    assert cold["user_idx"].tolist() == [N_USERS]  # the "unknown user" row
    # Ratings unknown: the rating-centred pool is empty and the mean sits mid-scale (input 0),
    # as for training rows hidden by rating_history_dropout.
    assert torch.all(cold["history_rating_weights"] == 0)
    assert cold["history_mean_rating"].tolist() == [0.5]
    for batch in (empty, cold):
        assert torch.isfinite(model.user_embeddings(batch)).all()


def test_eval_mode_is_deterministic_and_train_mode_drops_ids() -> None:
    model, ctx = build(use_user_id=True, user_id_dropout=0.5)
    batch = ctx.user_batch(torch.arange(8))
    model.eval()
    torch.testing.assert_close(model.user_embeddings(batch), model.user_embeddings(batch))
    model.train()
    torch.manual_seed(0)
    first = model.user_embeddings(batch)
    assert not torch.allclose(first, model.user_embeddings(batch))


def test_shared_history_embeddings_read_the_item_id_table() -> None:
    """With ``share_history_embeddings`` the user's history bag is a mean of the item tower's
    id rows: no table of its own, and a history item's id row gets the user side's gradient."""
    model, ctx = build(share_history_embeddings=True, dropout=0.0, history_dropout=0.0)
    assert not hasattr(model.user_tower, "history")
    batch = ctx.user_batch(torch.tensor([0, 1]))
    model.user_embeddings(batch).sum().backward()
    grad = model.item_tower.item_id.weight.grad
    used = torch.unique(batch["history_items"])
    assert grad is not None and bool((grad[used].abs().sum(1) > 0).all())
    unused = torch.ones(len(grad), dtype=torch.bool)
    unused[used] = False
    assert float(grad[unused].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="share_history_embeddings needs"):
        TwoTowerConfig(share_history_embeddings=True, use_item_id=False)


def test_towers_are_the_wide_ones_unless_chosen() -> None:
    """Wide linear towers over the item table at every catalog size (the sequence tower's
    share on a next-item split); a value given explicitly is kept."""
    from towers.model.config import FULL_SOFTMAX_MAX_ITEMS, WIDE_TOWERS

    unsized = TwoTowerConfig()
    assert unsized.embedding_dim is None and unsized.lr is None  # not known yet
    for n_items in (FULL_SOFTMAX_MAX_ITEMS, FULL_SOFTMAX_MAX_ITEMS + 1):
        sized = TwoTowerConfig(n_users=10, n_items=n_items)
        assert {k: getattr(sized, k) for k in WIDE_TOWERS} == WIDE_TOWERS
    chosen = TwoTowerConfig(n_users=10, n_items=50_000, lr=1e-3, hidden_dims=(32,))
    assert (chosen.lr, chosen.hidden_dims, chosen.embedding_dim) == (1e-3, (32,), 256)
    no_history = TwoTowerConfig(n_users=10, n_items=50_000, use_history=False)
    assert no_history.share_history_embeddings is False  # nothing to share
    assert TwoTowerConfig.from_dict(json.loads(json.dumps(sized.to_dict()))) == sized
    model = TwoTower(TwoTowerConfig.from_preset("default").sized_for(make_features()))
    assert model.config.hidden_dims == () and model.config.embedding_dim == 256


def test_the_temperature_is_searched_where_the_scores_are_cosines() -> None:
    """temperature=None: TEMPERATURES tried on validation (the first built first) where the
    pooled towers score cosines with a softmax; a given temperature, the paper's pointwise loss,
    a learned temperature and the sequence tower keep one value and search nothing."""
    from towers.model.config import TEMPERATURE, TEMPERATURES

    assert TwoTowerConfig().temperature is None  # not known yet
    sized = dict(n_users=10, n_items=100)
    default = TwoTowerConfig(**sized)
    assert default.temperature_candidates == TEMPERATURES and len(TEMPERATURES) > 1
    assert default.temperature == TEMPERATURES[0]
    for fixed in (
        TwoTowerConfig(**sized, temperature=0.1),
        TwoTowerConfig(**sized, learn_temperature=True),
        TwoTowerConfig(**sized, normalize=False),
        TwoTowerConfig.from_preset("paper", **sized),
        TwoTowerConfig(**sized, next_item=True),  # the sequence tower
    ):
        assert fixed.temperature_candidates == ()
        assert fixed.temperature == (fixed.temperature if fixed.temperature == 0.1 else TEMPERATURE)
    mine = TwoTowerConfig(**sized, temperature_candidates=[0.3, 0.05])
    assert (mine.temperature_candidates, mine.temperature) == ((0.3, 0.05), 0.3)
    with pytest.raises(ValueError, match="temperature_candidates"):
        TwoTowerConfig(temperature_candidates=(0.1, 0.0))


def test_epochs_follow_the_training_pairs_for_the_wide_towers() -> None:
    """epochs=None: about WIDE_TRAIN_PAIRS pairs or TARGETS_PER_ITEM targets an item, whichever
    takes more (4 to 20 epochs), 20 while the pairs are unknown; a given value is kept."""
    from towers.model.config import (
        FULL_SOFTMAX_MAX_ITEMS,
        MAX_EPOCHS,
        MIN_WIDE_EPOCHS,
        TARGETS_PER_ITEM,
        WIDE_TRAIN_PAIRS,
    )

    assert TwoTowerConfig().epochs is None  # not known yet
    wide = dict(n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS + 1)
    small = dict(n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS)
    assert TwoTowerConfig(**small, n_train=80_000).epochs == 12  # ML-100K's: by the pairs
    assert TwoTowerConfig(**wide, n_train=WIDE_TRAIN_PAIRS // 7).epochs == 7
    assert MIN_WIDE_EPOCHS == 4  # every item a target at least four times
    assert TwoTowerConfig(**wide, n_train=WIDE_TRAIN_PAIRS // 3).epochs == 4  # by the pairs: 3
    assert TwoTowerConfig(**wide, n_train=10 * WIDE_TRAIN_PAIRS).epochs == 4
    assert TwoTowerConfig(**wide, n_train=1_000).epochs == MAX_EPOCHS  # at most 20
    assert TwoTowerConfig(**wide).epochs == MAX_EPOCHS
    assert TwoTowerConfig(**wide, n_train=1_000, epochs=3).epochs == 3
    # By the items: each a target ~TARGETS_PER_ITEM times (Gowalla's train part: 6 epochs, not
    # the pairs' 1; Amazon Beauty's: 8, not 7)
    assert TARGETS_PER_ITEM == 100
    assert TwoTowerConfig(n_users=10, n_items=40_981, n_train=729_097).epochs == 6
    assert TwoTowerConfig(n_users=10, n_items=12_101, n_train=142_475).epochs == 8
    assert TwoTowerConfig(n_users=10, n_items=3_706, n_train=800_000).epochs == 4  # the floor
    sized = TwoTowerConfig().sized_for(random_features(20, 3_000, 0), n_train=WIDE_TRAIN_PAIRS // 4)
    assert (sized.n_train, sized.epochs) == (WIDE_TRAIN_PAIRS // 4, 4)


def test_history_decay_follows_the_time_order_unless_chosen() -> None:
    from towers.model.config import FULL_SOFTMAX_MAX_ITEMS, HISTORY_DECAY

    assert TwoTowerConfig().history_decay is None  # not known yet
    wide = dict(n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS + 1)
    timed = TwoTowerConfig(**wide, time_ordered=True)
    assert (timed.time_ordered, timed.history_decay) == (True, HISTORY_DECAY)
    assert TwoTowerConfig(**wide).history_decay == 1.0  # held-out parts not the latest
    chosen = TwoTowerConfig(**wide, history_decay=0.5, time_ordered=True)
    assert chosen.history_decay == 0.5
    # Causal folds go with the decay: time-ordered data, unless chosen.
    assert (timed.causal_folds, TwoTowerConfig(**wide).causal_folds) == (True, False)
    # At any catalog size (ML-100K's temporal validation NDCG@10 0.1691 against the deep
    # towers' 0.1133).
    small = dict(n_users=10, n_items=FULL_SOFTMAX_MAX_ITEMS)
    small_timed = TwoTowerConfig(**small, time_ordered=True)
    assert (small_timed.history_decay, small_timed.causal_folds) == (HISTORY_DECAY, True)
    assert (small_timed.negatives, small_timed.embedding_dim, small_timed.hidden_dims) == (
        "user_full", 256, (),
    )  # fmt: skip
    assert small_timed.sparse_embeddings is False  # every item a negative: no sparse rows
    small_random = TwoTowerConfig(**small)  # the held-out parts a random draw: no decay
    assert (small_random.history_decay, small_random.causal_folds) == (1.0, False)
    assert TwoTowerConfig(**wide, time_ordered=True, causal_folds=False).causal_folds is False
    sized = TwoTowerConfig().sized_for(make_features(), time_ordered=True)
    assert sized.time_ordered is True
