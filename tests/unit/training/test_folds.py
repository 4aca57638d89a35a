"""User rows of the ``user_full`` softmax: folds, batches, the row losses, and learning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.unit.training.test_training import SMALL, block_data, setup
from towers.model.config import TwoTowerConfig
from towers.model.losses import full_softmax, full_softmax_rows, sampled_softmax_rows
from towers.model.network import TwoTower
from towers.training.folds import fold_entries, fold_steps, fold_user_batch, make_fold_batches
from towers.training.inputs import TrainingContext
from towers.training.loop import fit
from towers.training.steps import batch_loss, validation_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return block_data()


def test_every_item_is_a_target_of_exactly_one_fold_per_epoch() -> None:
    lengths = torch.tensor([1, 3, 5, 12, 40])
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    for seed in (0, 1, 12345):
        for user, n in enumerate(lengths.tolist()):
            r = min(n, 5)
            hits = torch.zeros(n, dtype=torch.int64)
            sizes = []
            for f in range(r):
                pos, _, target = fold_entries(
                    indptr, torch.tensor([user]), torch.tensor([f]), torch.tensor([seed]), 5
                )
                hits += target.long()
                sizes.append(int(target.sum()))
            assert hits.tolist() == [1] * n  # each entry a target once, in one fold
            assert max(sizes) - min(sizes) <= 1  # balanced folds; n <= 5: one item per fold
    # A different seed draws different folds (40 items in 5 folds).
    one = fold_entries(indptr, torch.tensor([4]), torch.tensor([0]), torch.tensor([0]), 5)[2]
    two = fold_entries(indptr, torch.tensor([4]), torch.tensor([0]), torch.tensor([1]), 5)[2]
    assert not torch.equal(one, two)


def test_fold_batches_cover_every_pair_once_and_shard_evenly() -> None:
    lengths = np.array([0, 1, 2, 7, 30, 4, 9, 1])
    batches = make_fold_batches(lengths, 5, batch_size=8, seed=3, epoch=2)
    again = make_fold_batches(lengths, 5, 8, 3, 2)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again, strict=True) for k in a)
    rows = [
        (int(u), int(f)) for b in batches for u, f in zip(b["user_idx"], b["fold"], strict=True)
    ]
    expected = {(u, f) for u, n in enumerate(lengths) for f in range(min(n, 5))}
    assert sorted(rows) == sorted(expected)  # one row per (user, fold), none for user 0
    assert sum(int(b["pairs"]) for b in batches) == lengths.sum()  # each pair a target once
    assert len(batches) == fold_steps(lengths, 5, 8, 1)
    shards = [make_fold_batches(lengths, 5, 8, 3, 2, shard=(r, 2)) for r in range(2)]
    sizes = [sum(len(b["user_idx"]) for b in s) for s in shards]
    assert sizes[0] == sizes[1] == len(expected) // 2
    with pytest.raises(ValueError, match="shard rank"):
        make_fold_batches(lengths, 5, 8, 3, 2, shard=(2, 2))


def test_a_rows_history_is_the_other_folds(data) -> None:
    train, _, features = data
    _, ctx, _ = setup(data, negatives="user_full", history_folds=3)
    users = torch.tensor([0, 0, 0, 5])
    batch = {
        "user_idx": users,
        "fold": torch.tensor([0, 1, 2, 0]),
        "fold_seed": torch.full((4,), 7),
    }
    out = fold_user_batch(ctx, batch)
    csr = train.to_csr(binary=True)
    for row, user in enumerate(users.tolist()):
        targets = set(out["target_items"][out["target_rows"] == row].tolist())
        pooled = set(out["history_items"][out["history_rows"] == row].tolist())
        assert targets and not targets & pooled
        assert targets | pooled == set(csr[user].indices.tolist())
    every = [set(out["target_items"][out["target_rows"] == r].tolist()) for r in range(3)]
    assert set().union(*every) == set(csr[0].indices.tolist())  # user 0's folds: all its items
    capped = fold_user_batch(ctx, batch, max_history=2)
    assert torch.bincount(capped["history_rows"], minlength=4).max() <= 2
    assert torch.equal(capped["target_items"], out["target_items"])  # targets do not change


def test_row_softmax_equals_the_pairwise_full_softmax_with_positives_masked() -> None:
    torch.manual_seed(0)
    users, items = torch.randn(3, 4), torch.randn(9, 4)
    target_rows, target_items = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([1, 2, 0, 3, 4, 8])
    positive_rows = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    positive_items = torch.tensor([1, 2, 5, 0, 6, 3, 4, 8])
    rows_loss = full_softmax_rows(
        users, items, target_rows, target_items, positive_rows, positive_items
    )
    # One pair at a time, each excluding its row's other positives.
    per_pair = []
    for r, t in zip(target_rows.tolist(), target_items.tolist(), strict=True):
        cols = positive_items[positive_rows == r]
        per_pair.append(
            full_softmax(users[r : r + 1], items, torch.tensor([t]), torch.zeros_like(cols), cols)
        )
    assert rows_loss.item() == pytest.approx(torch.stack(per_pair).mean().item(), rel=1e-5)
    # Drawing the whole catalog once is the full softmax (the rescaling is then log 1 = 0).
    drawn = torch.arange(9)
    sampled = sampled_softmax_rows(
        users, target_rows, items[target_items], items, drawn, 9, positive_rows, positive_items
    )
    assert sampled.item() == pytest.approx(rows_loss.item(), rel=1e-5)
    # The catalog twice and three targets again, each term divided by its count: the same sum.
    twice_over = torch.cat([drawn, drawn, torch.tensor([1, 3, 3])])
    counts = torch.bincount(twice_over, minlength=9).float()
    counted = sampled_softmax_rows(
        users, target_rows, items[target_items], items[twice_over], twice_over, 9,
        positive_rows, positive_items, log_expected=counts[twice_over].log(),
    )  # fmt: skip
    assert counted.item() == pytest.approx(rows_loss.item(), rel=1e-5)
    weights = torch.tensor([2.0, 1, 1, 1, 1, 1])  # a weight-2 target counts twice
    twice = full_softmax_rows(
        users, items, target_rows[[0, 0, 1, 2, 3, 4, 5]], target_items[[0, 0, 1, 2, 3, 4, 5]],
        positive_rows, positive_items,
    )  # fmt: skip
    weighted = full_softmax_rows(
        users, items, target_rows, target_items, positive_rows, positive_items, weights
    )
    assert weighted.item() == pytest.approx(twice.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("row_negatives", "batch_negatives", "item_bias", "bar"),
    [(4096, False, False, 0.8), (64, False, False, 0.5), (64, True, False, 0.5),
     (64, False, True, 0.5)],
)  # fmt: skip
def test_fit_with_user_rows_learns_the_blocks(
    data, row_negatives, batch_negatives, item_bias, bar
) -> None:
    """Exact rows (the catalog fits) and sampled rows (64 draws of 200 items, a noisier
    estimate; with or without the batch's targets as negatives, with or without an item bias in
    the logit) all learn the blocks; random ranking reaches Recall@10 ~0.05."""
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=25, lr=5e-3, loss="softmax", negatives="user_full",
        row_negatives=row_negatives, row_batch_negatives=batch_negatives, item_bias=item_bias,
    )  # fmt: skip
    model, history = fit(config, train, None, features)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[0]["samples"] == len(train)  # every pair a target once per epoch
    ctx = TrainingContext.build(features, train, model.config)
    metrics = validation_metrics(model, ctx, train, test, k=10)
    assert metrics["recall@10"] > bar, metrics


@pytest.mark.parametrize("item_two_hop", [False, True])
def test_distinct_candidates_give_the_same_loss_and_gradients(
    data, item_two_hop, monkeypatch
) -> None:
    """Sampled rows put each distinct candidate through the item tower once: the loss and every
    gradient are those of one pass per candidate (64 draws of 80 items repeat many of them)."""
    from towers.training import steps
    from towers.training.steps import user_rows_loss
    from towers.training.two_hop import refresh_two_hop

    model, ctx, _ = setup(
        data, negatives="user_full", row_negatives=64, sparse_embeddings=True, dropout=0.0,
        item_two_hop=item_two_hop, item_bias=True,
    )  # fmt: skip
    distinct_counts = []

    class CountingTorch:  # torch as towers.training.steps sees it, noting its unique() calls
        def __getattr__(self, name):
            return getattr(torch, name)

        def unique(self, values, **kwargs):
            out = torch.unique(values, **kwargs)
            distinct_counts.append((len(out[0]), len(values)))
            return out

    monkeypatch.setattr(steps, "torch", CountingTorch())
    lengths = np.diff(ctx.history_indptr.numpy())
    batch = make_fold_batches(lengths, 5, 64, 0, 0)[0]
    if item_two_hop:
        refresh_two_hop(model, ctx, 0)
    results = []
    for distinct in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same draws
        loss = user_rows_loss(model, batch, ctx, distinct=distinct)
        loss.backward()
        grads = {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
    (loss_each, grads_each), (loss_once, grads_once) = results
    [(embedded, candidates)] = distinct_counts  # the second pass only, with repeats
    assert embedded < candidates
    assert loss_once == pytest.approx(loss_each, rel=1e-6)
    assert grads_once.keys() == grads_each.keys() and "item_tower.item_id.weight" in grads_once
    for name, grad in grads_each.items():
        # the same up to float sums taken in another order
        torch.testing.assert_close(grads_once[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_user_rows_hybrid_loss_is_finite(data) -> None:
    model, ctx, _ = setup(data, negatives="user_full", loss="hybrid")
    lengths = np.diff(ctx.history_indptr.numpy())
    batch = make_fold_batches(lengths, 5, 64, 0, 0)[0]
    loss = batch_loss(model, batch, ctx)
    loss.backward()
    assert torch.isfinite(loss) and model.rating_head.item_bias.weight.grad is not None


def test_history_decay_weighs_the_newest_items_most() -> None:
    """``history_decay=0.5``: the bag weighs a user's k-th newest item by 0.5^k (normalised)."""
    from tests.features import random_features
    from towers.data.interactions import Interactions

    user = np.array([0, 0, 0, 1, 1])
    item = np.array([3, 1, 2, 0, 4])
    time = np.array([10.0, 30.0, 20.0, 5.0, 1.0])  # user 0: newest 1, then 2, then 3
    train = Interactions(user, item, np.ones(5, np.float32), time, 2, 5)
    features = random_features(2, 5, 0)
    config = TwoTowerConfig.from_preset("default", **SMALL, history_decay=0.5).sized_for(features)
    ctx = TrainingContext.build(features, train, config)
    batch = ctx.user_batch(torch.tensor([0, 1]), positives=False)
    weights = dict(
        zip(batch["history_items"][batch["history_rows"] == 0].tolist(),
            batch["history_weights"][batch["history_rows"] == 0].tolist(), strict=True)
    )  # fmt: skip
    assert weights == pytest.approx({1: 4 / 7, 2: 2 / 7, 3: 1 / 7})
    # A cold-start user's liked items are in time order: the last one is the newest.
    cold = ctx.cold_user_batch(None, [3, 2, 1])
    assert cold["history_weights"].tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    plain = TrainingContext.build(features, train, replace_decay(config, 1.0))
    assert plain.user_batch(torch.tensor([0]))["history_weights"].tolist() == pytest.approx(
        [1 / 3] * 3
    )
    with pytest.raises(ValueError, match="history_decay"):
        replace_decay(config, 0.0)


