"""Gowalla on the LightGCN split (``train.txt``/``test.txt``) → the contract's tables.

    python -m bench.gowalla --source ../shared/data/gowalla --out /tmp/gowalla
    python -m ray_jobs.prepare --interactions /tmp/gowalla/interactions.parquet \\
        --schema /tmp/gowalla/schema.yaml --split given --storage /tmp/gowalla_run
    python -m ray_jobs.pipeline --interactions /tmp/gowalla/interactions.parquet \\
        --schema /tmp/gowalla/schema.yaml --split given --storage /tmp/gowalla_run --no-paper

Both files have one line per user, ``user item item …`` (0-based integer ids, no timestamps, no
features): ``train.txt`` is the benchmark's training part, ``test.txt`` its test part, as the
NGCF/LightGCN papers and the BARS benchmark (reczoo) publish them. They become one interactions
table whose ``part`` column says each row's part (``train``/``test``), which ``--split given``
reads (the schema names the column: ``interactions.part: part``). The data give no validation
part and no timestamps, so prepare carves validation out of train per user with a seeded draw
(``--valid-ratio`` of each user's training rows, seed 43 = ``--seed`` + 1); test stays exactly
the published one. Nothing is written inside the repository: the data are for research use
(SNAP), and the project never ships them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

PARTS = ("train", "test")  # the LightGCN files, one per part
SCHEMA = """\
# Gowalla check-ins, LightGCN split: implicit feedback; each row's part is the benchmark's own.
interactions:
  user_id: user_id
  item_id: item_id
  part: part
"""


def read_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` int64 arrays of a LightGCN file (``user item item …`` per line)."""
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            user, *rest = (int(x) for x in line.split())
        except ValueError as err:
            raise ValueError(f"{path}: line {number}: not integer ids: {line[:80]!r}") from err
        users.append(np.full(len(rest), user, np.int64))
        items.append(np.asarray(rest, np.int64))
    return np.concatenate(users), np.concatenate(items)


def convert(source: Path, out: Path) -> dict[str, int]:
    """Writes ``interactions.parquet`` (``user_id, item_id, part``) and ``schema.yaml`` to ``out``.

    Returns:
        Counts: users, items, and the rows of each part.
    """
    frames = []
    for part in PARTS:
        users, items = read_lines(source / f"{part}.txt")
        frames.append(pd.DataFrame({"user_id": users, "item_id": items, "part": part}))
    interactions = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(out / "interactions.parquet", index=False)
    (out / "schema.yaml").write_text(SCHEMA)
    counts = interactions["part"].value_counts()
    return {
        "users": int(interactions["user_id"].nunique()),
        "items": int(interactions["item_id"].nunique()),
        **{part: int(counts.get(part, 0)) for part in PARTS},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/gowalla"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gowalla"))
    args = parser.parse_args(argv)
    counts = convert(args.source, args.out)
    print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
    main()
