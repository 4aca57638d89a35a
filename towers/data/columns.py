"""Typed conversion of one column of one file, with an error that names file, column and row.

Every function takes the :class:`~towers.data.files.TableFile` and the column name and returns
the canonical values (a NumPy array or a pandas Series), or raises ``DataError`` saying what is
wrong where: ``items.csv: column 'price' (items.features.price): line 7: 'cheap' is not a
number``. Nothing is silently coerced.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from towers.data.errors import DataError
from towers.data.files import TableFile
from towers.data.schema import Feature

MS_THRESHOLD = 1e11  # Unix seconds stay below this until the year 5138; milliseconds pass it now


def _where(file: TableFile, column: str, key: str) -> str:
    return f"{file.path}: column {column!r} ({key})"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _unix_seconds(times: pd.Series) -> np.ndarray:
    """Whole seconds since 1970 (UTC), whatever unit pandas holds the times in."""
    return ((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def require(file: TableFile, columns: dict[str, str]) -> None:
    """Each ``column -> schema key`` must be in the file."""
    have = file.table.column_names
    for column, key in columns.items():
        if column not in have:
            raise DataError(
                f"{file.path}: column {column!r} named by the schema ({key}) is missing; the "
                f"file has {have}"
            )


def ids(file: TableFile, column: str, key: str) -> pa.Array:
    """Integer or string ids; nulls, empty strings, floats and lists are errors."""
    values = file.table.column(column).combine_chunks()
    where = _where(file, column, key)
    kind = values.type
    if not (
        pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
    ):
        raise DataError(f"{where}: ids must be integers or strings, got {kind}")
    nulls = values.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        raise DataError(f"{where}: {file.line(_first(nulls))}: the id is empty (null)")
    if pa.types.is_integer(kind):
        return values.cast(pa.int64())
    values = values.cast(pa.string())
    empty = pc.equal(pc.utf8_trim_whitespace(values), "").to_numpy(zero_copy_only=False)
    if empty.any():
        raise DataError(f"{where}: {file.line(_first(empty))}: the id is an empty string")
    return values


def numbers(file: TableFile, column: str, key: str, dtype: type = np.float64) -> np.ndarray:
    """A numeric column (nulls become NaN); text that is not a number is an error."""
    values = file.table.column(column).combine_chunks()
    where = _where(file, column, key)
    if pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        raise DataError(f"{where}: {file.line(0)}: a list in a numeric column")
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = pd.Series(values.to_pylist(), dtype=object)
        parsed = pd.to_numeric(text, errors="coerce")
        bad = (parsed.isna() & text.notna()).to_numpy()
        if bad.any():
            row = _first(bad)
            raise DataError(f"{where}: {file.line(row)}: {text[row]!r} is not a number")
        return parsed.to_numpy(dtype)
    if not (
        pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
        or pa.types.is_null(values.type)
        or pa.types.is_decimal(values.type)
    ):
        raise DataError(f"{where}: must be numeric, got {values.type}")
    return values.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(dtype)


def timestamps(file: TableFile, column: str, key: str, unit: str) -> np.ndarray:
    """Unix seconds (int64) from seconds or milliseconds (``unit`` auto/s/ms), an Arrow
    timestamp or ISO-8601 text; a missing or unparsable value is an error."""
    values = file.table.column(column).combine_chunks()
    where = _where(file, column, key)
    nulls = values.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        raise DataError(f"{where}: {file.line(_first(nulls))}: the timestamp is missing")
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return _unix_seconds(pd.to_datetime(values.to_pandas(), utc=True))
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = pd.Series(values.to_pylist(), dtype=object)
        numeric = pd.to_numeric(text, errors="coerce")
        if numeric.notna().all():
            seconds = numeric.to_numpy(np.float64)
        else:
            parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
            bad = parsed.isna().to_numpy()
            if bad.any():
                row = _first(bad)
                raise DataError(
                    f"{where}: {file.line(row)}: {text[row]!r} is not a timestamp (Unix seconds "
                    "or milliseconds, or ISO-8601 such as 2024-05-01T12:00:00Z)"
                )
            return _unix_seconds(parsed)
    elif pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        seconds = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        raise DataError(f"{where}: a timestamp must be a number, an Arrow timestamp or text")
    if not np.isfinite(seconds).all():
        raise DataError(f"{where}: {file.line(_first(~np.isfinite(seconds)))}: not finite")
    if unit == "ms" or (unit == "auto" and len(seconds) and np.abs(seconds).max() > MS_THRESHOLD):
        seconds = seconds / 1000.0
    return np.floor(seconds).astype(np.int64)


def feature(file: TableFile, f: Feature, key: str) -> pd.Series:
    """One feature column as the encoders take it: scalars (None for missing), lists for
    multi-valued cells and vectors, text."""
    values = file.table.column(f.column).combine_chunks()
    where = _where(file, f.column, key)
    is_list = pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
    is_list = is_list or pa.types.is_fixed_size_list(values.type)
    is_text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if f.kind == "categorical" or f.kind == "text":
        if is_list:
            cells = values.to_pylist()
            row = next(i for i, c in enumerate(cells) if c is not None)
            raise DataError(f"{where}: {file.line(row)}: a list {cells[row]!r} in a scalar column")
        if f.kind == "text" and not (is_text or pa.types.is_null(values.type)):
            raise DataError(f"{where}: text must be strings, got {values.type}")
        return pd.Series(values.to_pylist(), dtype=object)
    if f.kind == "numeric":
        return pd.Series(numbers(file, f.column, key))
    if f.kind == "multi_categorical":
        if is_list:
            return pd.Series([c or [] for c in values.to_pylist()], dtype=object)
        if not is_text:
            raise DataError(f"{where}: a multi-valued column must hold lists or delimited text")
        if f.delimiter is None:
            raise DataError(
                f"{where}: text cells need a delimiter (items.features.<name>.delimiter, e.g. '|')"
            )
        cells = [
            [] if c is None else [v.strip() for v in c.split(f.delimiter) if v.strip()]
            for c in values.to_pylist()
        ]
        return pd.Series(cells, dtype=object)
    # vector
    if is_text and f.delimiter is not None:
        cells = [None if c is None else c.split(f.delimiter) for c in values.to_pylist()]
    elif is_list:
        cells = values.to_pylist()
    else:
        raise DataError(f"{where}: a vector column must hold lists (or text with a delimiter)")
    out = []
    for row, cell in enumerate(cells):
        if cell is None:
            out.append(None)
            continue
        try:
            vector = [float(v) for v in cell]
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {file.line(row)}: not a list of numbers") from err
        if len(vector) != f.dim:
            raise DataError(f"{where}: {file.line(row)}: {len(vector)} values, expected {f.dim}")
        out.append(vector)
    return pd.Series(out, dtype=object)
