"""Each loss on a case small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from towers.model.losses import (
    MASKED,
    full_softmax,
    pointwise_bce,
    rating_mse,
    sampled_softmax,
)

# Tiny tensors: one intra-op thread (tests/conftest.py) avoids spin-waiting on 2 busy cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_pointwise_bce_matches_hand_value() -> None:
    scores = torch.tensor([0.0, 2.0])
    target = torch.tensor([1.0, 0.25])
    # Row 0: -log sigmoid(0) = log 2. Row 1: -(0.25 log s + 0.75 log(1 - s)), s = sigmoid(2).
    s = sigmoid(2.0)
    expected = (math.log(2.0) - (0.25 * math.log(s) + 0.75 * math.log(1.0 - s))) / 2
    assert pointwise_bce(scores, target).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.1600, abs=1e-3)


def test_in_batch_negatives_identity_case() -> None:
    # Logits = I (2x2): each row's positive scores 1, the other item 0 → loss log(1 + e^-1).
    user = torch.eye(2)
    items = torch.eye(2)
    loss = sampled_softmax(user, items, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-6)
    assert loss.item() == pytest.approx(0.31326, abs=1e-5)


def test_logq_correction_shifts_each_column_by_minus_log_q() -> None:
    user = torch.eye(2)
    items = torch.eye(2)
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = sampled_softmax(user, items, torch.tensor([0, 1]), candidate_log_q=log_q)
    # Corrected logits: row 0 = [1 + log 2, 0 + log 4]; row 1 = [0 + log 2, 1 + log 4].
    row0 = [1 + math.log(2), math.log(4)]
    row1 = [math.log(2), 1 + math.log(4)]

    def ce(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    expected = (ce(row0, 0) + ce(row1, 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    shifted = F.cross_entropy(user @ items.T - log_q[None, :], torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(shifted.item(), rel=1e-6)


def test_accidental_hits_are_masked_but_the_diagonal_is_kept() -> None:
    # All logits 0. Items [3, 3, 5]: rows 0 and 1 see the same item twice; the duplicate (not the
    # diagonal) is masked, leaving 2 candidates → log 2; row 2 keeps 3 candidates → log 3.
    user = torch.zeros(3, 2)
    items = torch.zeros(3, 2)
    item_idx = torch.tensor([3, 3, 5])
    loss = sampled_softmax(user, items, item_idx)
    assert loss.item() == pytest.approx((2 * math.log(2) + math.log(3)) / 3, rel=1e-6)
    unmasked = sampled_softmax(user, items, item_idx, remove_accidental_hits=False)
    assert unmasked.item() == pytest.approx(math.log(3), rel=1e-6)


def test_full_softmax_hand_value() -> None:
    user = torch.tensor([[1.0, 0.0]])
    all_items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # logits [1, 0, 0]
    loss = full_softmax(user, all_items, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)


def test_full_softmax_masks_other_positives_but_never_the_target() -> None:
    user = torch.tensor([[1.0, 0.0]])
    all_items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # Exclude item 1 (another positive) and item 0 (the target itself: ignored).
    rows, cols = torch.tensor([0, 0]), torch.tensor([1, 0])
    loss = full_softmax(user, all_items, torch.tensor([0]), rows, cols)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_fully_masked_row_stays_finite() -> None:
    user = torch.zeros(2, 2)
    loss = sampled_softmax(user, torch.zeros(2, 2), torch.tensor([1, 1]))
    assert torch.isfinite(loss)
    assert MASKED < -1e8


def test_rating_mse() -> None:
    predicted = torch.tensor([0.5, 1.0])
    target = torch.tensor([0.25, 0.5])
    assert rating_mse(predicted, target).item() == pytest.approx((0.0625 + 0.25) / 2)


def test_losses_are_differentiable() -> None:
    user = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    items = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = full_softmax(user, items, torch.tensor([0, 1, 2, 5])) + sampled_softmax(
        user, items[:4], torch.tensor([0, 1, 2, 5]), torch.zeros(4)
    )
    loss.backward()
    assert user.grad is not None and items.grad is not None
    assert torch.isfinite(user.grad).all() and torch.isfinite(items.grad).all()


def test_sampled_softmax_over_the_whole_catalog_is_the_full_softmax() -> None:
    """One row's positive, then every catalog item: the catalog's copy of the positive is an
    accidental hit and masked, so what is left is exactly the full-catalog softmax."""
    torch.manual_seed(0)
    user, items = torch.randn(5, 8), torch.randn(12, 8)
    positives = torch.tensor([3, 3, 0, 11, 7])
    per_row = []
    for r in range(5):
        candidates = torch.cat([positives[r : r + 1], torch.arange(12)])  # (1 + N,)
        per_row.append(sampled_softmax(user[r : r + 1], items[candidates], candidates))
    assert torch.allclose(torch.stack(per_row).mean(), full_softmax(user, items, positives))


def test_sampled_softmax_names_the_shapes_it_cannot_use() -> None:
    with pytest.raises(ValueError, match=r"need >= 4 candidates .* \(2, 8\)"):
        sampled_softmax(torch.randn(4, 8), torch.randn(2, 8), torch.arange(2))


def test_row_weights_count_a_row_as_that_many_positives():
    """Implicit data's weight column: a row of weight 2 weighs as two copies of it, in both
    the full and the sampled softmax; no weights is the plain mean."""
    from towers.model.losses import full_softmax, sampled_softmax, weighted_cross_entropy

    torch.manual_seed(0)
    user, items = torch.randn(3, 8), torch.randn(10, 8)
    target = torch.tensor([1, 4, 7])
    weights = torch.tensor([2.0, 1.0, 1.0])
    twice = torch.tensor([0, 0, 1, 2])  # row 0 repeated
    full = full_softmax(user, items, target, weights=weights)
    assert torch.allclose(full, full_softmax(user[twice], items, target[twice]), atol=1e-6)
    candidates = target  # in-batch: row r's positive is candidate r
    sampled = sampled_softmax(user, items[candidates], candidates, weights=weights)
    logits = user @ items[candidates].T
    by_hand = (
        weights * torch.nn.functional.cross_entropy(logits, torch.arange(3), reduction="none")
    ).sum() / 4
    assert torch.allclose(sampled, by_hand, atol=1e-6)
    assert torch.allclose(
        weighted_cross_entropy(logits, torch.arange(3), torch.ones(3)),
        weighted_cross_entropy(logits, torch.arange(3)),
        atol=1e-6,
    )


def test_known_candidates_marks_every_drawn_copy_of_a_rows_positives():
    from towers.model.losses import known_candidates

    generator = torch.Generator().manual_seed(0)
    n_rows, n_items = 7, 30
    positive_rows = torch.arange(n_rows).repeat_interleave(5)  # 5 positives a row, some repeated
    positive_items = torch.randint(n_items, (len(positive_rows),), generator=generator)
    candidates = torch.randint(n_items, (40,), generator=generator)  # duplicates among 40 of 30
    assert len(candidates.unique()) < len(candidates)
    known = known_candidates(positive_rows, positive_items, candidates, n_rows)
    bitmap = torch.zeros(n_rows, n_items, dtype=torch.bool)
    bitmap[positive_rows, positive_items] = True
    assert torch.equal(known, bitmap[:, candidates])
    assert known.any() and not known.all()
    none = known_candidates(positive_rows[:0], positive_items[:0], candidates, n_rows)
    assert none.shape == (n_rows, 40) and not none.any()
