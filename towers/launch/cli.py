"""A command line generated from a config dataclass: one ``--key value`` per field, type-checked.

Each field's help text comes from ``field(metadata={"help": ...})``; ``Literal`` fields become
choices, ``bool`` fields ``--flag/--no-flag``. ``--config FILE.json`` loads values first (Tune's
``best_config.json``), explicit flags override them, and unknown keys in the file are an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def help_field(default: Any, help: str, **kwargs: Any) -> Any:
    """``dataclasses.field`` with a help text for the generated CLI."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _add_argument(parser: argparse.ArgumentParser, f: dataclasses.Field, hint: Any) -> None:
    name = "--" + f.name.replace("_", "-")
    help_text = f.metadata.get("help", "")
    default = f.default
    origin = typing.get_origin(hint)
    if hint is bool:
        parser.add_argument(
            name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        parser.add_argument(
            name, choices=choices, default=None, help=f"{help_text} (default: {default})"
        )
        return
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kind = args[0]
        if kind is bool or typing.get_origin(kind) is typing.Literal:  # optional: None = unset
            _add_argument(parser, f, kind)
            return
    else:
        kind = hint
    parser.add_argument(name, type=kind, default=None, help=f"{help_text} (default: {default})")


def parse_config(cls: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """Parses ``argv`` into an instance of config dataclass ``cls``."""
    parser = argparse.ArgumentParser(
        description=description or cls.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="JSON file of values to start from"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        _add_argument(parser, f, hints[f.name])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    values: dict[str, Any] = {}
    if args.config is not None:
        values = load_config_file(cls, args.config, parser)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def load_config_file(cls: type, path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        parser.error(f"--config {path}: {err}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object")
    # Tune writes {"config": {...}, "metric": ...}; accept either that or a flat object.
    values = values.get("config", values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}; known: {sorted(known)}")
    return values
