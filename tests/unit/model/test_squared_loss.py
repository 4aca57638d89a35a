"""The squared loss over the catalog (towers/model/losses.py), where the search tries it
(towers/model/defaults.py), what it refuses, and the scale its tables start at."""

from __future__ import annotations

import pytest
import torch

from towers.model.config import SQUARED_LOSS, TwoTowerConfig
from towers.model.losses import full_squared_rows
from towers.model.network import TwoTower

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZED = dict(n_users=10, n_items=100)


def test_targets_pull_to_one_unseen_items_to_zero_and_the_pool_is_left_out() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (R=2, D)
    items = torch.tensor([[0.5, 0.0], [0.0, 0.5], [1.0, 1.0]])  # (N=3, D)
    # scores: row 0 -> [0.5, 0, 1], row 1 -> [0, 1, 2]
    rows, targets = torch.tensor([0, 1]), torch.tensor([0, 1])
    # Row 0's positives: item 0 (its target) and item 2 (pooled); row 1's: item 1 only.
    pos_rows, pos_items = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    loss = full_squared_rows(user, items, rows, targets, pos_rows, pos_items, 0.1)
    observed = (0.5 - 1) ** 2 + (1 - 1) ** 2
    unobserved = 0.1 * ((0.0**2) + (0.0**2 + 2.0**2))  # row 0: item 1; row 1: items 0, 2
    assert loss.item() == pytest.approx((observed + unobserved) / 2)
    weighted = full_squared_rows(
        user, items, rows, targets, pos_rows, pos_items, 0.1, torch.tensor([3.0, 1.0])
    )  # a target of weight 3 counts three times, and in the count divided by
    assert weighted.item() == pytest.approx((3 * 0.25 + unobserved) / 4)


def test_the_search_tries_it_where_every_row_sees_the_whole_catalog() -> None:
    default = TwoTowerConfig(**SIZED)
    assert default.ranking_loss_candidates == ("softmax", "squared")
    assert default.ranking_loss == "softmax"  # the model as built: the first candidate
    big = TwoTowerConfig(n_users=10, n_items=5_000)  # rows see 4,096 drawn items
    assert (big.ranking_loss_candidates, big.ranking_loss) == ((), "softmax")
    for fixed in (
        TwoTowerConfig(**SIZED, ranking_loss="softmax"),
        TwoTowerConfig(**SIZED, ranking_loss="squared"),
        TwoTowerConfig(**SIZED, negatives="in_batch"),
        TwoTowerConfig(**SIZED, next_item=True),  # the sequence tower
        TwoTowerConfig(**SIZED, learn_temperature=True),
        TwoTowerConfig.from_preset("paper", **SIZED),
    ):
        assert fixed.ranking_loss_candidates == ()
    assert TwoTowerConfig().ranking_loss is None  # not known before the data
    stored = TwoTowerConfig(**SIZED).to_dict()
    del stored["ranking_loss"], stored["ranking_loss_candidates"]
    old = TwoTowerConfig.from_stored(stored)  # stored before the squared loss: the softmax
    assert (old.ranking_loss, old.ranking_loss_candidates) == ("softmax", ())


def test_it_is_refused_where_rows_do_not_see_the_whole_catalog() -> None:
    for where in (dict(n_items=5_000), dict(negatives="mixed"), dict(next_item=True)):
        with pytest.raises(ValueError, match="whole catalog.*here"):
            TwoTowerConfig(**{**SIZED, **where, "ranking_loss": "squared"})
    with pytest.raises(ValueError, match="ranking_loss"):
        TwoTowerConfig(ranking_loss="hinge")
    with pytest.raises(ValueError, match="start with 'softmax'"):
        TwoTowerConfig(ranking_loss_candidates=("squared", "softmax"))
    with pytest.raises(ValueError, match="embedding_init_scale"):
        TwoTowerConfig(embedding_init_scale=0.0)


def test_tables_start_at_the_same_draws_times_the_scale() -> None:
    config = TwoTowerConfig(**SIZED)
    torch.manual_seed(0)
    plain = TwoTower(config).state_dict()
    torch.manual_seed(0)
    small = TwoTower(TwoTowerConfig(**SIZED, **SQUARED_LOSS)).state_dict()
    table = "item_tower.item_id.weight"
    assert torch.equal(small[table], plain[table] * SQUARED_LOSS["embedding_init_scale"])
    assert torch.equal(small[table][-1], torch.zeros_like(small[table][-1]))  # unknown: 0
    maps = [k for k in plain if k.endswith("mlp.0.weight") or k.endswith("mlp.weight")]
    assert maps and all(torch.equal(small[k], plain[k]) for k in maps)  # layers as drawn


def test_candidates_train_about_select_pairs_on_small_sets() -> None:
    """select_epochs: SELECT_EPOCHS, or about SELECT_PAIRS pairs' worth of epochs on a small set,
    those only up to half the run's epochs; stored configs from before it ran 2."""
    from towers.model.defaults import SELECT_EPOCHS, SELECT_PAIRS

    def rung(n_train: int, **given) -> int:
        return TwoTowerConfig(**SIZED, n_train=n_train, **given).select_epochs

    assert SELECT_EPOCHS == 2 and SELECT_PAIRS == 250_000
    assert rung(67_634) == 4  # ML-100K's random split: 15 epochs, 4 by the pairs
    assert rung(218_467) == rung(730_000) == SELECT_EPOCHS  # Yelp, Gowalla
    assert rung(67_634, epochs=6) == 3  # half the run
    assert rung(500, epochs=3) == SELECT_EPOCHS  # never fewer than SELECT_EPOCHS
    assert rung(67_634, select_epochs=1) == 1  # given
    stored = TwoTowerConfig(**SIZED, n_train=67_634).to_dict()
    del stored["select_epochs"]
    assert TwoTowerConfig.from_stored(stored).select_epochs == 2
    with pytest.raises(ValueError, match="select_epochs"):
        TwoTowerConfig(select_epochs=0)


def test_a_given_temperature_still_leaves_the_loss_to_the_search() -> None:
    from towers.training.selection import candidates, label

    fixed = TwoTowerConfig(**SIZED, temperature=0.1)
    assert fixed.temperature_candidates == () and fixed.ranking_loss_candidates
    tried = candidates(fixed)
    assert [label(c) for c in tried] == [{"ranking_loss": "softmax"}, {"ranking_loss": "squared"}]
    assert candidates(TwoTowerConfig(**SIZED, temperature=0.1, ranking_loss="softmax")) == []
