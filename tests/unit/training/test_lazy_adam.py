"""LazyAdam: torch's Adam on dense gradients and SparseAdam on sparse ones, in one optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from towers.training.lazy_adam import LazyAdam

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def steps(model: nn.Module, optimizers: list[torch.optim.Optimizer], n: int = 5) -> None:
    torch.manual_seed(1)
    for _ in range(n):
        rows = torch.randint(0, 20, (6,))  # a few rows of the table per step
        loss = (model[1](model[0](rows)) ** 2).sum()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


def model(sparse: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(20, 4, sparse=sparse), nn.Linear(4, 3))


def test_dense_and_sparse_updates_match_torchs_adam_and_sparse_adam() -> None:
    reference, ours = model(sparse=True), model(sparse=True)
    embedding, linear = reference[0].parameters(), reference[1].parameters()
    torch_optimizers = [
        torch.optim.SparseAdam(list(embedding), lr=0.05),
        torch.optim.Adam(list(linear), lr=0.05),
    ]
    steps(reference, torch_optimizers)
    steps(ours, [LazyAdam(ours.parameters(), lr=0.05)])
    for a, b in zip(reference.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rows_a_step_does_not_touch_stay_put() -> None:
    net = model(sparse=True)
    before = net[0].weight.detach().clone()
    optimizer = LazyAdam(net.parameters(), lr=0.1)
    loss = net[1](net[0](torch.tensor([2, 5]))).sum()
    loss.backward()
    optimizer.step()
    moved = (net[0].weight != before).any(dim=1)
    assert moved.nonzero().flatten().tolist() == [2, 5]


def test_state_round_trips_and_the_schedule_drives_it() -> None:
    net = model(sparse=True)
    optimizer = LazyAdam(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    steps(net, [optimizer], n=2)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    again = LazyAdam(copy.deepcopy(net).parameters(), lr=0.1)
    again.load_state_dict(optimizer.state_dict())
    assert again.state_dict()["state"][0]["step"] == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="betas in"):
        LazyAdam(model(sparse=False).parameters(), betas=(0.9, 1.0))


def test_a_checkpoint_of_a_sparse_model_resumes_its_optimizer(tmp_path) -> None:
    """save_checkpoint/load_checkpoint carry LazyAdam's state (moments, step counts)."""
    from towers.model.config import TwoTowerConfig
    from towers.model.network import TwoTower
    from towers.training.checkpoint import load_checkpoint, save_checkpoint
    from towers.training.loop import LoopState
    from towers.training.steps import make_optimizer

    config = TwoTowerConfig(
        n_users=5, n_items=7, user_inputs=(('g', 'index', 3),), item_inputs=(('c', 'bag', 4),),
        sparse_embeddings=True,
    )  # fmt: skip
    net = TwoTower(config)
    optimizer = make_optimizer(net, config)
    assert isinstance(optimizer, LazyAdam)
    weight = net.item_tower.item_id.weight
    rows, values = torch.tensor([[1, 4]]), torch.ones(2, weight.shape[1])
    weight.grad = torch.sparse_coo_tensor(rows, values, weight.shape, check_invariants=True)
    optimizer.step()
    save_checkpoint(tmp_path, net, optimizer, LoopState(epoch=0), None)
    _, tensors, _ = load_checkpoint(tmp_path)
    again = make_optimizer(TwoTower(config), config)
    again.load_state_dict(tensors["optimizer"])
    assert again.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
