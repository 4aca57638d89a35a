"""The validation search of the first epochs (towers/training/selection.py): it picks the better
candidate wherever it is listed, goes on with it as a config given that value would have trained,
stores what ran, and resumes without redoing the candidates already scored."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.unit.training.test_training import SMALL, block_data
from towers.model.config import TwoTowerConfig
from towers.model.defaults import SELECT_EPOCHS, SQUARED_LOSS
from towers.model.network import TwoTower
from towers.training.loop import LocalBatches, TrainingData, fit, train_loop
from towers.training.phases import LoopState
from towers.training.selection import SELECT, best_candidate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A case built to favour one candidate: at temperature 20 the cosine logits span +-0.05, so the
# first epochs teach the blocks little; at 0.1 they separate them (validation NDCG@10 ~0.4 vs 0.1).
GOOD, BAD = 0.1, 20.0
EPOCHS = SELECT_EPOCHS + 1  # the search phase goes on one epoch past the candidates'


@pytest.fixture(scope="module")
def data():
    return block_data()


def config(**overrides) -> TwoTowerConfig:
    """The temperature search alone (the softmax given: no loss candidates) unless overridden."""
    settings = {"epochs": EPOCHS, "loss": "softmax", "ranking_loss": "softmax", **overrides}
    return TwoTowerConfig.from_preset("default", **{**SMALL, **settings})


def scored(history: list[dict]) -> dict[float, list[float]]:
    """Each candidate's validation NDCG@10, epoch by epoch."""
    runs: dict[float, list[float]] = {}
    for h in history:
        if h["phase"] == SELECT:
            runs.setdefault(h["temperature"], []).append(h["ndcg@10"])
    return runs


def search_rows(history: list[dict]) -> list[tuple]:
    return [(h["epoch"], h["loss"], h["ndcg@10"]) for h in history if h["phase"] == "search"]


@pytest.mark.parametrize("order", [(BAD, GOOD), (GOOD, BAD)])
def test_the_search_picks_the_better_candidate_wherever_it_is_listed(data, order) -> None:
    train, valid, features = data
    model, history = fit(config(temperature_candidates=order), train, valid, features)
    assert model.config.temperature == GOOD and model.config.temperature_candidates == order
    scores = scored(history)
    assert list(scores) == list(order) and max(scores[GOOD]) > 2 * max(scores[BAD]), scores
    # Each candidate trained the run's first SELECT_EPOCHS epochs; the search phase holds the
    # chosen one's, then goes on to the budget.
    phases = [(h["phase"], h["epoch"]) for h in history]
    select = [(SELECT, e) for _ in order for e in range(SELECT_EPOCHS)]
    assert phases == [*select, *(("search", e) for e in range(EPOCHS))]
    assert [r[2] for r in search_rows(history)][:SELECT_EPOCHS] == scores[GOOD]
    served = torch.exp(model.log_inv_temperature).item()
    assert served == pytest.approx(1 / GOOD)  # the model scores at the chosen temperature


def test_scores_do_not_depend_on_the_order_and_the_run_is_the_plain_one(data) -> None:
    """Each candidate starts from the same weights and random state, and the chosen one goes on
    from where its epochs ended: the run a config given that temperature trains, epoch for epoch."""
    train, valid, features = data
    _, first = fit(config(temperature_candidates=(BAD, GOOD)), train, valid, features)
    _, second = fit(config(temperature_candidates=(GOOD, BAD)), train, valid, features)
    assert scored(first) == scored(second)
    plain_model, plain = fit(config(temperature=GOOD), train, valid, features)
    assert plain_model.config.temperature_candidates == ()  # a given value: no search
    assert all(h["phase"] == "search" for h in plain)
    assert search_rows(first) == search_rows(plain) == search_rows(second)


def test_no_search_without_validation_data_and_the_refit_at_the_choice(data) -> None:
    train, valid, features = data
    model, history = fit(config(temperature_candidates=(BAD, GOOD)), train, None, features)
    assert {h["phase"] for h in history} == {"search"}  # nothing to choose on
    assert model.config.temperature == BAD  # the first candidate, as built
    model, history = fit(
        config(temperature_candidates=(BAD, GOOD)), train, valid, features, refit=True
    )
    assert model.config.temperature == GOOD
    assert torch.exp(model.log_inv_temperature).item() == pytest.approx(1 / GOOD)  # refit too
    assert history[-1]["phase"] == "refit"


