"""The data-set contract: which columns hold ids, ratings, time and features, and of which kind.

A data set is an interactions table plus optional items and users tables. A small YAML or JSON file
names the columns and their kinds (``docs/YOUR_DATA.md`` documents every key)::

    interactions:
      user_id: customer          # integer or string ids
      item_id: sku
      rating: stars              # omit for implicit feedback: every row is a positive
      rating_scale: [1, 5]       # inferred (min, max) when omitted
      timestamp: ts              # Unix s or ms, Arrow timestamp, or ISO-8601 text
      part: part                 # --split given: each row's part (train / valid / test)
    items:
      id: sku
      features:
        category: categorical
        tags: {kind: multi_categorical, delimiter: "|"}
        price: numeric
        description: {kind: text, buckets: 16384}
        image_embedding: {kind: vector, dim: 64}
      display: [title, url]
    users:
      id: customer
      features:
        age: {kind: numeric, boundaries: [18, 25, 35, 45, 50, 56]}

Every bad key is reported at once, each with its path (``items.features.price.kind: ...``).
:func:`infer_schema` builds one from the tables' columns when no file is given.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from towers.data.errors import DataError

KINDS = ("categorical", "multi_categorical", "numeric", "text", "vector")
TIMESTAMP_UNITS = ("auto", "s", "ms")
UNCOVERED = ("error", "drop")
# Keys each kind accepts beyond name/kind/column; anything else is a bad key.
KIND_KEYS = {
    "categorical": {"min_count", "profile"},
    "multi_categorical": {"min_count", "delimiter", "profile"},
    "numeric": {"boundaries", "profile"},
    "text": {"buckets", "max_tokens"},
    "vector": {"dim", "delimiter"},
}
# A history profile (mean of the user's items' values) is built for small vocabularies only.
MAX_PROFILE_VOCABULARY = 256


class SchemaError(DataError):
    """The schema file (or an inferred schema) is invalid; one line per bad key."""


@dataclass(frozen=True)
class Feature:
    """One feature column of the users or items table.

    Attributes:
        name: the feature's name (in the model, the API and ``data/``).
        kind: one of :data:`KINDS`.
        column: the column in the input table (default: ``name``).
        min_count: categorical kinds: values seen fewer times map to the reserved "unknown" 0.
        delimiter: multi_categorical (CSV text) / vector (CSV text): what separates values.
        boundaries: numeric: bucket edges; the feature is then a categorical over the buckets.
        buckets: text: hash buckets of the bag of words.
        max_tokens: text: tokens kept per row (the first ones).
        dim: vector: the fixed width.
        profile: item categorical kinds: also pool the values over the user's history (None:
            on for vocabularies up to ``MAX_PROFILE_VOCABULARY``).
    """

    name: str
    kind: str
    column: str = ""
    min_count: int = 1
    delimiter: str | None = None
    boundaries: tuple[float, ...] | None = None
    buckets: int = 1 << 14
    max_tokens: int = 64
    dim: int | None = None
    profile: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "column", self.column or self.name)
        if self.boundaries is not None:
            object.__setattr__(self, "boundaries", tuple(float(b) for b in self.boundaries))

    @property
    def is_categorical(self) -> bool:
        """Encoded as one index per row (categorical, bucketised numeric)."""
        return self.kind == "categorical" or (self.kind == "numeric" and bool(self.boundaries))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        defaults = Feature(self.name, self.kind)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("name", "kind") and value != getattr(defaults, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class EntityTable:
    """The users or items table: its id column, features and display columns."""

    id: str
    features: tuple[Feature, ...] = ()
    display: tuple[str, ...] = ()

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        features = {f.name: f.to_dict() for f in self.features}
        compact = {n: d["kind"] if len(d) == 1 else d for n, d in features.items()}
        return {"id": self.id, "features": compact, "display": list(self.display)}


@dataclass(frozen=True)
class InteractionTable:
    """The interactions table's columns. No ``rating`` means implicit feedback; ``part`` names
    the column that gives each row's part of a benchmark's own split (``--split given``)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str | None = None
    rating_scale: tuple[float, float] | None = None
    weight: str | None = None
    timestamp: str | None = None
    timestamp_unit: str = "auto"
    part: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.rating_scale is not None:
            out["rating_scale"] = list(self.rating_scale)
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Schema:
    """The whole contract; ``items``/``users`` are None when the data set has no such table."""

    interactions: InteractionTable = field(default_factory=InteractionTable)
    items: EntityTable | None = None
    users: EntityTable | None = None
    uncovered: str = "error"  # interactions whose item/user is not in its table: error or drop

    @property
    def implicit(self) -> bool:
        return self.interactions.rating is None

    def side(self, name: str) -> EntityTable | None:
        return {"items": self.items, "users": self.users}[name]

    def with_rating_scale(self, scale: tuple[float, float]) -> Schema:
        return replace(self, interactions=replace(self.interactions, rating_scale=scale))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interactions": self.interactions.to_dict()}
        for side in ("items", "users"):
            table = self.side(side)
            if table is not None:
                out[side] = table.to_dict()
        out["uncovered"] = self.uncovered
        return out

    def to_yaml(self) -> str:
        import yaml  # PyYAML comes with Ray; imported here so the schema module stays light

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_dict(cls, values: Any, where: str = "schema") -> Schema:
        """Validates ``values``; raises :class:`SchemaError` listing every bad key at once."""
        errors: list[str] = []
        schema = _parse_schema(values, where, errors)
        if errors:
            raise SchemaError(f"{where}: invalid schema\n  " + "\n  ".join(errors))
        assert schema is not None
        return schema

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Reads a YAML or JSON schema file (JSON is valid YAML)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SchemaError(f"{path}: schema file not found")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SchemaError(f"{path}: not valid YAML/JSON: {err}") from err
        return cls.from_dict(values, str(path))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _check_keys(values: dict, allowed: set[str], path: str, errors: list[str]) -> None:
    for key in sorted(set(values) - allowed, key=str):
        errors.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _expect(value: Any, types: type | tuple, path: str, what: str, errors: list[str]) -> bool:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        errors.append(f"{path}: must be {what}, got {value!r}")
        return False
    if not isinstance(value, types):
        errors.append(f"{path}: must be {what}, got {value!r}")
        return False
    return True


