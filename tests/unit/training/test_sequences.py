"""The sequence user tower: windows of each user's history, order that matters, a new event that
changes the answer, and learning a rule of what follows what."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.features import random_features
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.loop import LocalBatches, TrainingData, fit
from towers.training.sequences import (
    make_sequence_batches,
    sequence_steps,
    sequence_user_batch,
    windows_per_user,
)
from towers.training.steps import batch_loss, embed_items, embed_users

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQ = dict(
    sequence_model="attention", sequence_length=4, embedding_dim=16, id_dim=16, feature_dim=4,
    batch_size=64, epochs=2,
)  # fmt: skip


def chains(n_users: int = 160, n_items: int = 40, length: int = 7, seed: int = 0):
    """Each user's items in time order are ``a, f(a), b, f(b), …, z`` for a fixed permutation
    ``f`` and random ``a, b, …``; the held-out next item is ``f(z)``: only the order says which
    item is last (the pooled tower learns it too, from its recency decay: 0.97 against 0.94)."""
    rng = np.random.default_rng(seed)
    f = rng.permutation(n_items)
    rows, test = [], []
    for user in range(n_users):
        seq: list[int] = []
        while len(seq) < length:
            a = int(rng.integers(n_items))
            if a in seq or f[a] in seq or a == f[a]:
                continue
            seq += [a, int(f[a])]
        seq = seq[:length]
        if int(f[seq[-1]]) in seq:
            continue
        rows += [(user, item, t) for t, item in enumerate(seq)]
        test.append((user, int(f[seq[-1]]), length))
    parts = []
    for part in (rows, test):
        u, i, t = (np.array(c, np.int64) for c in zip(*part, strict=True))
        parts.append(Interactions(u, i, np.ones(len(u), np.float32), t, n_users, n_items))
    return parts[0], parts[1], random_features(n_users, n_items, seed)


@pytest.fixture(scope="module")
def data():
    return chains()


def config_for(features, **overrides) -> TwoTowerConfig:
    config = TwoTowerConfig(**{**SEQ, **overrides})
    return config.sized_for(features, has_ratings=False, time_ordered=True, next_item=True)


def built(data, **overrides) -> tuple[TwoTower, TrainingContext]:
    """A seeded sequence model (eval mode) and its context over ``data``'s training part."""
    train, _, features = data
    config = config_for(features, **overrides)
    torch.manual_seed(0)
    return TwoTower(config).eval(), TrainingContext.build(features, train, config)


def test_the_sequence_tower_is_the_default_where_the_next_item_is_held_out(data) -> None:
    features = data[2]
    base = TwoTowerConfig()
    assert base.sized_for(features, False, True, next_item=True).sequence_model == "attention"
    assert base.sized_for(features, False, True, next_item=False).sequence_model == "none"
    sized = base.sized_for(features, False, True, next_item=True)
    assert sized.negatives == "user_full" and sized.embedding_dim == 256
    assert (sized.lr, sized.sequence_lr) == (3e-2, 1e-3)  # the tables' rate, the stack's
    with pytest.raises(ValueError, match="negatives must be 'user_full'"):
        TwoTowerConfig(sequence_model="attention", negatives="mixed")
    with pytest.raises(ValueError, match="divide into 3 heads"):
        config_for(features, sequence_heads=3)


