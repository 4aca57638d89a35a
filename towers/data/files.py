"""Reading the contract's tables: one Parquet or CSV file, or a folder of them, local or by URI.

Each file is read on its own and kept with its path, so an error names the file (and, for CSV,
the line) where the bad value is. CSV columns are typed by pyarrow's inference, except the
columns the caller names as text (ids, multi-valued and vector cells), which stay strings so that
``"007"`` is not read as 7.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from towers.data.errors import DataError

log = logging.getLogger(__name__)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv"}


@dataclass
class TableFile:
    """One file of a table: its path and contents."""

    path: str
    table: pa.Table
    csv: bool

    def line(self, row: int) -> str:
        """Where row ``row`` (0-based) is, for messages: ``"line 12"`` (CSV) or ``"row 10"``."""
        return f"line {row + 2}" if self.csv else f"row {row}"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(pafs.LocalFileSystem().normalize_path(uri))


def _format(path: str) -> str | None:
    for suffix, kind in FORMATS.items():
        if path.lower().endswith(suffix):
            return kind
    return None


def list_files(uri: str, what: str) -> list[tuple[pafs.FileSystem, str, str]]:
    """``(filesystem, path, format)`` of the table's files, sorted by path."""
    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{what} table {uri}: no such file or folder")
    if info.type == pafs.FileType.File:
        kind = _format(path)
        if kind is None:
            raise DataError(f"{what} table {uri}: not a .parquet or .csv file")
        return [(fs, path, kind)]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(f.path for f in found if f.type == pafs.FileType.File and _format(f.path))
    kinds = {_format(f) for f in files}
    if not files:
        raise DataError(f"{what} table {uri}: the folder holds no .parquet or .csv files")
    if len(kinds) > 1:
        raise DataError(f"{what} table {uri}: the folder mixes Parquet and CSV files")
    return [(fs, f, _format(f) or "") for f in files]


def fingerprint(uri: str, what: str) -> list[tuple[str, int, int]]:
    """``(path, size, mtime in ns)`` of each of the table's files: what a changed input changes,
    without reading the data (the same on object storage)."""
    out = []
    for fs, path, _ in list_files(uri, what):
        info = fs.get_file_info(path)
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        out.append((path, int(info.size or 0), int(mtime)))
    return out


def read_table(uri: str, what: str, text_columns: tuple[str, ...] = ()) -> list[TableFile]:
    """Reads every file of a table; ``text_columns`` of CSV files are read as strings."""
    out = []
    for fs, path, kind in list_files(uri, what):
        try:
            if kind == "parquet":
                with fs.open_input_file(path) as src:
                    table = pq.read_table(src)
            else:
                delimiter = "\t" if path.lower().endswith(".tsv") else ","
                convert = pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in text_columns},
                    strings_can_be_null=True,
                )
                with fs.open_input_stream(path) as src:
                    table = pacsv.read_csv(
                        src,
                        parse_options=pacsv.ParseOptions(delimiter=delimiter),
                        convert_options=convert,
                    )
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{what} table {path}: cannot be read: {err}") from err
        if table.num_rows == 0:
            raise DataError(f"{what} table {path}: the file has no rows")
        out.append(TableFile(path, table, kind == "csv"))
    first = out[0].table.column_names
    for other in out[1:]:
        if other.table.column_names != first:
            raise DataError(
                f"{what} table {uri}: its files have different columns: {out[0].path} has "
                f"{first}, {other.path} has {other.table.column_names}"
            )
    log.info("%s: %d file(s), %d rows", what, len(out), sum(f.table.num_rows for f in out))
    return out