def _parse_feature(name: str, value: Any, path: str, errors: list[str]) -> Feature | None:
    if isinstance(value, str):
        value = {"kind": value}
    if not _expect(value, dict, path, "a kind name or a mapping with 'kind'", errors):
        return None
    kind = value.get("kind")
    if kind not in KINDS:
        errors.append(f"{path}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        return None
    _check_keys(value, {"kind", "column"} | KIND_KEYS[kind], path, errors)
    kwargs: dict[str, Any] = {}
    checks = {
        "column": (str, "a column name"),
        "min_count": (int, "an integer >= 1"),
        "delimiter": (str, "a non-empty string"),
        "buckets": (int, "an integer >= 2"),
        "max_tokens": (int, "an integer >= 1"),
        "dim": (int, "an integer >= 1"),
        "profile": (bool, "true or false"),
        "boundaries": (list, "a list of increasing numbers"),
    }
    for key, (types, what) in checks.items():
        if key in value and _expect(value[key], types, f"{path}.{key}", what, errors):
            kwargs[key] = value[key]
    lower = {"min_count": 1, "buckets": 2, "max_tokens": 1, "dim": 1}
    for key, low in lower.items():
        if key in kwargs and kwargs[key] < low:
            errors.append(f"{path}.{key}: must be >= {low}, got {kwargs[key]}")
    if "delimiter" in kwargs and not kwargs["delimiter"]:
        errors.append(f"{path}.delimiter: must be a non-empty string")
    edges = kwargs.get("boundaries")
    if edges is not None:
        numeric = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in edges)
        if not edges or not numeric or any(a >= b for a, b in itertools.pairwise(edges)):
            errors.append(f"{path}.boundaries: must be a non-empty list of increasing numbers")
    if kind == "vector" and "dim" not in value:
        errors.append(f"{path}.dim: a vector feature needs its width")
    return Feature(name=name, kind=kind, **kwargs)


