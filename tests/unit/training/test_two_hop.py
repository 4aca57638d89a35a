"""The item tower's two-hop neighbourhood (``item_two_hop``): exact, sampled, trained."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.unit.training.test_training import SMALL, block_data
from towers.data.features import FeatureTables
from towers.data.interactions import Interactions
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.loop import fit
from towers.training.steps import validation_metrics
from towers.training.two_hop import leave_out_own_users, refresh_two_hop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> tuple[Interactions, Interactions, FeatureTables]:
    return block_data()


def two_hop_model(data, **overrides) -> tuple[TwoTower, TrainingContext]:
    train, _, features = data
    config = TwoTowerConfig(**{**SMALL, "item_two_hop": True, **overrides}).sized_for(features)
    torch.manual_seed(0)
    model = TwoTower(config).eval()
    return model, TrainingContext.build(features, train, config)


def brute_force_user_means(r: sp.csr_matrix, table: np.ndarray, debias: float) -> np.ndarray:
    """``(U, E)`` each user's mean item row, item ``j`` weighed ``deg_j ** -debias``:
    ``diag(R w)^-1 R diag(w) E``."""
    w = np.maximum(r.sum(0).A1, 1) ** -debias  # (N,)
    weighted = r @ sp.diags(w)
    return sp.diags(1 / np.maximum(weighted.sum(1).A1, 1e-300)) @ weighted @ table


def brute_force_two_hop(train: Interactions, table: np.ndarray, debias: float) -> np.ndarray:
    """``D_i^-1 R^T M``: each item's users' (weighted) mean item rows ``M``, averaged."""
    r = train.to_csr(binary=True).astype(np.float64)
    users = brute_force_user_means(r, table, debias)  # (U, E)
    return sp.diags(1 / np.maximum(r.sum(0).A1, 1)) @ r.T @ users  # (N, E)


@pytest.mark.parametrize("debias", [0.0, 0.5, 1.0])
def test_the_exact_neighbourhood_is_the_mean_of_the_items_users_means(data, debias) -> None:
    model, ctx = two_hop_model(data, two_hop_debias=debias)
    table = model.item_tower.item_id.weight.detach().numpy()[:-1]  # the "unknown" row left out
    expected = brute_force_two_hop(data[0], table.astype(np.float64), debias)
    catalog = ctx.item_batch()
    got = model.item_tower.two_hop(catalog).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The whole catalog's bags are built once (every validation pass reads them).
    assert ctx.item_batch()["hop_user_items"] is catalog["hop_user_items"]
    # A subset of items gets the same rows; an item no user trained on gets zeros.
    unseen = np.flatnonzero(np.bincount(data[0].item_idx, minlength=data[0].n_items) == 0)
    assert len(unseen) > 0
    subset = torch.tensor([5, int(unseen[0]), 2])
    rows = model.item_tower.two_hop(ctx.item_batch(subset)).detach().numpy()
    np.testing.assert_allclose(rows, expected[subset.numpy()], atol=1e-5)
    assert not rows[1].any()


def test_training_steps_read_a_table_refreshed_a_few_times_an_epoch(data) -> None:
    model, ctx = two_hop_model(data, two_hop_refreshes=4)
    items = torch.tensor([0, 3, 81])
    with pytest.raises(RuntimeError, match="refresh_two_hop"):
        ctx.item_batch(items, training=True)
    per_refresh = len(data[0]) / 4
    refresh_two_hop(model, ctx, n_targets=10)
    first = ctx.two_hop_cache["table"]
    exact = model.item_tower.two_hop(ctx.item_batch(torch.arange(ctx.n_items))).detach()
    np.testing.assert_allclose(first[:-1].numpy(), exact.numpy(), atol=1e-6)
    assert not first[-1].any()  # the unknown item's row: no users
    batch = ctx.item_batch(items, training=True)
    assert torch.equal(model.item_tower.two_hop(batch), first[items])
    # The table moves with the weights only once a quarter of the epoch's targets has passed.
    with torch.no_grad():
        model.item_tower.item_id.weight.mul_(2.0)
    refresh_two_hop(model, ctx, n_targets=int(per_refresh) - 20)
    refresh_two_hop(model, ctx, n_targets=10)  # 10 + per_refresh - 20 + 10 targets since
    assert ctx.two_hop_cache["table"] is first
    refresh_two_hop(model, ctx, n_targets=1)  # the next step starts from a fresh table
    torch.testing.assert_close(ctx.two_hop_cache["table"], 2 * first)
    # No gradient reaches the item table through the neighbourhood.
    model.train()
    assert not model.item_tower.two_hop(ctx.item_batch(items)).requires_grad
    assert model.item_embeddings(ctx.item_batch(items)).requires_grad  # the rest of the tower


def test_a_training_target_reads_its_neighbourhood_without_its_own_user(data) -> None:
    model, ctx = two_hop_model(data, two_hop_leave_out=True)
    refresh_two_hop(model, ctx, n_targets=1)
    train = data[0]
    r = train.to_csr(binary=True)
    degree = np.diff(r.tocsc().indptr)
    single = int(np.flatnonzero(degree == 1)[0])  # an item with one training user
    pairs = [(int(train.user_idx[k]), int(train.item_idx[k])) for k in (0, 7, 40)]
    pairs.append((int(r.tocsc()[:, single].indices[0]), single))
    users, targets = (torch.tensor(p) for p in zip(*pairs, strict=True))
    items = torch.cat([targets, torch.tensor([2, 5])])  # two negatives after the targets
    batch = leave_out_own_users(ctx, ctx.item_batch(items, training=True), users)
    got = model.item_tower.two_hop(batch).detach().numpy()
    table = model.item_tower.item_id.weight.detach().numpy()[:-1].astype(np.float64)
    debias = model.config.two_hop_debias
    assert debias == 0.5  # the default: the users' means are weighted ones
    means = brute_force_user_means(r.astype(np.float64), table, debias)  # (U, E)
    for row, (u, i) in enumerate(pairs):  # the mean over i's other users of their means
        others = [v for v in r.tocsc()[:, i].indices if v != u]
        expected = means[others].mean(0) if others else np.zeros(table.shape[1])
        np.testing.assert_allclose(got[row], expected, atol=1e-5)
    assert not got[3].any()  # the item's only user left out: no neighbourhood
    exact = brute_force_two_hop(train, table, debias)
    np.testing.assert_allclose(got[4:], exact[[2, 5]], atol=1e-5)  # negatives: unchanged


def test_items_embedded_without_a_neighbourhood_read_zeros(data) -> None:
    model, ctx = two_hop_model(data)
    batch = ctx.item_batch(torch.tensor([0, 1]))
    bare = {k: v for k, v in batch.items() if not k.startswith("hop_")}
    assert not model.item_tower.two_hop(bare).any()
    assert model.item_embeddings(bare).shape == (2, model.config.retrieval_dim)


def test_two_hop_needs_the_item_table_and_is_on_by_default(data) -> None:
    with pytest.raises(ValueError, match="item_two_hop"):
        TwoTowerConfig(item_two_hop=True, use_item_id=False)
    with pytest.raises(ValueError, match="two_hop_refreshes"):
        TwoTowerConfig(two_hop_refreshes=0)
    with pytest.raises(ValueError, match="validation_users"):
        TwoTowerConfig(validation_users=-1)
    assert TwoTowerConfig(n_items=2_000).item_two_hop is True  # the wide towers, every size
    assert TwoTowerConfig(n_items=40_000).item_two_hop is True
    assert TwoTowerConfig.from_preset("paper", n_items=2_000).item_two_hop is False
    assert TwoTowerConfig(n_items=40_000, use_item_id=False).item_two_hop is False
    assert TwoTowerConfig.from_stored({}).item_two_hop is False  # models stored before it
    with pytest.raises(ValueError, match="two_hop_mix"):
        TwoTowerConfig(two_hop_mix="sum")
    assert TwoTowerConfig.from_stored({"item_two_hop": True}).two_hop_mix == "concat"
    assert TwoTowerConfig.from_stored({"item_two_hop": True}).two_hop_debias == 0.0  # plain mean
    with pytest.raises(ValueError, match="two_hop_debias"):
        TwoTowerConfig(two_hop_debias=-0.5)


def test_the_gated_mix_adds_the_neighbourhood_to_the_row_through_its_gate(data) -> None:
    model, ctx = two_hop_model(data, two_hop_mix="gated")
    tower = model.item_tower
    assert tower.mlp[0].in_features == model.config.id_dim + tower.features.out_dim
    items = torch.tensor([0, 3, 81])
    batch = ctx.item_batch(items)
    with torch.no_grad():
        tower.hop_gate.zero_()  # a closed gate: the row alone, as without the two-hop
        closed = model.item_embeddings(batch)
        bare = {k: v for k, v in batch.items() if not k.startswith("hop_")}
        torch.testing.assert_close(closed, model.item_embeddings(bare))
        tower.hop_gate.fill_(1.0)
        assert not torch.allclose(model.item_embeddings(batch), closed)
    model.train()
    model.item_embeddings(batch).sum().backward()
    assert tower.hop_gate.grad is not None and tower.hop_gate.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(loss="softmax"),  # the pair-wise full softmax
        dict(loss="softmax", negatives="user_full", row_negatives=64, sparse_embeddings=True),
        dict(loss="softmax", negatives="user_full", row_negatives=64, two_hop_leave_out=True),
        dict(loss="softmax", negatives="user_full", row_negatives=64, two_hop_mix="concat"),
    ],
)
def test_fit_with_the_two_hop_learns_the_blocks(data, overrides) -> None:
    train, test, features = data
    config = TwoTowerConfig.from_preset(
        "default", **SMALL, epochs=25, lr=5e-3, item_two_hop=True, **overrides
    )
    model, history = fit(config, train, None, features)
    assert history[-1]["loss"] < history[0]["loss"]
    ctx = TrainingContext.build(features, train, model.config)
    metrics = validation_metrics(model, ctx, train, test, k=10)
    assert metrics["recall@10"] > 0.8, metrics
