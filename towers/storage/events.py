"""The event log: interactions recorded after training, durable before they are acknowledged.

One SQLite file in WAL mode with ``synchronous=FULL``: a commit returns only after the write-ahead
log is fsync'd, so an event whose batch committed survives a ``SIGKILL`` (or a power cut) of the
process right after. SQLite because it is embedded (no server to run), transactional (a batch is
stored whole or not at all) and indexed (a replayed ``event_id`` is found by its unique index, not
by scanning a log); an append-only file would need its own framing, checksums and index to give
the same. One process writes: ``serving``'s ``EventStore`` deployment owns the file and every
other replica reaches it through a handle (docs/ARCHITECTURE.md, "Events").

Rows keep the data set's raw ids (integers or strings, as given), not model indices, so they
outlive a re-prepared vocabulary; ``seq`` numbers them in commit order (1, 2, ...), which is the
order subscribers replay them in.

Group commit: :meth:`EventLog.append_batches` stores several clients' batches in one transaction
(one fsync), each under its own savepoint, so one batch's failure leaves the others stored.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# event_id, user_id, item_id, rating, timestamp: what a client sends, checked (towers.data.events)
EventRow = tuple[str, int | str, int | str, float, int]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,        -- commit order, 1, 2, ... (SQLite's rowid)
    event_id TEXT NOT NULL UNIQUE,  -- the client's id: a replay is found here and ignored
    user_id NOT NULL,               -- raw ids, integer or text as the data set has them
    item_id NOT NULL,
    rating REAL NOT NULL,           -- the rating on the data set's scale (implicit: the weight)
    timestamp INTEGER NOT NULL      -- Unix seconds
);
"""


@dataclass(frozen=True)
class StoredEvent:
    """One stored interaction; ``seq`` is its position in commit order."""

    seq: int
    event_id: str
    user_id: int | str
    item_id: int | str
    rating: float
    timestamp: int


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one batch: how many events were new, how many replays; or the error."""

    accepted: int = 0
    duplicates: int = 0
    error: str | None = None


class EventLog:
    """The SQLite event log at ``path`` (created with its folder if absent).

    Thread-safe (one lock); meant to have one writing process. ``append_batches`` blocks for
    the fsync: call it off an event loop.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.executescript(_SCHEMA)

    def append_batches(self, batches: Sequence[Sequence[EventRow]]) -> list[BatchOutcome]:
        """Stores each batch whole or not at all, all of them in one transaction (one fsync).

        An ``event_id`` already stored, or repeated within the batches, is a duplicate: counted,
        not stored again (whatever else the replay says). Returns one outcome per batch; a batch
        the database refuses gets its ``error`` and stores nothing.
        """
        outcomes = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for batch in batches:
                    outcomes.append(self._append_one(batch))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcomes

    def _append_one(self, batch: Sequence[EventRow]) -> BatchOutcome:
        self._db.execute("SAVEPOINT batch")
        accepted = 0
        try:
            for row in batch:
                cursor = self._db.execute(
                    "INSERT INTO events (event_id, user_id, item_id, rating, timestamp)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                    row,
                )
                accepted += cursor.rowcount
        except (sqlite3.Error, ValueError, TypeError) as err:
            self._db.execute("ROLLBACK TO batch")
            self._db.execute("RELEASE batch")
            return BatchOutcome(error=f"{type(err).__name__}: {err}")
        self._db.execute("RELEASE batch")
        return BatchOutcome(accepted, len(batch) - accepted)

    def append(self, batch: Sequence[EventRow]) -> BatchOutcome:
        """One batch, committed (fsync'd) before this returns; raises ``ValueError`` if refused."""
        outcome = self.append_batches([batch])[0]
        if outcome.error is not None:
            raise ValueError(f"{self.path}: batch refused: {outcome.error}")
        return outcome

    def since(self, seq: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """Events after ``seq`` in commit order (at most ``limit``)."""
        with self._lock:
            return _since(self._db, seq, limit)

    def last_seq(self) -> int:
        """The ``seq`` of the last stored event (0 when empty)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _since(db: sqlite3.Connection, seq: int, limit: int | None) -> list[StoredEvent]:
    query = "SELECT seq, event_id, user_id, item_id, rating, timestamp FROM events"
    query += " WHERE seq > ? ORDER BY seq" + (" LIMIT ?" if limit is not None else "")
    args = (seq,) if limit is None else (seq, limit)
    return [StoredEvent(*row) for row in db.execute(query, args)]


def read_events(path: str | Path, since: int = 0) -> list[StoredEvent]:
    """Events after ``since`` from the log at ``path``, opened read-only: a reader beside the
    ``EventStore`` that writes it (``ray_jobs.pipeline --update``). A missing file: none."""
    path = Path(path).expanduser()
    if not path.is_file():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _since(db, since, None)
    finally:
        db.close()
