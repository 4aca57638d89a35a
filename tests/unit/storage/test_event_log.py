"""The event log: a replayed event id is ignored, a batch is stored whole or not at all, and what
was committed is there after the log is closed and opened again."""

from __future__ import annotations

import pytest

from towers.storage.events import EventLog, StoredEvent, read_events


def rows(*ids: str, user: int | str = 1) -> list[tuple]:
    return [(event_id, user, 10 + n, 4.0, 1_700_000_000 + n) for n, event_id in enumerate(ids)]


def test_replays_of_an_event_id_are_counted_not_stored(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    first = log.append(rows("a", "b"))
    assert (first.accepted, first.duplicates) == (2, 0)
    again = log.append(rows("b", "c", "c"))  # one replay from before, one within the batch
    assert (again.accepted, again.duplicates) == (1, 2)
    assert [e.event_id for e in log.since(0)] == ["a", "b", "c"]
    assert [e.seq for e in log.since(1)] == [2, 3] and log.last_seq() == 3


def test_a_refused_batch_stores_nothing_and_spares_the_others(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    bad = [*rows("x", "y"), ("z", None, 1, 4.0, 0)]  # a null user: refused by the database
    outcomes = log.append_batches([rows("a"), bad, rows("b")])
    assert [o.accepted for o in outcomes] == [1, 0, 1]
    assert outcomes[1].error is not None and "NOT NULL" in outcomes[1].error
    assert [e.event_id for e in log.since()] == ["a", "b"]
    with pytest.raises(ValueError, match="batch refused"):
        log.append(bad)
    assert len(log) == 2


def test_reopened_log_has_every_committed_event_with_its_types(tmp_path):
    path = tmp_path / "nested" / "events.sqlite"
    log = EventLog(path)
    log.append(rows("a", user="u-7"))
    log.append(rows("b", user=7))
    log.close()
    reopened = EventLog(path)
    assert reopened.since() == [
        StoredEvent(1, "a", "u-7", 10, 4.0, 1_700_000_000),
        StoredEvent(2, "b", 7, 10, 4.0, 1_700_000_000),  # integer ids stay integers
    ]
    assert reopened.append(rows("a")).duplicates == 1  # the unique index survived too
    journal = reopened._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal" and reopened._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_read_events_reads_beside_the_writer(tmp_path):
    """``read_events`` (``pipeline --update``) opens the log read-only while it is open for
    writing, reads what was committed after a seq, and finds nothing where there is no log."""
    path = tmp_path / "events.sqlite"
    log = EventLog(path)
    log.append(rows("a", "b", "c"))
    assert [e.event_id for e in read_events(path, since=1)] == ["b", "c"]
    log.append(rows("d"))
    assert [e.seq for e in read_events(path)] == [1, 2, 3, 4]
    assert read_events(tmp_path / "none.sqlite") == []
    assert not (tmp_path / "none.sqlite").exists()
