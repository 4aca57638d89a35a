"""Your own data: interactions (+ items, + users) files and a schema → the canonical tables.

``load_dataset("events.parquet", items="items.csv", schema=Schema.load("schema.yaml"))`` reads the
files (:mod:`towers.data.files`), checks and converts every named column
(:mod:`towers.data.columns`), and returns :class:`~towers.data.raw.RawData` whose tables use the
canonical names (``user_id``, ``item_id``, ``rating``, ``timestamp`` and each feature's name) and
whose schema says so. Without a schema one is inferred (:mod:`towers.data.inference`) and logged.

Cross-table rules: ids in an items or users table are unique; every interaction's item (user)
is in its table, or, with ``uncovered: drop`` in the schema, the interaction is dropped and
counted. Items of the items table that no interaction names are kept: the item tower embeds
them from their features.

A split the data gives (``given=True``): each row's part comes from the schema's
``interactions.part`` column, or from its file (``part_files``: the test and valid files;
``interactions`` is then the train part); :mod:`towers.data.given` checks the parts and the
canonical interactions carry them as an int8 ``part`` column.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from towers.data import columns
from towers.data.errors import DataError
from towers.data.files import TableFile, read_table
from towers.data.given import check_parts, part_codes
from towers.data.inference import infer_schema
from towers.data.raw import RawData
from towers.data.schema import EntityTable, Feature, InteractionTable, Schema
from towers.data.splits import PARTS

log = logging.getLogger(__name__)
IMPLICIT_SCALE = (0.0, 1.0)  # implicit rows carry their weight (1.0 by default) as the rating


def _text_columns(entity: EntityTable | None) -> tuple[str, ...]:
    if entity is None:
        return ()
    return tuple(
        f.column for f in entity.features if f.kind in ("multi_categorical", "text", "vector")
    )


def _interactions(
    files: list[TableFile], spec: InteractionTable, given: str | list[int] | None = None
) -> pa.Table:
    """The canonical interactions of ``files``; with ``given`` (the part column's name, or one
    part code per file) a ``part`` column too."""
    parts = []
    for index, file in enumerate(files):
        named = {spec.user_id: "interactions.user_id", spec.item_id: "interactions.item_id"}
        if isinstance(given, str):
            named[given] = "interactions.part"
        for key in ("rating", "weight", "timestamp"):
            if getattr(spec, key) is not None:
                named[getattr(spec, key)] = f"interactions.{key}"
        columns.require(file, named)
        n = file.table.num_rows
        if spec.rating is not None:
            rating = columns.numbers(file, spec.rating, "interactions.rating")
        elif spec.weight is not None:
            rating = columns.numbers(file, spec.weight, "interactions.weight")
            if (rating < 0).any() or np.isnan(rating).any():
                row = int(np.flatnonzero((rating < 0) | np.isnan(rating))[0])
                raise DataError(
                    f"{file.path}: column {spec.weight!r} (interactions.weight): "
                    f"{file.line(row)}: a weight must be a number >= 0"
                )
        else:
            rating = np.ones(n)
        if spec.rating is not None and np.isnan(rating).any():
            row = int(np.flatnonzero(np.isnan(rating))[0])
            raise DataError(
                f"{file.path}: column {spec.rating!r} (interactions.rating): {file.line(row)}: "
                "the rating is missing"
            )
        if spec.timestamp is not None:
            ts = columns.timestamps(
                file, spec.timestamp, "interactions.timestamp", spec.timestamp_unit
            )
        else:
            ts = np.zeros(n, np.int64)
        table = {
            "user_id": columns.ids(file, spec.user_id, "interactions.user_id"),
            "item_id": columns.ids(file, spec.item_id, "interactions.item_id"),
            "rating": pa.array(rating, pa.float32()),
            "timestamp": pa.array(ts, pa.int64()),
        }
        if isinstance(given, str):
            table["part"] = pa.array(part_codes(file, given))
        elif given is not None:
            table["part"] = pa.array(np.full(n, given[index], np.int8))
        parts.append(pa.table(table))
    return _concat(parts, files, "interactions")


def _concat(parts: list[pa.Table], files: list[TableFile], what: str) -> pa.Table:
    kinds = {p.schema: f.path for p, f in zip(parts, files, strict=True)}
    if len(kinds) > 1:
        shown = "; ".join(f"{path}: {schema.types}" for schema, path in kinds.items())
        raise DataError(f"{what}: its files disagree on column types ({shown})")
    return pa.concat_tables(parts)


def _entity(files: list[TableFile], entity: EntityTable, side: str, key: str) -> pd.DataFrame:
    frames = []
    for file in files:
        named = {entity.id: f"{side}.id"}
        named.update({f.column: f"{side}.features.{f.name}" for f in entity.features})
        named.update({c: f"{side}.display" for c in entity.display})
        columns.require(file, named)
        frame = {key: columns.ids(file, entity.id, f"{side}.id").to_pandas()}
        for f in entity.features:
            frame[f.name] = columns.feature(file, f, f"{side}.features.{f.name}")
        for column in entity.display:
            if column not in frame:
                frame[column] = pd.Series(file.table.column(column).to_pylist(), dtype=object)
        frames.append(pd.DataFrame(frame))
    table = pd.concat(frames, ignore_index=True)
    repeated = table[key].duplicated()
    if repeated.any():
        raise DataError(
            f"{side} table: ids repeat, e.g. {table.loc[repeated, key].head(5).tolist()}"
        )
    return table


def _canonical(entity: EntityTable | None, key: str) -> EntityTable:
    """The entity with columns renamed as the canonical tables have them."""
    if entity is None:
        return EntityTable(key)
    renamed = tuple(replace(f, column=f.name) for f in entity.features)
    return EntityTable(key, renamed, entity.display)


def _covered(
    inter: pa.Table, table: pd.DataFrame, key: str, side: str, uncovered: str
) -> tuple[pa.Table, int]:
    known = pa.array(table[key].to_numpy())
    inside = pc.is_in(inter.column(key), value_set=known.cast(inter.column(key).type))
    missing = int(len(inter) - pc.sum(inside).as_py())
    if missing == 0:
        return inter, 0
    examples = pc.filter(inter.column(key), pc.invert(inside)).unique()[:5]
    if uncovered == "error":
        raise DataError(
            f"interactions: {missing:,} rows name a {key} absent from the {side} table (e.g. "
            f"{examples.to_pylist()}); add them to the table or set 'uncovered: drop' in the "
            "schema to drop those rows"
        )
    log.warning("dropped %d interactions whose %s is not in the %s table", missing, key, side)
    return inter.filter(inside), missing


def _part_files(
    interactions: str, part_files: dict[str, str], spec: InteractionTable | None
) -> tuple[list[TableFile], list[int]]:
    """The files of every part (train first) and each file's part code."""
    if spec is not None and spec.part is not None:
        raise DataError(
            f"the parts are given twice: by the schema's column {spec.part!r} (interactions.part) "
            f"and by files ({', '.join(part_files.values())}); give one of the two"
        )
    unknown = sorted(set(part_files) - {"valid", "test"})
    if unknown or "test" not in part_files:
        raise DataError(f"part files: need 'test' (and 'valid' optionally), got {unknown}")
    files, codes = [], []
    for code, name in enumerate(PARTS):
        path = interactions if name == "train" else part_files.get(name)
        if path is not None:
            read = read_table(path, f"{name} interactions")
            files += read
            codes += [code] * len(read)
    return files, codes


