"""Events are checked as rows of the interactions file: each bad field is named with its event."""

from __future__ import annotations

import pytest

from towers.data.errors import DataError
from towers.data.events import check_events, events_frame
from towers.data.schema import InteractionTable, Schema
from towers.storage.events import StoredEvent

EXPLICIT = Schema(InteractionTable(rating="rating", rating_scale=(1.0, 5.0), timestamp="ts"))
IMPLICIT = Schema(InteractionTable(timestamp="ts"))
INTEGER_IDS = {"user": "integer", "item": "integer"}
OK = {"event_id": "e1", "user_id": 1, "item_id": 2, "rating": 4}


def test_events_become_canonical_rows():
    events = [OK, {**OK, "event_id": "e2", "rating": 5.0, "timestamp": "2024-05-01T12:00:00Z"}]
    events.append({**OK, "event_id": "e3", "timestamp": 1_700_000_000_123})  # milliseconds
    rows = check_events(events, EXPLICIT, (1.0, 5.0), INTEGER_IDS, now=1_600_000_000)
    assert rows == [
        ("e1", 1, 2, 4.0, 1_600_000_000),  # no timestamp: when it was received
        ("e2", 1, 2, 5.0, 1_714_564_800),
        ("e3", 1, 2, 4.0, 1_700_000_000),
    ]
    implicit = {"event_id": "i", "user_id": "u", "item_id": "v"}
    strings = {"user": "string", "item": "string"}
    assert check_events([implicit], IMPLICIT, (0.0, 1.0), strings, 5) == [("i", "u", "v", 1.0, 5)]
    frame = events_frame([StoredEvent(1, *rows[0])])
    assert frame.columns.tolist() == ["user_id", "item_id", "rating", "timestamp"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rating": 6}, "ratings outside [1.0, 5.0]"),
        ({"rating": None}, "the rating is missing"),
        ({"rating": "good"}, "'good' is not a number"),
        ({"rating": True}, "must be numeric"),
        ({"user_id": "1"}, "'1' is not an integer id"),
        ({"item_id": 2.5}, "ids must be integers or strings"),
        ({"user_id": None}, "ids must be integers or strings"),
        ({"timestamp": "yesterday"}, "'yesterday' is not a timestamp"),
        ({"timestamp": {"s": 1}}, "a timestamp must be a number"),
        ({"weight": 1.0}, "this data set has ratings; send 'rating'"),
    ],
)
def test_a_bad_field_is_named_with_its_event(change, message):
    events = [OK, {**OK, "event_id": "bad", **change}]
    with pytest.raises(DataError, match="event 1 \\(event_id 'bad'\\)") as err:
        check_events(events, EXPLICIT, (1.0, 5.0), INTEGER_IDS, now=0)
    assert message in str(err.value)


def test_implicit_events_take_weights_not_ratings():
    event = {"event_id": "w", "user_id": 1, "item_id": 2}
    with pytest.raises(DataError, match="no ratings .implicit feedback.; send 'weight'"):
        check_events([{**event, "rating": 3}], IMPLICIT, (0.0, 1.0), INTEGER_IDS, 0)
    with pytest.raises(DataError, match="a weight must be a number >= 0"):
        check_events([{**event, "weight": -1}], IMPLICIT, (0.0, 1.0), INTEGER_IDS, 0)
    assert check_events([{**event, "weight": 3}], IMPLICIT, (0.0, 1.0), INTEGER_IDS, 0)[0][3] == 3
