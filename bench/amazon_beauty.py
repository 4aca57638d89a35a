"""Amazon Beauty or Yelp (the S3-Rec preprocessing) → the contract's tables, for docs/YOUR_DATA.md.

    python -m bench.amazon_beauty --source ../shared/data/amazon-beauty --out /tmp/beauty
    python -m ray_jobs.pipeline --interactions /tmp/beauty/interactions.parquet \\
        --items /tmp/beauty/items.parquet --schema /tmp/beauty/schema.yaml \\
        --split temporal --storage runs/beauty --no-paper

``Beauty.txt`` (``Yelp.txt``: any ``NAME.txt`` beside a ``NAME_item2attributes.json``) has one
line per user (``user item item …``, oldest first) and no timestamps: the
position in the line is the order, so it becomes the timestamp (seconds 0, 1, 2, … per user),
which is all the temporal split needs (each user's last 20% by time are the test part).
``Beauty_item2attributes.json`` maps items to anonymised category and brand ids: one
multi-valued categorical feature. Nothing is written inside the repository: the data's licence
is for research use, and the project never ships it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

SCHEMA = """\
# Amazon Beauty (S3-Rec): implicit feedback; the position in a user's line is the time order.
interactions:
  user_id: user_id
  item_id: item_id
  timestamp: position
  timestamp_unit: s
items:
  id: item_id
  features:
    attributes: {kind: multi_categorical, min_count: 2}
"""


def s3rec_files(source: Path) -> tuple[Path, Path]:
    """``(NAME.txt, NAME_item2attributes.json)`` of an S3-Rec data folder (Beauty, Yelp, …)."""
    found = sorted(source.glob("*_item2attributes.json"))
    if len(found) != 1:
        raise SystemExit(f"{source}: expected one *_item2attributes.json (S3-Rec), found {found}")
    name = found[0].name.removesuffix("_item2attributes.json")
    lines = source / f"{name}.txt"
    if not lines.exists():
        raise SystemExit(f"{source}: {found[0].name} but no {lines.name} beside it")
    return lines, found[0]


def convert(source: Path, out: Path) -> dict[str, int]:
    """Writes ``interactions.parquet``, ``items.parquet`` and ``schema.yaml`` into ``out``."""
    users, items, positions = [], [], []
    lines, attribute_file = s3rec_files(source)
    for line in lines.read_text().splitlines():
        user, *bought = (int(x) for x in line.split())
        users += [user] * len(bought)
        items += bought
        positions += range(len(bought))
    interactions = pd.DataFrame({"user_id": users, "item_id": items, "position": positions})
    attributes = json.loads(attribute_file.read_text())
    catalog = sorted(set(items) | {int(i) for i in attributes})
    table = pd.DataFrame(
        {
            "item_id": catalog,
            "attributes": [[str(a) for a in attributes.get(str(i), [])] for i in catalog],
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(out / "interactions.parquet", index=False)
    table.to_parquet(out / "items.parquet", index=False)
    (out / "schema.yaml").write_text(SCHEMA)
    return {"interactions": len(interactions), "users": len(set(users)), "items": len(catalog)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/data/amazon-beauty"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/beauty"))
    args = parser.parse_args(argv)
    counts = convert(args.source, args.out)
    print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
    main()
