"""The training loop: batching, context, every loss path, DDP, and learning a known answer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tests.features import random_features
from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.loop import LocalBatches, TrainingData, fit, train_loop
from towers.training.steps import (
    batch_loss,
    make_batches,
    make_optimizer,
    make_scheduler,
    train_epoch,
    validation_metrics,
)

# Tiny tensors: one intra-op thread (tests/conftest.py) avoids spin-waiting on 2 busy cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(embedding_dim=16, id_dim=16, feature_dim=4, hidden_dims=(32,), batch_size=64)


def block_data(
    n_groups: int = 8, users_per_group: int = 12, block: int = 10, n_test: int = 3, seed: int = 0
) -> tuple[Interactions, Interactions, FeatureTables]:
    """Users of group ``g`` like the items of block ``g``; 120 filler items pad the catalog.

    Each user holds out ``n_test`` of the block's items, so a model that learned the groups ranks
    exactly the held-out items first among the unseen ones (Recall@10 near 1; random ~0.05).
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = n_groups * users_per_group, n_groups * block + 120
    rows: dict[str, list] = {"train": [], "test": []}
    for user in range(n_users):
        group = user % n_groups
        items = group * block + rng.permutation(block)
        rows["test"] += [(user, i, 5.0) for i in items[:n_test]]
        rows["train"] += [(user, i, float(rng.integers(4, 6))) for i in items[n_test:]]
        filler = n_groups * block + rng.integers(0, 120)
        rows["train"].append((user, filler, float(rng.integers(1, 3))))  # a disliked stray item
    parts = []
    for name in ("train", "test"):
        u, i, r = (np.array(col) for col in zip(*rows[name], strict=True))
        parts.append(Interactions(u, i, r.astype(np.float32), np.zeros(len(u)), n_users, n_items))
    features = random_features(n_users, n_items, seed)
    return parts[0], parts[1], features


@pytest.fixture(scope="module")
def data() -> tuple[Interactions, Interactions, FeatureTables]:
    return block_data()


def setup(data, **overrides) -> tuple[TwoTower, TrainingContext, torch.optim.Optimizer]:
    train, _, features = data
    config = TwoTowerConfig.from_preset("default", **{**SMALL, **overrides}).sized_for(features)
    torch.manual_seed(0)
    model = TwoTower(config)
    return model, TrainingContext.build(features, train, config), make_optimizer(model, config)


def test_make_batches_is_a_deterministic_permutation(data) -> None:
    train = data[0]
    first = make_batches(train, 50, seed=3, epoch=0)
    again = make_batches(train, 50, seed=3, epoch=0)
    other = make_batches(train, 50, seed=3, epoch=1)
    cat = torch.cat([b["user_idx"] * 1000 + b["item_idx"] for b in first])
    assert torch.equal(cat, torch.cat([b["user_idx"] * 1000 + b["item_idx"] for b in again]))
    assert not torch.equal(cat, torch.cat([b["user_idx"] * 1000 + b["item_idx"] for b in other]))
    assert sorted(cat.tolist()) == sorted((train.user_idx * 1000 + train.item_idx).tolist())
    assert {k for b in first for k in b} == {"user_idx", "item_idx", "rating"}
    assert first[0]["rating"].dtype == torch.float32 and first[0]["rating"].max() > 1  # raw scale


def test_make_batches_shards_are_disjoint_and_equal(data) -> None:
    train = data[0]
    shards = [make_batches(train, 32, seed=0, epoch=2, shard=(r, 3)) for r in range(3)]
    sizes = [sum(len(b["user_idx"]) for b in s) for s in shards]
    assert len(set(sizes)) == 1 and sizes[0] == len(train) // 3
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    keys = [
        set(torch.cat([b["user_idx"] * 1000 + b["item_idx"] for b in s]).tolist()) for s in shards
    ]
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2])
    with pytest.raises(ValueError):
        make_batches(train, 32, seed=0, epoch=0, shard=(3, 3))


def test_context_popularity_and_shape_checks(data) -> None:
    train, test, features = data
    ctx = TrainingContext.build(features, train, TwoTowerConfig().sized_for(features))
    counts = np.bincount(train.item_idx, minlength=train.n_items)
    seen = counts > 0
    np.testing.assert_allclose(ctx.item_log_q.exp().numpy()[seen], counts[seen] / len(train), 1e-5)
    assert ctx.rating_scale == (1.0, 5.0)
    smaller = Interactions(train.user_idx, train.item_idx, train.rating, train.timestamp,
                           train.n_users, train.n_items + 1)  # fmt: skip
    with pytest.raises(ValueError, match="features cover"):
        TrainingContext.build(features, smaller, TwoTowerConfig())


