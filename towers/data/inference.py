"""A schema inferred from the tables when no schema file is given: the obvious reading.

Interactions: the user and item id columns by name (``user_id``, ``userId``, ``customer_id``,
``item_id``, ``movieId``, ``product_id``, ``asin``, …), a rating column by name (``rating``,
``score``, ``stars``; none means implicit feedback), a timestamp by name (``timestamp``, ``ts``,
``time``, ``date``, …). Items/users: the id column (the interactions' name, else by name, else the
first column); ``title``/``name``/``url``/``image`` columns are displayed; every other column
becomes a feature by its type — lists of text: multi-valued categorical; lists of numbers: a
vector; numbers: numeric; text with ``|`` in most cells: multi-valued; long text: hashed words;
other text and booleans: categorical. The result is logged as YAML to save and edit.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from towers.data.errors import DataError
from towers.data.files import TableFile
from towers.data.schema import EntityTable, Feature, InteractionTable, Schema

USER_NAMES = (
    "user_id",
    "userid",
    "user",
    "customer_id",
    "customer",
    "uid",
    "reviewerid",
    "visitorid",
    "member_id",
)
ITEM_NAMES = (
    "item_id",
    "itemid",
    "item",
    "movieid",
    "movie_id",
    "product_id",
    "productid",
    "asin",
    "sku",
    "iid",
    "article_id",
)
RATING_NAMES = ("rating", "ratings", "score", "stars", "overall")
TIME_NAMES = (
    "timestamp",
    "ts",
    "time",
    "unixreviewtime",
    "datetime",
    "date",
    "event_time",
    "created_at",
)
DISPLAY_NAMES = ("title", "name", "url", "link", "image", "image_url", "imurl", "thumbnail")
TEXT_MIN_WORDS = 4.0  # mean words per cell from which a text column is free text
CATEGORICAL_MAX_SHARE = 0.5  # distinct / rows up to which a text column is categorical


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")  # userId, user_id, user-id alike


def _find(names: Sequence[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {_key(n): n for n in names}
    return next((lowered[_key(c)] for c in candidates if _key(c) in lowered), None)


def _feature(name: str, column: pa.ChunkedArray) -> Feature | None:
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        value = kind.value_type
        if pa.types.is_floating(value) or pa.types.is_integer(value):
            lengths = pc.list_value_length(column.combine_chunks()).drop_null()
            dim = int(pc.max(lengths).as_py() or 0)
            return Feature(name, "vector", dim=dim) if dim else None
        return Feature(name, "multi_categorical")
    if pa.types.is_boolean(kind):
        return Feature(name, "categorical")
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return Feature(name, "numeric")
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None  # dates, structs, binary: left out (say so in a schema file to use them)
    cells = column.drop_null()
    if len(cells) == 0:
        return None
    piped = pc.mean(pc.cast(pc.match_substring(cells, "|"), pa.int8())).as_py()
    if piped > 0.5:
        return Feature(name, "multi_categorical", delimiter="|")
    words = pc.mean(pc.list_value_length(pc.utf8_split_whitespace(cells))).as_py()
    if words >= TEXT_MIN_WORDS:
        return Feature(name, "text")
    if len(pc.unique(cells)) <= max(2, CATEGORICAL_MAX_SHARE * len(cells)):
        return Feature(name, "categorical")
    return Feature(name, "text")


def _entity(files: list[TableFile], id_hint: str, candidates: tuple[str, ...]) -> EntityTable:
    table = files[0].table
    names = table.column_names
    ident = id_hint if id_hint in names else (_find(names, candidates) or names[0])
    features, display = [], []
    for name in names:
        if name == ident:
            continue
        if name.lower() in DISPLAY_NAMES:
            display.append(name)
            continue
        feature = _feature(name, table.column(name))  # typed by the first file
        if feature is not None:
            features.append(feature)
    return EntityTable(ident, tuple(features), tuple(display))


def infer_schema(interactions: pa.Table, items: list[TableFile], users: list[TableFile]) -> Schema:
    """The obvious schema for these tables (see the module docstring)."""
    names = interactions.column_names
    user, item = _find(names, USER_NAMES), _find(names, ITEM_NAMES)
    for what, found, key in (("user", user, "user_id"), ("item", item, "item_id")):
        if found is None:
            raise DataError(
                f"interactions: cannot tell which column holds the {what} ids (columns {names});"
                f" give a schema file with interactions.{key}"
            )
    spec = InteractionTable(
        user_id=str(user),
        item_id=str(item),
        rating=_find(names, RATING_NAMES),
        timestamp=_find(names, TIME_NAMES),
    )
    return Schema(
        interactions=spec,
        items=_entity(items, spec.item_id, ITEM_NAMES) if items else None,
        users=_entity(users, spec.user_id, USER_NAMES) if users else None,
    )
