"""The CLI generated from config dataclasses: types, choices, booleans, --config files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from ray_jobs.cli import help_field, parse_config


@dataclass
class Example:
    """An example job."""

    name: str = help_field("x", "a name")
    count: int = help_field(3, "how many")
    rate: float | None = help_field(None, "optional rate")
    mode: Literal["a", "b"] = help_field("a", "a choice")
    flag: bool = help_field(True, "a switch")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("--count must be >= 0")


def test_defaults_and_overrides():
    assert parse_config(Example, []) == Example()
    cfg = parse_config(Example, ["--count", "5", "--rate", "0.5", "--mode", "b", "--no-flag"])
    assert (cfg.count, cfg.rate, cfg.mode, cfg.flag) == (5, 0.5, "b", False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "many"], "invalid int value"),
        (["--mode", "c"], "invalid choice"),
        (["--count", "-1"], "--count must be >= 0"),
        (["--colour", "red"], "unrecognized arguments"),
    ],
)
def test_bad_values_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Example, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_config_file_then_flags(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"config": {"count": 7, "name": "tuned"}}))
    cfg = parse_config(Example, ["--config", str(path), "--name", "flag-wins"])
    assert (cfg.count, cfg.name) == (7, "flag-wins")
    path.write_text(json.dumps({"counts": 7}))
    with pytest.raises(SystemExit):
        parse_config(Example, ["--config", str(path)])
    assert "unknown keys ['counts']" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"])
    out = capsys.readouterr().out
    for option in ("--name", "--count", "--rate", "--mode", "--flag", "--config", "how many"):
        assert option in out
