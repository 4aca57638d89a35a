"""Progress of long loops: a tqdm bar on a terminal, a log line every 30 s everywhere else.

``ray job submit`` logs, CI and files are not terminals, and a bar there is either hidden or a
stream of carriage returns; so off a terminal :func:`progress` logs ``what: done/total (pct),
elapsed, ETA`` at INFO at most every ``every_s`` seconds instead. Short loops print nothing: the
bar waits 5 s, the first line ``every_s``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("towers.progress")
BAR_DELAY_S = 5.0
LOG_EVERY_S = 30.0


def progress(
    items: Iterable[T],
    what: str,
    total: int | None = None,
    every_s: float = LOG_EVERY_S,
    terminal: bool | None = None,
) -> Iterator[T]:
    """Yields ``items`` and shows how far the loop is (``terminal``: None asks stderr)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty() if terminal is None else terminal:
        yield from tqdm(items, desc=what, total=total, delay=BAR_DELAY_S, leave=False)
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s", progress_line(what, done, total, now - start))


def progress_line(what: str, done: int, total: int | None, elapsed: float) -> str:
    """``what: 3/10 (30%), 12 s, ETA 28 s`` (no share or ETA without a total)."""
    if not total:
        return f"{what}: {done:,}, {elapsed:.0f} s"
    eta = elapsed * (total - done) / max(done, 1)
    return f"{what}: {done:,}/{total:,} ({done / total:.0%}), {elapsed:.0f} s, ETA {eta:.0f} s"