@pytest.mark.parametrize(
    "overrides",
    [
        dict(loss="softmax"),
        dict(loss="softmax", mask_train_positives=True),
        dict(loss="softmax", negatives="in_batch", logq_correction=True),
        dict(loss="hybrid", learn_temperature=True),
        dict(loss="pointwise", normalize=False),
        dict(loss="hybrid", bf16=True),  # a no-op on CPU
    ],
)
def test_train_epoch_every_loss_path(data, overrides) -> None:
    model, ctx, optimizer = setup(data, **overrides)
    losses = []
    for epoch in range(4):
        stats = train_epoch(model, optimizer, make_batches(data[0], 64, 0, epoch), ctx)
        losses.append(stats["loss"])
    assert set(stats) >= {"loss", "samples", "seconds", "samples_per_s", "lr"}
    assert stats["samples"] == len(data[0]) and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_cosine_schedule_decays_to_zero(data) -> None:
    model, ctx, optimizer = setup(data, epochs=2, lr=0.01)
    scheduler = make_scheduler(optimizer, model.config, steps_per_epoch=3)
    lrs = []
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] < 0.01 and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_train_epoch_under_ddp(data, tmp_path) -> None:
    """One-process gloo DDP: forward goes through the wrapper; the rating head is used too."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, ctx, _ = setup(data, loss="hybrid")
        wrapped = DistributedDataParallel(model)
        optimizer = make_optimizer(wrapped, model.config)
        before = model.rating_head.item_bias.weight.detach().clone()
        for epoch in range(2):
            batches = make_batches(data[0], 64, 0, epoch, shard=(0, 1))
            stats = train_epoch(wrapped, optimizer, batches, ctx)
        assert math.isfinite(stats["loss"])
        assert not torch.equal(before, model.rating_head.item_bias.weight)
        assert "ndcg@10" in validation_metrics(wrapped, ctx, data[0], data[1])
    finally:
        dist.destroy_process_group()


def test_fit_learns_the_blocks(data) -> None:
    train, test, features = data
    config = TwoTowerConfig.from_preset("default", **SMALL, epochs=25, lr=5e-3, loss="softmax")
    model, history = fit(config, train, None, features)
    assert len(history) == 25 and history[-1]["loss"] < history[0]["loss"]
    ctx = TrainingContext.build(features, train, model.config)
    metrics = validation_metrics(model, ctx, train, test, k=10)
    random_recall = 10 / (train.n_items - 8)  # 8 training items per user
    assert random_recall < 0.06
    assert metrics["recall@10"] > 0.8, metrics
    assert metrics["ndcg@10"] > 0.7, metrics


def test_validation_ranks_in_blocks_with_the_same_result(data) -> None:
    train, test, features = data
    config = TwoTowerConfig.from_preset("default", **SMALL, epochs=2, loss="softmax")
    model, _ = fit(config, train, None, features)
    ctx = TrainingContext.build(features, train, model.config)
    whole = validation_metrics(model, ctx, train, test, k=10)
    users = len(np.unique(test.user_idx))
    # 5 users a block: several blocks and a short last one
    assert users > 10 and users % 5
    blocked = validation_metrics(model, ctx, train, test, k=10, block_cells=5 * train.n_items)
    assert blocked == pytest.approx(whole) and whole["ndcg@10"] > 0
    # A cap ranks a fixed sample of the users: the same every call, the metrics of exactly them.
    capped = validation_metrics(model, ctx, train, test, k=10, max_users=users // 2)
    assert capped == validation_metrics(model, ctx, train, test, k=10, max_users=users // 2)
    sample = np.random.default_rng(0).choice(np.unique(test.user_idx), users // 2, replace=False)
    only = test.subset(np.isin(test.user_idx, sample))
    assert capped == validation_metrics(model, ctx, train, only, k=10)
    assert capped != pytest.approx(whole)
    assert validation_metrics(model, ctx, train, test, k=10, max_users=users) == whole


def test_fit_is_deterministic_and_keeps_the_best_epoch(data) -> None:
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=4, patience=2, loss="hybrid", min_improvement=0.0
    )
    model, history = fit(config, train, test, features)
    _, again = fit(config, train, test, features)
    assert [h["loss"] for h in history] == [h["loss"] for h in again]
    ctx = TrainingContext.build(features, train, model.config)
    best = max(h["ndcg@10"] for h in history)
    assert validation_metrics(model, ctx, train, test)["ndcg@10"] == pytest.approx(best)
    assert {"recall@10", "ndcg@10", "precision@10", "map@10", "rmse"} <= set(history[0])
    assert 0 < history[0]["rmse"] < 4


@pytest.mark.parametrize("share", [0.0, 0.02, 10.0])
def test_the_refit_stops_at_the_earliest_epoch_within_min_improvement(data, share) -> None:
    """An epoch beats the best only by more than ``min_improvement`` of it; the refit on train ∪
    valid trains for that best epoch + 1 epochs (10.0: no later epoch can beat epoch 0)."""
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=4, patience=10, loss="softmax", min_improvement=share
    )
    _, history = fit(config, train, test, features, refit=True)
    search = [h["ndcg@10"] for h in history if h["phase"] == "search"]
    best = 0
    for epoch, value in enumerate(search):
        best = epoch if value > search[best] * (1 + share) else best
    assert [h["epoch"] for h in history if h["phase"] == "refit"] == list(range(best + 1))
    if share == 0.0:
        assert best == search.index(max(search))
    if share == 10.0:
        assert best == 0


def test_mixed_negatives_cost_the_batch_plus_the_drawn_items_not_the_catalog(data) -> None:
    """The item tower sees B + M candidates per step (M drawn uniformly), the full softmax N."""
    batch = make_batches(data[0], 16, seed=0, epoch=0)[0]
    seen = {}
    for negatives in ("mixed", "full"):
        model, ctx, _ = setup(data, negatives=negatives, sampled_negatives=7, loss="softmax")

        def count(_module, args, _out, name=negatives) -> None:  # returns None: output kept
            seen.setdefault(name, len(args[0]["item_idx"]))

        model.item_tower.register_forward_hook(count)
        loss = batch_loss(model, batch, ctx)
        assert torch.isfinite(loss) and loss.requires_grad
    assert seen == {"mixed": 16 + 7, "full": ctx.n_items}


def test_candidate_probabilities_for_mixed_and_in_batch_negatives(data) -> None:
    _, ctx, _ = setup(data)
    items = torch.tensor([0, 5, 5, 9])
    p = ctx.item_log_q[items].exp()
    assert torch.equal(ctx.candidate_log_q(items, 4, 0), ctx.item_log_q[items])  # in-batch
    expected = torch.log(4 * p + 10 / ctx.n_items)  # in the batch, or among 10 drawn ones
    assert torch.allclose(ctx.candidate_log_q(items, 4, 10), expected)


def test_fit_with_mixed_negatives_learns_the_blocks(data) -> None:
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=25, lr=5e-3, loss="softmax", negatives="mixed",
        sampled_negatives=32,
    )  # fmt: skip
    model, _ = fit(config, train, None, features)
    ctx = TrainingContext.build(features, train, model.config)
    metrics = validation_metrics(model, ctx, train, test, k=10)
    assert metrics["recall@10"] > 0.8, metrics  # random: < 0.06 (test_fit_learns_the_blocks)


def test_progress_inside_an_epoch(data) -> None:
    """Ticks at the interval (0 s here: every step but the last, which the epoch line reports),
    with the steps, a rate and a time left that shrinks to the end."""
    train, _, features = data
    config = TwoTowerConfig.from_preset("default", **SMALL, epochs=1).sized_for(features)
    torch.manual_seed(0)
    source = LocalBatches(TrainingData(features, train), config.batch_size, config.seed)
    ticks: list[dict] = []
    train_loop(TwoTower(config), TrainingData(features, train), source,
               on_progress=ticks.append, progress_every_s=0.0)  # fmt: skip
    steps = source.steps_per_epoch("search")
    assert [t["step"] for t in ticks] == list(range(1, steps))
    assert all(t["steps"] == steps and t["samples_per_s"] > 0 for t in ticks)
    assert ticks[-1]["eta_s"] < ticks[0]["eta_s"] and ticks[0]["phase"] == "search"


def test_fit_with_sparse_embeddings_learns_the_blocks(data) -> None:
    """Sparse gradients for the catalog-sized tables and LazyAdam: the same block data learnt."""
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=25, lr=5e-3, loss="hybrid", sparse_embeddings=True,
        share_history_embeddings=False,  # the history's own table too
    )  # fmt: skip
    model, _ = fit(config, train, None, features)
    assert model.item_tower.item_id.sparse and model.user_tower.history.sparse
    ctx = TrainingContext.build(features, train, model.config)
    metrics = validation_metrics(model, ctx, train, test, k=10)
    assert metrics["recall@10"] > 0.8, metrics
