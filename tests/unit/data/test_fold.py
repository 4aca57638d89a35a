"""Folding events into data/: train grows, held-out pairs stay out, new users get sorted rows,
unknown items are counted drops, and data/ is replaced whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from towers.data.fold import fold_events, folded_seq
from towers.data.prepared import load_prepared
from towers.storage.events import StoredEvent
from towers.storage.root import Storage


@pytest.fixture
def storage(tiny_storage, tmp_path) -> Storage:
    shutil.copytree(tiny_storage.path("data"), tmp_path / "data")
    return Storage(tmp_path)


def event(seq: int, user, item, rating: float = 4.0, timestamp: int = 2_000_000_000):
    return StoredEvent(seq, f"e{seq}", user, item, rating, timestamp)


def ids(data, user_idx: int, item_idx: int) -> tuple:
    return data.users["user_id"].iloc[user_idx], data.items["item_id"].iloc[item_idx]


def pairs(interactions, data) -> set:
    users, items = data.users["user_id"].to_numpy(), data.items["item_id"].to_numpy()
    return set(zip(users[interactions.user_idx], items[interactions.item_idx], strict=True))


def test_fold_grows_train_and_the_user_vocabulary(storage):
    before = {s: load_prepared(storage, s) for s in ("random", "temporal")}
    old = before["random"]
    in_train = ids(old, int(old.train.user_idx[0]), int(old.train.item_idx[0]))
    in_test = ids(old, int(old.test.user_idx[0]), int(old.test.item_idx[0]))
    seen = pairs(old.train, old) | pairs(old.valid, old) | pairs(old.test, old)
    user = old.users["user_id"].iloc[3]
    new_item = next(i for i in old.items["item_id"] if (user, i) not in seen)
    newcomer = int(old.users["user_id"].max()) + 1
    events = [
        event(1, user, new_item, 2.0),
        event(2, *in_train, 1.0),
        event(3, *in_test),
        event(4, newcomer, new_item, 5.0),
        event(5, user, 10**9),  # an item data/ lacks
        event(6, user, new_item, 5.0),  # the same pair again: the latest counts
    ]
    manifest = fold_events(storage, events)
    assert manifest["fold"]["new_users"] == 1 and manifest["fold"]["unknown_items"] == 1
    assert manifest["fold"]["held_out_random"] >= 1 and folded_seq(storage) == 6
    assert manifest["drops"]["events_unknown_items"] == 1
    new = load_prepared(storage, "random")  # every file checked against the new manifest
    assert new.n_users == old.n_users + 1 and new.n_items == old.n_items
    assert list(new.users["user_id"]) == sorted(new.users["user_id"])
    assert pairs(new.test, new) == pairs(old.test, old)  # held-out parts: the same pairs
    added = pairs(new.train, new) - pairs(old.train, old)
    expected = {(user, new_item), (newcomer, new_item)}
    assert added == expected - pairs(old.test, old) - pairs(old.valid, old)
    frame = new.train.to_frame()
    users, items = new.users["user_id"].to_numpy(), new.items["item_id"].to_numpy()
    frame["user_id"], frame["item_id"] = users[frame.user_idx], items[frame.item_idx]
    rating = frame.set_index(["user_id", "item_id"])["rating"]
    assert rating[in_train] == 1.0 and rating[(user, new_item)] == 5.0
    temporal = load_prepared(storage, "temporal")
    assert len(temporal.train) >= len(before["temporal"].train) + 1
    # Nothing new: no fold, data/ untouched.
    assert fold_events(storage, events) is None
    assert [p.name for p in Path(storage.path()).iterdir()] == ["data"]  # no staging left


def test_events_of_another_fold_are_skipped(storage):
    fold_events(storage, [event(1, 1, 1)])
    before = load_prepared(storage, "random")
    assert fold_events(storage, [event(1, 1, 1)]) is None
    manifest = fold_events(storage, [event(1, 1, 1), event(2, 1, 2)])
    assert manifest["fold"]["events"] == 1 and manifest["events_folded"] == 2
    after = load_prepared(storage, "random")
    assert len(after.train) - len(before.train) <= 1
    assert np.array_equal(after.test.item_idx, before.test.item_idx)


def test_latest_update_is_the_newest_complete_one(storage):
    from towers import artifacts

    assert artifacts.latest_update(storage, "model") == "model"
    for seq in (3, 12):
        storage.write_json(f"{artifacts.updated('model', seq)}/x.json", {})
        storage.publish(artifacts.updated("model", seq), {})
    storage.write_json("model_u40/x.json", {})  # no manifest: half-written
    assert artifacts.latest_update(storage, "model") == "model_u12"