def replace_decay(config: TwoTowerConfig, decay: float) -> TwoTowerConfig:
    return replace(config, history_decay=decay)


def test_a_known_users_history_in_time_order_embeds_as_the_user() -> None:
    """The fresh-answer path re-embeds a training user from their items: in time order (oldest
    first) with a decayed pool, that equals the user's own embedding."""
    from tests.features import random_features
    from towers.data.interactions import Interactions
    from towers.recommenders.two_tower import TwoTowerRecommender
    from towers.training.steps import embed_users

    user = np.array([0, 0, 0, 1, 1])
    item = np.array([3, 1, 2, 0, 4])
    time = np.array([10.0, 30.0, 20.0, 5.0, 1.0])  # user 0, oldest first: 3, 2, 1
    train = Interactions(user, item, np.ones(5, np.float32), time, 2, 5)
    features = random_features(2, 5, 0)
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, history_decay=0.5, use_rating_history=False, use_features=False
    ).sized_for(features)
    torch.manual_seed(0)
    rec = TwoTowerRecommender.from_model(TwoTower(config).eval(), features, train)
    assert rec.history_in_time_order(0).tolist() == [3, 2, 1]
    _, ctx = rec._require_model()
    own = embed_users(rec._require_model()[0], ctx, torch.tensor([0]))[0].numpy()
    again = rec.user_embedding_cold_start(None, rec.history_in_time_order(0))
    assert np.allclose(own, again, atol=1e-5)


