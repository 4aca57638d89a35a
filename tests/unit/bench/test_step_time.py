"""bench/step_time.py on the tiny prepared data: one number, the ms a step."""

from __future__ import annotations

from bench import step_time


def test_prints_the_milliseconds_a_step(tiny_storage, capsys):
    step_time.main(["--storage", tiny_storage.uri, "--steps", "2", "--threads", "1"])
    [line] = capsys.readouterr().out.splitlines()
    assert float(line) > 0
