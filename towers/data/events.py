"""Interactions posted as events (``POST /events``), checked as rows of the interactions file.

One contract for every way data comes in (docs/DESIGN.md, rule 13): each event becomes a
one-row table in the canonical columns and goes through the code that reads an interactions file
(``towers.data.contract``: ids, the rating or weight, the timestamp) and the rating check of
``towers.data.validation``; an error names the event (its position and ``event_id``) and the
field. On top, what only a served data set knows: the ids' type (a data set with integer ids
takes no ``"42"``) and which of ``rating``/``weight`` it has.

An event's fields, in the data set's terms:

* ``event_id``: the client's id of the event; a replay with the same id is ignored;
* ``user_id``, ``item_id``: raw ids, integers or strings as the data set has them;
* ``rating`` (explicit data, required, inside the data set's scale) or ``weight`` (implicit
  data, optional, >= 0, default 1);
* ``timestamp`` (optional; default: when the server received it): Unix seconds or milliseconds,
  or ISO-8601 text, as in the interactions file.

:func:`events_frame` reads stored events back as the canonical interactions columns
(``user_id, item_id, rating, timestamp``), the form ``data/`` is prepared from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

# The row-level reader of the interactions file; private there, and shared on purpose.
from towers.data.contract import _interactions
from towers.data.errors import DataError
from towers.data.files import TableFile
from towers.data.schema import InteractionTable, Schema
from towers.data.validation import check_ratings
from towers.storage.events import EventRow, StoredEvent

WHERE = "POST /events"


@dataclass
class EventFile(TableFile):
    """One event as a one-row interactions "file"; its rows are named by the event."""

    index: int = 0
    event_id: str = ""

    def line(self, row: int) -> str:
        return f"event {self.index} (event_id {self.event_id!r})"


def event_spec(schema: Schema) -> InteractionTable:
    """The interactions columns an event of this (canonical) schema has."""
    explicit = not schema.implicit
    return InteractionTable(
        user_id="user_id",
        item_id="item_id",
        rating="rating" if explicit else None,
        rating_scale=schema.interactions.rating_scale,
        weight=None if explicit else "weight",
        timestamp="timestamp",
    )


def _column(event: EventFile, name: str, value: Any) -> pa.Array:
    try:
        return pa.array([value])
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise DataError(f"{WHERE}: field {name!r}: {event.line(0)}: {value!r}: {err}") from err


def _check_id_type(event: EventFile, side: str, value: Any, id_type: str) -> None:
    integer = isinstance(value, int) and not isinstance(value, bool)
    if (id_type == "integer") != integer and isinstance(value, int | str):
        article = "an" if id_type == "integer" else "a"
        raise DataError(
            f"{WHERE}: field '{side}_id': {event.line(0)}: {value!r} is not {article} {id_type} "
            f"id (the data set's {side} ids are {id_type}s)"
        )


def check_event(
    index: int,
    event: Mapping[str, Any],
    schema: Schema,
    rating_scale: tuple[float, float],
    id_types: Mapping[str, str],
    now: int,
) -> EventRow:
    """One event as a stored row ``(event_id, user_id, item_id, rating, timestamp)``.

    Args:
        index: the event's position in its batch (for messages).
        event: the event's fields (module docstring); unknown keys are the caller's to refuse.
        schema: the data set's canonical schema (``data/schema.json``).
        rating_scale: the data set's scale (implicit data: weights, no scale).
        id_types: ``{"user": "integer"|"string", "item": ...}``, as the served catalog has them.
        now: Unix seconds for an event without a timestamp.

    Raises:
        DataError: naming the event and the field.
    """
    spec = event_spec(schema)
    file = EventFile(WHERE, pa.table({}), False, index, str(event.get("event_id")))
    value_key, other = ("rating", "weight") if spec.rating is not None else ("weight", "rating")
    if event.get(other) is not None:
        kind = "ratings" if other == "weight" else "no ratings (implicit feedback)"
        raise DataError(
            f"{WHERE}: field {other!r}: {file.line(0)}: this data set has {kind}; send "
            f"{value_key!r}"
        )
    for side in ("user", "item"):
        _check_id_type(file, side, event.get(f"{side}_id"), id_types[side])
    value = event.get(value_key)
    if value is None and value_key == "weight":
        value = 1.0  # an implicit event is one positive, as a row without a weight column
    timestamp = event.get("timestamp")
    values = {
        "user_id": event.get("user_id"),
        "item_id": event.get("item_id"),
        value_key: value,
        "timestamp": now if timestamp is None else timestamp,
    }
    file.table = pa.table({name: _column(file, name, v) for name, v in values.items()})
    try:
        table = _interactions([file], spec)  # ids, rating or weight, timestamp: the file's checks
    except DataError as err:  # a whole-column message ("must be numeric") names no row
        where = file.line(0)
        raise (err if where in str(err) else DataError(f"{err} ({where})")) from None
    rating = table.column("rating").to_numpy().astype(np.float64)
    check_ratings(rating, rating_scale, schema.implicit, f"{WHERE}: field {value_key!r}: "
                  f"{file.line(0)}")  # fmt: skip
    row = table.to_pylist()[0]
    return (file.event_id, row["user_id"], row["item_id"], float(row["rating"]), row["timestamp"])


def check_events(
    events: Sequence[Mapping[str, Any]],
    schema: Schema,
    rating_scale: tuple[float, float],
    id_types: Mapping[str, str],
    now: int,
) -> list[EventRow]:
    """Every event of a batch checked (:func:`check_event`); the first bad one raises."""
    return [
        check_event(i, event, schema, rating_scale, id_types, now) for i, event in enumerate(events)
    ]


def events_frame(events: Sequence[StoredEvent]) -> pd.DataFrame:
    """Stored events as the canonical interactions columns, in commit order."""
    return pd.DataFrame(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "rating": np.array([e.rating for e in events], np.float32),
            "timestamp": np.array([e.timestamp for e in events], np.int64),
        }
    )
