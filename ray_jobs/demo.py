"""``make demo``: the whole pipeline on MovieLens-100K on a local Ray, then the metrics table.

Grows with the pipeline; today it prepares the data and prints its summary.
"""

from __future__ import annotations

import sys

from ray_jobs import prepare


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prepare.main(["--dataset", "ml-100k", *argv])


if __name__ == "__main__":
    main()
