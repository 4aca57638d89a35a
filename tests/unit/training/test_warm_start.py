"""Warm starts: rows mapped by raw id, old rows kept bit for bit, new rows freshly initialised,
mismatches named; and a warm-started loop keeps what the old model learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.features import random_features
from tests.unit.training.test_training import SMALL, block_data
from towers.model.config import TwoTowerConfig
from towers.model.network import TwoTower
from towers.training.inputs import TrainingContext
from towers.training.loop import fit
from towers.training.steps import validation_metrics
from towers.training.warm_start import (
    ROW_TABLES,
    WARM_START_EPOCHS,
    Vocabularies,
    WarmStartError,
    map_rows,
    transplant,
    warm_config,
    warm_start_epochs,
    warm_start_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Every row table on: user ids, own history tables, the rating-pooled history, the rating head,
# the retrieval logit's item bias.
ALL_TABLES = dict(
    SMALL, use_user_id=True, recent_history=2, share_history_embeddings=False, item_bias=True
)


def model_for(n_users: int, n_items: int, seed: int = 0, **overrides) -> TwoTower:
    features = random_features(n_users, n_items, seed=1)
    config = TwoTowerConfig.from_preset("default", **{**ALL_TABLES, **overrides})
    config = config.sized_for(features)
    torch.manual_seed(seed)
    return TwoTower(config)


def ids(n_users: int, n_items: int) -> Vocabularies:
    """Integer ids 0..n-1 on both sides."""
    return Vocabularies(np.arange(n_users), np.arange(n_items))


def grown_vocab() -> tuple[Vocabularies, Vocabularies]:
    """String user ids and integer item ids; the new vocabularies insert ids in sorted order,
    so every old row moves (users 'u1' -> 'u1', 'u15' new, ...)."""
    old = Vocabularies(np.array([f"u{i}" for i in range(0, 20, 2)], object), np.arange(0, 30, 3))
    users = np.array(sorted([f"u{i}" for i in range(0, 20, 2)] + ["u15", "u3", "u7"]), object)
    items = np.sort(np.concatenate([np.arange(0, 30, 3), [1, 2, 31, 40]]))
    return old, Vocabularies(users, items)


def test_map_rows_by_raw_id() -> None:
    rows = map_rows(np.array(["b", "a", "c"], object), np.array(["a", "x", "c", "b"], object))
    assert rows.tolist() == [1, -1, 2, 0]
    # An integer id is not its string: no silent match across types.
    assert map_rows(np.array([1, 2]), np.array(["1", 2], object)).tolist() == [-1, 1]
    with pytest.raises(WarmStartError, match="repeats"):
        map_rows(np.array([1, 1]), np.array([1]))


def test_old_rows_are_kept_bit_for_bit_and_new_rows_are_fresh() -> None:
    old_vocab, new_vocab = grown_vocab()
    old = model_for(len(old_vocab.users), len(old_vocab.items), seed=7)
    with torch.no_grad():  # make the unknown rows distinguishable from a fresh init's
        for param in old.parameters():
            param.add_(0.5)
    new_config = warm_config(
        old.config,
        random_features(len(new_vocab.users), len(new_vocab.items), seed=1),
        old.config.has_ratings,
        old.config.time_ordered,
        {"lr": 1e-3},
    )
    state, report = warm_start_weights(old, old_vocab, new_config, new_vocab)
    torch.manual_seed(new_config.seed)
    fresh = TwoTower(new_config).state_dict()
    old_state = old.state_dict()
    assert set(report.mapped) == set(ROW_TABLES)
    rows = {s: map_rows(getattr(old_vocab, s), getattr(new_vocab, s)) for s in ("users", "items")}
    for name, (side, unknown) in ROW_TABLES.items():
        table, known = state[name], rows[side] >= 0
        n = len(rows[side])
        assert table.shape[0] == n + unknown
        assert torch.equal(table[:n][torch.from_numpy(known)], old_state[name][rows[side][known]])
        assert torch.equal(table[:n][torch.from_numpy(~known)], fresh[name][:n][~known])
        if unknown:
            assert torch.equal(table[-1], old_state[name][-1])
    for name in report.copied:
        assert torch.equal(state[name], old_state[name])
    assert set(report.copied) | set(report.mapped) == set(fresh)
    assert report.kept == {"users": 10, "items": 10}
    assert report.added == {"users": 3, "items": 4}
    assert "Adam restarts" in report.summary()
    assert new_config.lr == 1e-3 and new_config.n_users == 13
    TwoTower(new_config).load_state_dict(state)  # loads strictly


def test_same_vocabulary_is_the_identity() -> None:
    old = model_for(12, 20)
    vocab = ids(12, 20)
    state, report = warm_start_weights(old, vocab, old.config, vocab)
    assert all(torch.equal(state[k], v) for k, v in old.state_dict().items())
    assert report.added == {"users": 0, "items": 0}


def test_dropped_ids_are_counted() -> None:
    old = model_for(12, 20)
    old_vocab = ids(12, 20)
    new_vocab = Vocabularies(np.arange(2, 14), np.arange(20))
    config = warm_config(old.config, random_features(12, 20, 1), True, False)
    _, report = warm_start_weights(old, old_vocab, config, new_vocab)
    assert report.dropped["users"] == 2 and report.kept["users"] == 10
    # The old model's temperature and loss, searched no more
    assert old.config.temperature_candidates and old.config.ranking_loss_candidates
    assert (config.temperature_candidates, config.ranking_loss_candidates) == ((), ())
    assert config.ranking_loss == old.config.ranking_loss


def test_a_warm_start_runs_a_third_of_the_old_models_epochs() -> None:
    assert WARM_START_EPOCHS == 3
    assert warm_start_epochs(20) == 3  # ML-100K's deep towers: at most 3
    assert warm_start_epochs(8) == 2  # Amazon Beauty's wide towers
    assert warm_start_epochs(6) == 2  # Gowalla's
    assert warm_start_epochs(2) == warm_start_epochs(1) == 1  # at least one
    assert warm_start_epochs(None) == WARM_START_EPOCHS  # unknown: the constant


def test_incompatible_config_names_what_differs() -> None:
    old = model_for(12, 20)
    features = random_features(12, 20, seed=1)
    with pytest.raises(WarmStartError, match=r"embedding_dim: 16 -> 32"):
        warm_config(old.config, features, True, False, {"embedding_dim": 32})
    other = model_for(12, 20, use_features=False)
    with pytest.raises(WarmStartError, match="use_features: True -> False"):
        warm_start_weights(old, ids(12, 20), other.config, ids(12, 20))


def test_shape_mismatches_are_reported_with_both_shapes() -> None:
    old = model_for(12, 20).state_dict()
    new = model_for(12, 20, hidden_dims=(8,)).state_dict()
    rows = {"users": np.arange(12), "items": np.arange(20)}
    with pytest.raises(WarmStartError, match=r"user_tower\.mlp\.0\.weight: old \(32, \d+\), new"):
        transplant(old, new, rows)
    with pytest.raises(WarmStartError, match=r"user_id\.weight: old \(13, 16\), new \(12, 16\)"):
        transplant(old, model_for(11, 20).state_dict(), rows)
    del new["user_tower.mlp.0.weight"]
    with pytest.raises(WarmStartError, match="only in the old model"):
        transplant(old, new, rows)


def test_vocabulary_sizes_must_match_the_models() -> None:
    old = model_for(12, 20)
    with pytest.raises(WarmStartError, match="old model has 12 users"):
        warm_start_weights(old, ids(11, 20), old.config, ids(12, 20))
    with pytest.raises(WarmStartError, match="no item of the data"):
        warm_start_weights(
            old, ids(12, 20), old.config, Vocabularies(np.arange(12), 100 + ids(0, 20).items)
        )


def test_a_warm_start_keeps_what_the_old_model_learned() -> None:
    """One epoch from the old model scores like the old model; one epoch from scratch does not."""
    train, test, features = block_data()
    config = TwoTowerConfig.from_preset("default", **SMALL, epochs=25, lr=5e-3, loss="softmax")
    config = config.sized_for(features)
    old, _ = fit(config, train, None, features)
    vocab = ids(train.n_users, train.n_items)
    state, _ = warm_start_weights(old, vocab, config, vocab)
    ctx = TrainingContext.build(features, train, config)

    def recall(model: TwoTower) -> float:
        return validation_metrics(model, ctx, train, test)["recall@10"]

    warm, _ = fit(config, train, None, features, epochs=1, initial=state)
    cold, _ = fit(config, train, None, features, epochs=1)
    assert recall(old) > 0.8 and recall(warm) > 0.8 and recall(cold) < 0.5


def test_a_sequence_tower_warm_starts_on_a_grown_catalog() -> None:
    """The attention stack carries over bit for bit; its padding row is the new catalog's
    unknown item, so a new model reads old and new items in order."""
    old_vocab, new_vocab = grown_vocab()
    sequence = dict(
        sequence_model="attention", sequence_length=4, embedding_dim=16, id_dim=16,
        use_user_id=False, recent_history=0, use_features=False,
    )  # fmt: skip
    old = model_for(len(old_vocab.users), len(old_vocab.items), seed=7, **sequence)
    features = random_features(len(new_vocab.users), len(new_vocab.items), seed=1)
    config = warm_config(old.config, features, old.config.has_ratings, old.config.time_ordered)
    assert config.sequence_model == "attention" and config.n_items == len(new_vocab.items)
    state, report = warm_start_weights(old, old_vocab, config, new_vocab)
    stack = [name for name in state if name.startswith("user_tower.sequence.")]
    assert stack and set(stack) <= set(report.copied)
    assert all(torch.equal(state[name], old.state_dict()[name]) for name in stack)
    new = TwoTower(config)
    new.load_state_dict(state)
    with pytest.raises(WarmStartError, match="sequence_length"):
        warm_config(old.config, features, True, False, {"sequence_length": 8})
    items = torch.tensor([[config.n_items, 0, 5, len(new_vocab.items) - 1]])  # pad, old, new
    out = new.eval().user_embeddings({"sequence_items": items, "user_idx": torch.tensor([0])})
    assert out.shape == (1, config.retrieval_dim) and torch.isfinite(out).all()