def load_dataset(
    interactions: str,
    items: str | None = None,
    users: str | None = None,
    schema: Schema | None = None,
    given: bool = False,
    part_files: dict[str, str] | None = None,
) -> tuple[RawData, dict[str, int]]:
    """Reads and checks a data set in the contract's form; returns it with counts of drops.

    Args:
        interactions, items, users: the tables' files or folders (local or URI).
        schema: names the columns; inferred from the tables (and logged) when None.
        given: read each row's part of the split the data gives (the schema's
            ``interactions.part`` column, or ``part_files``).
        part_files: ``{"test": path, "valid": path}`` (valid optional): one file per part,
            ``interactions`` being the train part.
    """
    text = (_text_columns(schema.items), _text_columns(schema.users)) if schema else ((), ())
    file_parts: list[int] | None = None
    if part_files:
        spec = schema.interactions if schema else None
        inter_files, file_parts = _part_files(interactions, part_files, spec)
    else:
        inter_files = read_table(interactions, "interactions")
    item_files = read_table(items, "items", text[0]) if items else []
    user_files = read_table(users, "users", text[1]) if users else []
    if schema is None:
        schema = infer_schema(inter_files[0].table, item_files, user_files)
        log.warning(
            "no --schema given; inferred (save it to a file to edit):\n%s", schema.to_yaml()
        )
    for side, table, entity in (("items", items, schema.items), ("users", users, schema.users)):
        if table and entity is None:
            raise DataError(f"the schema has no '{side}' section for the {side} table {table}")
        if entity is not None and not table:
            raise DataError(f"the schema describes {side} but no {side} table was given")
    if given and file_parts is None and schema.interactions.part is None:
        raise DataError(
            "--split given needs each row's part: name its column in the schema "
            "(interactions.part: <column>, labels train/valid/test) or give one file per part "
            "(--interactions TRAIN --test-interactions TEST [--valid-interactions VALID])"
        )
    column = schema.interactions.part if given and file_parts is None else None
    inter = _interactions(inter_files, schema.interactions, column or file_parts)
    drops = {"uncovered_items": 0, "uncovered_users": 0}
    if column is not None or file_parts is not None:
        inter, cold = check_parts(inter, inter_files, column, schema.uncovered)
        drops.update(cold)
    tables = {}
    for side, key, files in (("items", "item_id", item_files), ("users", "user_id", user_files)):
        entity = schema.side(side)
        if entity is None:  # ids only, from the interactions
            ids = inter.column(key).unique()
            tables[side] = pd.DataFrame({key: ids.to_pandas()})
            continue
        tables[side] = _entity(files, entity, side, key)
        int_ids = pd.api.types.is_integer_dtype(tables[side][key])
        if int_ids != pa.types.is_integer(inter.column(key).type):
            raise DataError(
                f"{side} table ids are {tables[side][key].dtype}, the interactions' {key} "
                f"{inter.column(key).type}: the two must be of one type"
            )
        inter, drops[f"uncovered_{side}"] = _covered(
            inter, tables[side], key, side, schema.uncovered
        )
    rating = inter.column("rating").to_numpy()
    if schema.implicit:
        scale = IMPLICIT_SCALE
    elif schema.interactions.rating_scale is not None:
        scale = schema.interactions.rating_scale
    else:
        scale = (float(rating.min()), float(rating.max()))
        if scale[0] == scale[1]:
            scale = (min(0.0, scale[0]), max(1.0, scale[1]))
        log.warning("rating scale inferred from the data: [%g, %g]", *scale)
    canonical = Schema(
        interactions=InteractionTable(
            "user_id",
            "item_id",
            rating=None if schema.implicit else "rating",
            rating_scale=None if schema.implicit else scale,
            timestamp="timestamp" if schema.interactions.timestamp else None,
        ),
        items=_canonical(schema.items, "item_id"),
        users=_canonical(schema.users, "user_id"),
        uncovered=schema.uncovered,
    )
    source = (
        f"files:{interactions}"
        + "".join(f",{name}={path}" for name, path in (part_files or {}).items())
        + (f",items={items}" if items else "")
        + (f",users={users}" if users else "")
    )
    raw = RawData(
        inter.to_pandas(), tables["items"], tables["users"], scale, source, canonical, schema
    )
    return raw, drops


def load_items(path: str, source_schema: Schema) -> pd.DataFrame:
    """An items table in the form the data set was prepared from (``source_schema``, the
    schema as the files name their columns), checked as ``load_dataset`` checks it:
    ``item_id`` plus one column per feature and display column."""
    if source_schema.items is None:
        raise DataError(f"items table {path}: the data set's schema has no items section")
    text = _text_columns(source_schema.items)
    return _entity(read_table(path, "items", text), source_schema.items, "items", "item_id")


__all__ = ["Feature", "load_dataset"]
