"""``towers.progress``: a log line every ``every_s`` seconds off a terminal, silence for short
loops, tqdm on a terminal; every item is yielded either way."""

from __future__ import annotations

import logging

from towers import progress as progress_module
from towers.progress import progress, progress_line


def test_off_a_terminal_it_logs_counts_and_an_eta(caplog, monkeypatch):
    clock = iter(range(0, 1000, 10))  # 10 s per call of time.monotonic
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="towers.progress"):
        seen = list(progress(range(6), "blocks", every_s=25, terminal=False))
    assert seen == list(range(6))
    # start at 0 s; items end at 10, 20, ... s; a line once 25 s have passed since the last.
    assert [r.getMessage() for r in caplog.records] == [
        "blocks: 3/6 (50%), 30 s, ETA 30 s",
        "blocks: 6/6 (100%), 60 s, ETA 0 s",
    ]


def test_a_short_loop_prints_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="towers.progress"):
        assert list(progress(iter("abc"), "quick", terminal=False)) == ["a", "b", "c"]
    assert caplog.records == []


def test_on_a_terminal_it_is_a_tqdm_bar(monkeypatch):
    bars = []

    def fake_tqdm(items, **kwargs):
        bars.append(kwargs)
        return iter(items)

    monkeypatch.setattr(progress_module, "tqdm", fake_tqdm)
    assert list(progress([1, 2], "users", terminal=True)) == [1, 2]
    assert bars == [{"desc": "users", "total": 2, "delay": 5.0, "leave": False}]


def test_progress_line_without_a_total():
    assert progress_line("rows", 1500, None, 12.3) == "rows: 1,500, 12 s"
