"""A split the data gives: each row's part read from a column or from the file it is in.

Benchmarks publish their own train/valid/test (BARS and LightGCN's Gowalla, RecBole's
``.train.inter``/``.test.inter``), so their results compare only on that split. The part of a
row comes from a column the schema names (``interactions.part``, labels ``train``, ``valid``,
``test``) or from the file it is read from (``prepare --interactions train.parquet
--test-interactions test.parquet [--valid-interactions valid.parquet]``). Rows carry the part as
an int8 code, a position in :data:`towers.data.splits.PARTS`.

Checks, each with the file, column and rows it is about:

- every label is one of train / valid / test (unknown labels listed, each with its count);
- a (user, item) pair is in one part only;
- the train and test parts have rows;
- every valid/test row's user and item have a train row (a cold user or item: the schema's
  ``uncovered`` rule, ``error`` by default; ``drop`` drops those rows and counts them).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from towers.data.errors import DataError
from towers.data.files import TableFile
from towers.data.splits import PARTS

log = logging.getLogger(__name__)
KEY = "interactions.part"  # the schema key that names the part column
SHOWN = 10  # unknown labels listed in an error, most frequent first
TRAIN, VALID, TEST = range(3)


def part_codes(file: TableFile, column: str) -> np.ndarray:
    """``(N,)`` int8 part codes of ``file``'s ``column`` of ``train``/``valid``/``test`` labels.

    Raises:
        DataError: the column is not text, or holds other labels (each listed with its count and
            first row) or empty cells.
    """
    values = file.table.column(column).combine_chunks()
    where = f"{file.path}: column {column!r} ({KEY})"
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(f"{where}: part labels must be text ({'/'.join(PARTS)}), got {values.type}")
    index = pc.index_in(values, value_set=pa.array(PARTS, values.type))
    unknown = index.is_null().to_numpy(zero_copy_only=False)
    if unknown.any():
        labels = pd.Series(values.to_pylist(), dtype=object)[unknown]
        rows = np.flatnonzero(unknown)
        shown = []
        counts = labels.fillna("\0").value_counts(sort=True)
        for label, count in counts.head(SHOWN).items():
            first = rows[int(np.argmax((labels.fillna("\0") == label).to_numpy()))]
            name = "an empty cell" if label == "\0" or not label.strip() else repr(label)
            shown.append(f"{name} × {count:,} (first at {file.line(int(first))})")
        more = f", and {len(counts) - SHOWN} more" if len(counts) > SHOWN else ""
        raise DataError(
            f"{where}: {int(unknown.sum()):,} rows have an unknown part label, {len(counts)} "
            f"distinct: {'; '.join(shown)}{more}; each row's part must be one of "
            f"{', '.join(PARTS)}"
        )
    return index.to_numpy(zero_copy_only=False).astype(np.int8)


class Origins:
    """Where each row of the concatenated interactions came from, for messages."""

    def __init__(self, files: list[TableFile], column: str | None) -> None:
        self.files = files
        self.column = column
        sizes = [f.table.num_rows for f in files]
        self.file_of = np.repeat(np.arange(len(files)), sizes)
        self.start = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)

    def at(self, row: int) -> str:
        """``"train.csv line 14"``: the file and line (or row) of concatenated row ``row``."""
        file_index = int(self.file_of[row])
        file = self.files[file_index]
        return f"{file.path} {file.line(row - int(self.start[file_index]))}"

    @property
    def what(self) -> str:
        """What gives the parts: the column (and its files) or the files."""
        paths = ", ".join(f.path for f in self.files[:3]) + (", …" if len(self.files) > 3 else "")
        if self.column is not None:
            return f"column {self.column!r} ({KEY}) of {paths}"
        return f"the part files ({paths})"


def _pair_keys(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense codes of users and items, and one int64 key per (user, item) pair."""
    user_code = pd.factorize(users)[0].astype(np.int64)
    item_code = pd.factorize(items)[0].astype(np.int64)
    return user_code, item_code, user_code * (int(item_code.max(initial=0)) + 1) + item_code