def _parse_entity(values: Any, path: str, errors: list[str]) -> EntityTable | None:
    if values is None:
        return None
    if not _expect(values, dict, path, "a mapping", errors):
        return None
    _check_keys(values, {"id", "features", "display"}, path, errors)
    ident = values.get("id")
    if not isinstance(ident, str) or not ident:
        errors.append(f"{path}.id: the id column's name is required, got {ident!r}")
    features: list[Feature] = []
    raw_features = values.get("features") or {}
    if _expect(raw_features, dict, f"{path}.features", "a mapping name -> kind", errors):
        for name, spec in raw_features.items():
            feature = _parse_feature(str(name), spec, f"{path}.features.{name}", errors)
            if feature is not None:
                features.append(feature)
    display = values.get("display") or []
    if not isinstance(display, list) or not all(isinstance(d, str) for d in display):
        errors.append(f"{path}.display: must be a list of column names, got {display!r}")
        display = []
    columns = [f.column for f in features]
    for col in sorted({c for c in columns if columns.count(c) > 1}):
        errors.append(f"{path}.features: column {col!r} is used by more than one feature")
    return EntityTable(id=str(ident or ""), features=tuple(features), display=tuple(display))


def _parse_interactions(values: Any, path: str, errors: list[str]) -> InteractionTable:
    if values is None:
        return InteractionTable()
    if not _expect(values, dict, path, "a mapping", errors):
        return InteractionTable()
    names = {f.name for f in fields(InteractionTable)}
    _check_keys(values, names, path, errors)
    kwargs: dict[str, Any] = {}
    for key in ("user_id", "item_id", "rating", "weight", "timestamp", "part"):
        value = values.get(key)
        if value is not None and _expect(value, str, f"{path}.{key}", "a column name", errors):
            kwargs[key] = value
    unit = values.get("timestamp_unit", "auto")
    if unit not in TIMESTAMP_UNITS:
        errors.append(f"{path}.timestamp_unit: {unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    else:
        kwargs["timestamp_unit"] = unit
    scale = values.get("rating_scale")
    if scale is not None:
        ok = isinstance(scale, list) and len(scale) == 2
        ok = ok and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale)
        if not ok or scale[0] >= scale[1]:
            errors.append(
                f"{path}.rating_scale: must be [low, high] with low < high, got {scale!r}"
            )
        else:
            kwargs["rating_scale"] = (float(scale[0]), float(scale[1]))
        if "rating" not in kwargs:
            errors.append(f"{path}.rating_scale: given without a rating column")
    if "weight" in kwargs and "rating" in kwargs:
        errors.append(f"{path}.weight: an implicit weight and a rating exclude each other")
    return InteractionTable(**kwargs)


def _parse_schema(values: Any, where: str, errors: list[str]) -> Schema | None:
    if not isinstance(values, dict):
        errors.append(f"{where}: the schema must be a mapping, got {type(values).__name__}")
        return None
    _check_keys(values, {"interactions", "items", "users", "uncovered"}, "", errors)
    errors[:] = [e.lstrip(".") for e in errors]
    uncovered = values.get("uncovered", "error")
    if uncovered not in UNCOVERED:
        errors.append(f"uncovered: {uncovered!r} is not one of {', '.join(UNCOVERED)}")
        uncovered = "error"
    return Schema(
        interactions=_parse_interactions(values.get("interactions"), "interactions", errors),
        items=_parse_entity(values.get("items"), "items", errors),
        users=_parse_entity(values.get("users"), "users", errors),
        uncovered=uncovered,
    )