def test_a_run_resumed_during_the_search_ends_as_the_uninterrupted_one(data) -> None:
    """Resumed inside the second candidate's epochs: the first one's score is kept, not rerun;
    it is still the best, its kept state went with the restart, so its epochs train again from
    the start, the same epochs: the search phase ends as the uninterrupted run's did."""
    train, valid, features = data
    cfg = config(temperature_candidates=(GOOD, BAD)).sized_for(features, n_train=len(train))
    training = TrainingData(features, train, valid)
    saved = {}

    def run(resume=None, on_epoch=None):
        torch.manual_seed(cfg.seed)  # as every caller does, before building the model
        model = TwoTower(cfg)
        source = LocalBatches(training, cfg.batch_size, cfg.seed, config=cfg)
        return train_loop(model, training, source, resume=resume, on_epoch=on_epoch)

    def checkpoint(end) -> None:  # what towers.training.checkpoint keeps, mid second candidate
        if end.row["phase"] == SELECT and end.row["candidate"] == 1 and end.row["epoch"] == 0:
            saved["tensors"] = {
                "model": copy.deepcopy(end.model.state_dict()),
                "optimizer": copy.deepcopy(end.optimizer.state_dict()),
                "scheduler": end.scheduler.state_dict(),
                "best_model": copy.deepcopy(end.best_model) or {},
            }
            saved["state"] = copy.deepcopy(end.state)

    whole = run(on_epoch=checkpoint)
    resumed = run(resume=(saved["tensors"], saved["state"]))
    assert resumed.state.resumed_at == [0]
    kept, redone = resumed.state.selection
    assert kept == whole.state.selection[0]
    assert [kept["temperature"], redone["temperature"]] == [GOOD, BAD]
    # (a resumed epoch is close, not equal: its two-hop table is recomputed at once)
    assert redone["ndcg@10"] == pytest.approx(whole.state.selection[1]["ndcg@10"], rel=0.05)
    assert resumed.model.config.temperature == GOOD
    history = resumed.state.history
    first = [h for h in history if h["phase"] == SELECT and h["candidate"] == 0]
    assert len(first) == SELECT_EPOCHS  # from the checkpoint, not trained again as candidate 0
    assert search_rows(history) == search_rows(whole.state.history)


def test_the_squared_loss_candidate_goes_on_as_a_run_given_it(data, monkeypatch) -> None:
    """The squared loss is the last candidate where rows see the whole catalog: it starts from
    the same draws at its own scale, steps at its own rate, and when chosen the run (refit
    included) is the one a config given its settings trains, epoch for epoch."""
    train, valid, features = data
    # Its own rate and scale, larger than the default's so that this tiny case's few steps
    # make it the better candidate (the mechanics under test do not depend on the values).
    monkeypatch.setitem(SQUARED_LOSS, "lr", 3e-2)
    monkeypatch.setitem(SQUARED_LOSS, "embedding_init_scale", 0.1)
    linear = dict(hidden_dims=())  # the wide towers' one linear map (a ReLU layer starts dead)
    searched = config(temperature_candidates=(BAD,), ranking_loss=None, **linear)
    model, history = fit(searched, train, valid, features, refit=True)
    tried = {row.get("ranking_loss") for row in history if row.get("candidate") == 1}
    assert tried == {"squared"}
    assert (model.config.ranking_loss, model.config.normalize) == ("squared", False)
    assert (model.config.lr, model.config.embedding_init_scale) == (3e-2, 0.1)
    given = config(temperature=BAD, **linear, **SQUARED_LOSS)
    plain_model, plain = fit(given, train, valid, features, refit=True)
    assert search_rows(history) == search_rows(plain)
    refits = [
        [(h["epoch"], h["loss"]) for h in rows if h["phase"] == "refit"]
        for rows in (history, plain)
    ]
    assert refits[0] == refits[1] and refits[0]
    for name, value in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_best_candidate_maximises_ranking_metrics_and_minimises_rmse() -> None:
    assert best_candidate([0.2, 0.3, 0.3], "ndcg@10") == 1  # the first of equals
    assert best_candidate([0.9, 1.1, 0.8], "rmse") == 2
    assert best_candidate([float("nan"), 0.0], "ndcg@10") == 1


def test_a_search_checkpoint_needs_a_config_that_searches(data) -> None:
    train, valid, features = data
    cfg = config(temperature=GOOD).sized_for(features, n_train=len(train))  # no candidates
    model = TwoTower(cfg)
    training = TrainingData(features, train, valid)
    source = LocalBatches(training, cfg.batch_size, cfg.seed, config=cfg)
    tensors = {"model": model.state_dict(), "optimizer": {}, "best_model": {}}
    with pytest.raises(ValueError, match="validation search"):
        train_loop(model, training, source, resume=(tensors, LoopState(phase=SELECT)))