def _pairs_in_two_parts(key: np.ndarray, part: np.ndarray, inter: pa.Table, at: Origins) -> None:
    distinct = np.unique(key * 3 + part)  # one entry per (pair, part) present
    pairs, n_parts = np.unique(distinct // 3, return_counts=True)
    repeated = pairs[n_parts > 1]
    if len(repeated) == 0:
        return
    rows = np.flatnonzero(key == repeated[0])
    rows = rows[np.unique(part[rows], return_index=True)[1]]  # one row per part
    user, item = inter.column("user_id")[int(rows[0])], inter.column("item_id")[int(rows[0])]
    places = " and ".join(f"{PARTS[part[r]]} ({at.at(int(r))})" for r in rows)
    raise DataError(
        f"interactions: {len(repeated):,} (user, item) pairs are given in more than one part "
        f"by {at.what}, e.g. user {user.as_py()!r}, item {item.as_py()!r} in {places}; a pair "
        "belongs to one part: remove it from all but one"
    )


def _cold(code: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Mask of valid/test rows whose ``code`` (user or item) has no train row."""
    trained = np.zeros(int(code.max(initial=-1)) + 1, bool)
    trained[code[part == TRAIN]] = True
    return (part != TRAIN) & ~trained[code]


def _describe_cold(
    mask: np.ndarray, code: np.ndarray, part: np.ndarray, ids: pa.Array, what: str, at: Origins
) -> str:
    """``"12 rows (test 10, valid 2) name a user with no train row (4 users, e.g. …)"``."""
    first = int(np.flatnonzero(mask)[0])
    counts = {p: int((part[mask] == p).sum()) for p in (TEST, VALID)}
    by_part = ", ".join(f"{PARTS[p]} {n:,}" for p, n in counts.items() if n)
    distinct = len(np.unique(code[mask]))
    return (
        f"{int(mask.sum()):,} rows ({by_part}) name {'an' if what == 'item' else 'a'} {what} with "
        f"no train row ({distinct:,} {what}{'s' if distinct > 1 else ''}, e.g. "
        f"{ids[first].as_py()!r} at {at.at(first)})"
    )


def check_parts(
    inter: pa.Table, files: list[TableFile], column: str | None, uncovered: str
) -> tuple[pa.Table, dict[str, int]]:
    """Checks the parts of concatenated ``inter`` (a ``part`` int8 column, rows in the order of
    ``files``); returns it, less the cold rows when ``uncovered == "drop"``, and their counts.

    Args:
        inter: canonical interactions with ``user_id``, ``item_id`` and ``part``.
        files: the files ``inter`` was read from, in order (for messages).
        column: the part column's name in the files, or None when each file is one part.
        uncovered: the schema's rule, ``"error"`` or ``"drop"``.

    Returns:
        The checked table and ``{"cold_users": rows, "cold_items": rows}`` dropped (a row whose
        user and item are both cold counts in both).
    """
    at = Origins(files, column)
    part = inter.column("part").to_numpy().astype(np.int64)
    for code, name in ((TRAIN, "train"), (TEST, "test")):
        if not (part == code).any():
            raise DataError(
                f"interactions: the given split has no {name} rows ({at.what} gives "
                f"{', '.join(f'{PARTS[p]} {int((part == p).sum()):,}' for p in range(3))})"
            )
    users = inter.column("user_id").combine_chunks()
    items = inter.column("item_id").combine_chunks()
    user_code, item_code, key = _pair_keys(
        users.to_numpy(zero_copy_only=False), items.to_numpy(zero_copy_only=False)
    )
    _pairs_in_two_parts(key, part, inter, at)
    cold_user, cold_item = _cold(user_code, part), _cold(item_code, part)
    counts = {"cold_users": int(cold_user.sum()), "cold_items": int(cold_item.sum())}
    if not (cold_user.any() or cold_item.any()):
        return inter, counts
    said = [
        _describe_cold(mask, code, part, ids, what, at)
        for mask, code, ids, what in (
            (cold_user, user_code, users, "user"),
            (cold_item, item_code, items, "item"),
        )
        if mask.any()
    ]
    if uncovered == "error":
        raise DataError(
            f"interactions, parts given by {at.what}: {'; '.join(said)}: a model cannot rank for "
            "a user or an item it never "
            "trained on; move those rows into train, or set 'uncovered: drop' in the schema to "
            "drop them (counted)"
        )
    drop = cold_user | cold_item
    log.warning("dropped %d valid/test rows: %s", int(drop.sum()), "; ".join(said))
    return inter.filter(pa.array(~drop)), counts