def test_causal_folds_pool_what_came_before_the_targets() -> None:
    """``causal_folds``: folds are chunks of time; a row pools the items before its targets
    (the first fold: those after), decayed from the fold; every item is a target once."""
    from tests.features import random_features
    from towers.data.interactions import Interactions

    rng = np.random.default_rng(0)
    n = [7, 3, 1]
    user = np.repeat(np.arange(3), n)
    item = np.concatenate([rng.permutation(9)[:k] for k in n])
    time = rng.permutation(len(user)).astype(np.float64)
    train = Interactions(user, item, np.ones(len(user), np.float32), time, 3, 9)
    features = random_features(3, 9, 0)
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, negatives="user_full", history_folds=5, causal_folds=True,
        history_decay=0.5, use_rating_history=False,
    ).sized_for(features)  # fmt: skip
    ctx = TrainingContext.build(features, train, config)
    when = {(u, i): t for u, i, t in zip(user, item, time, strict=True)}
    for u, k in enumerate(n):
        seen = []
        for f in range(min(k, 5)):
            batch = {"user_idx": torch.tensor([u]), "fold": torch.tensor([f]),
                     "fold_seed": torch.tensor([0])}  # fmt: skip
            out = fold_user_batch(ctx, batch)
            targets = [when[u, i] for i in out["target_items"].tolist()]
            pooled = [when[u, i] for i in out["history_items"].tolist()]
            seen += targets
            if f > 0:
                assert pooled and max(pooled) < min(targets)  # only the past
                newest = pooled.index(max(pooled))
                assert out["history_weights"][newest] == out["history_weights"].max()
            else:
                assert all(p > max(targets) for p in pooled)  # the first fold: the future
        assert sorted(seen) == sorted(t for (v, _), t in when.items() if v == u)
    # Without causal folds the same rows mix past and future (random folds).
    mixed = TrainingContext.build(features, train, replace(config, causal_folds=False))
    rows = {"user_idx": torch.zeros(5, dtype=torch.int64), "fold": torch.arange(5),
            "fold_seed": torch.zeros(5, dtype=torch.int64)}  # fmt: skip
    out = fold_user_batch(mixed, rows)
    assert any(
        max(when[0, i] for i in out["history_items"][out["history_rows"] == r].tolist())
        > min(when[0, i] for i in out["target_items"][out["target_rows"] == r].tolist())
        for r in range(1, 5)
    )