def test_windows_cover_every_target_once_and_shard_evenly() -> None:
    lengths = np.array([0, 1, 2, 5, 9, 4])  # targets: 0, 0, 1, 4, 8, 3 (every item but the first)
    assert windows_per_user(lengths, 4).tolist() == [0, 0, 1, 1, 2, 1]
    batches = make_sequence_batches(lengths, 4, batch_size=6, seed=1, epoch=0)
    rows = sorted(
        (int(u), int(w)) for b in batches for u, w in zip(b["user_idx"], b["window"], strict=True)
    )
    assert rows == [(2, 0), (3, 0), (4, 0), (4, 1), (5, 0)]
    assert sum(int(b["pairs"]) for b in batches) == 16
    for seed, epoch in ((1, 0), (2, 5)):  # the schedule's steps: the same whatever the shuffle
        assert len(make_sequence_batches(lengths, 4, 6, seed, epoch)) == sequence_steps(
            lengths, 4, 6, 1
        )
    # Windows of one length share a batch: targets 1, 3 | 4, 4 | 4 (batches close at 6).
    assert sorted(int(b["pairs"]) for b in batches) == [4, 4, 8]
    many = np.full(40, 6)  # 40 users of 5 targets: every rank the same steps, each window once
    shards = [make_sequence_batches(many, 4, 8, 1, 0, shard=(r, 3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    assert len(shards[0]) == sequence_steps(many, 4, 8, 3)
    seen = [(int(u), int(w)) for s in shards for b in s
            for u, w in zip(b["user_idx"], b["window"], strict=True)]  # fmt: skip
    assert len(seen) == len(set(seen)) and len(seen) > 0.8 * 80  # 80 windows, few left over


def test_a_window_reads_the_items_before_each_target() -> None:
    # One user, nine items in time order 10, 11, …, 18 (file order scrambled), sequences of 4.
    order = np.array([3, 0, 8, 5, 1, 7, 2, 6, 4])
    train = Interactions(
        np.zeros(9, np.int64), 10 + order, np.ones(9, np.float32), order, 1, 20
    )  # fmt: skip
    config = config_for(random_features(1, 20, 0))
    ctx = TrainingContext.build(random_features(1, 20, 0), train, config)
    batch = sequence_user_batch(
        ctx, {"user_idx": torch.tensor([0, 0, 0]), "window": torch.tensor([0, 1, 2])}
    )
    pad = 20
    assert batch["sequence_items"].tolist() == [
        [14, 15, 16, 17],  # window 0: targets 15..18
        [10, 11, 12, 13],  # window 1: targets 11..14
        [pad, pad, pad, pad],  # window 2: no targets (item 10 is first)
    ]
    assert batch["sequence_slots"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert batch["target_items"].tolist() == [15, 16, 17, 18, 11, 12, 13, 14]
    assert batch["row_users"].tolist() == [0] * 8
    assert len(batch["positive_items"]) == 8 * 9  # every item of the user, once per target
    short = sequence_user_batch(ctx, {"user_idx": torch.tensor([0]), "window": torch.tensor([1])})
    assert short["sequence_items"].tolist() == [[10, 11, 12, 13]]


def test_the_same_items_in_another_order_give_another_user(data) -> None:
    train = data[0]
    model, ctx = built(data)
    with torch.no_grad():
        forward = model.user_embeddings(ctx.cold_user_batch(None, [1, 2, 3]))
        backward = model.user_embeddings(ctx.cold_user_batch(None, [3, 2, 1]))
        again = model.user_embeddings(ctx.cold_user_batch(None, [1, 2, 3]))
    assert torch.equal(forward, again) and not torch.allclose(forward, backward, atol=1e-4)
    # The newest slot reads the last liked item: a known user's sequence is their history.
    batch = ctx.user_batch(torch.tensor([0]), positives=False)
    history = train.item_idx[train.user_idx == 0][np.argsort(train.timestamp[train.user_idx == 0])]
    assert batch["sequence_items"][0, -len(history) :].tolist()[-4:] == history[-4:].tolist()


def test_training_learns_the_next_item_from_the_order(data) -> None:
    train, test, features = data
    valid_free = TrainingData(features, train)
    config = config_for(features, epochs=12, lr=1e-2, sequence_dropout=0.0)
    assert LocalBatches(valid_free, 64, 0, config=config).steps_per_epoch("search") >= 1
    model, history = fit(config, train, None, features)
    ctx = TrainingContext.build(features, train, config)
    users = torch.as_tensor(test.user_idx)
    scores = embed_users(model, ctx, users) @ embed_items(model, ctx).T  # (U, N)
    seen = torch.as_tensor(train.to_csr(binary=True)[test.user_idx].toarray(), dtype=torch.bool)
    top = scores.masked_fill(seen, -torch.inf).topk(10).indices
    hit_rate = (top == torch.as_tensor(test.item_idx)[:, None]).any(1).float().mean()
    assert history[-1]["loss"] < history[0]["loss"]
    assert hit_rate > 0.6  # 10 of ~33 unseen items at random: 0.3


def test_a_new_event_changes_the_next_answer(data) -> None:
    model, ctx = built(data)
    history = [5, 9, 2]
    with torch.no_grad():
        before = model.user_embeddings(ctx.cold_user_batch(None, history))
        after = model.user_embeddings(ctx.cold_user_batch(None, [*history, 17]))
    assert not torch.allclose(before, after, atol=1e-4)


def test_the_sequence_loss_is_finite_on_a_batch_with_short_users(data) -> None:
    train = data[0]
    model, ctx = built(data)
    model.train()
    batch = make_sequence_batches(
        np.bincount(train.user_idx, minlength=train.n_users), 4, 64, 0, 0
    )[0]
    loss = batch_loss(model, batch, ctx)
    loss.backward()
    assert torch.isfinite(loss) and model.user_tower.sequence.slots.grad is not None


def test_a_sequence_epoch_under_ddp_steps_both_rates(data, tmp_path) -> None:
    """One-process gloo DDP (what each Ray Train worker runs): dense tables, the attention
    stack in its own optimizer group at ``sequence_lr``, every parameter with a gradient."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from towers.training.steps import make_optimizer, train_epoch

    train, _, features = data
    config = config_for(features, sparse_embeddings=False, lr=1e-2, sequence_lr=1e-3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = TwoTower(config)
        wrapped = DistributedDataParallel(model)
        optimizer = make_optimizer(wrapped, config)
        assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3]
        ctx = TrainingContext.build(features, train, config)
        lengths = np.bincount(train.user_idx, minlength=train.n_users)
        batches = make_sequence_batches(lengths, 4, 64, 0, 0, shard=(0, 1))
        before = model.user_tower.sequence.slots.detach().clone()
        stats = train_epoch(wrapped, optimizer, batches, ctx)
        assert np.isfinite(stats["loss"]) and stats["samples"] == (lengths - 1).clip(0).sum()
        assert not torch.equal(before, model.user_tower.sequence.slots)
    finally:
        dist.destroy_process_group()