def test_a_known_users_rated_history_embeds_as_the_user() -> None:
    """With a rating-pooled history (the deep towers on explicit data), the fresh-answer path
    re-embeds a training user from their items *and ratings* as their own embedding; without
    the ratings (a new user's likes) the embedding differs."""
    from tests.features import random_features
    from towers.data.interactions import Interactions
    from towers.recommenders.two_tower import TwoTowerRecommender
    from towers.training.steps import embed_users

    user = np.array([0, 0, 0, 1, 1])
    item = np.array([3, 1, 2, 0, 4])
    rating = np.array([5.0, 1.0, 4.0, 3.0, 2.0], np.float32)
    time = np.array([10.0, 30.0, 20.0, 5.0, 1.0])
    train = Interactions(user, item, rating, time, 2, 5)
    features = random_features(2, 5, 0)
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, use_rating_history=True, use_features=False
    ).sized_for(features)
    assert config.use_rating_history and config.has_ratings
    torch.manual_seed(0)
    rec = TwoTowerRecommender.from_model(TwoTower(config).eval(), features, train, (1.0, 5.0))
    items, ratings = rec.rated_history_in_time_order(0)  # no decay: no order kept, item order
    assert (items.tolist(), ratings.tolist()) == ([1, 2, 3], pytest.approx([1.0, 4.0, 5.0]))
    model, ctx = rec._require_model()
    own = embed_users(model, ctx, torch.tensor([0]))[0].numpy()
    assert np.allclose(own, rec.user_embedding_cold_start(None, items, ratings), atol=1e-5)
    assert not np.allclose(own, rec.user_embedding_cold_start(None, items), atol=1e-3)
    with pytest.raises(ValueError, match="2 ratings for 3 liked items"):
        rec.user_embedding_cold_start(None, items, ratings[:2])
