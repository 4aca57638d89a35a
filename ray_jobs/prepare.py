"""Prepare a data set: parse, validate, index, split, and publish ``data/`` as Parquet.

python -m ray_jobs.prepare --dataset ml-100k --storage runs/demo
python -m ray_jobs.prepare --dataset synthetic --synthetic-interactions 10000000 --storage /tmp/s
python -m ray_jobs.prepare --dataset synthetic --synthetic-preset ml-25m --storage /tmp/s25m
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from tqdm import tqdm

from towers.data.movielens import RATING_SCALES, read_folder
from towers.data.prepared import summary, write_prepared
from towers.data.raw import RawData
from towers.data.sources import locate
from towers.data.splits import SPLITS
from towers.data.synthetic import (
    PRESETS,
    SyntheticSpec,
    iter_interaction_chunks,
    preset_spec,
    synthetic_items_users,
)
from towers.data.validation import validate_raw
from towers.launch.cli import help_field, parse_config
from towers.storage.root import Storage

log = logging.getLogger("prepare")
CHUNK_USERS = 50_000  # synthetic users generated per chunk (a progress step on large sets)
Dataset = Literal["ml-100k", "ml-1m", "ml-latest-small", "ml-20m", "ml-25m", "ml-32m", "synthetic"]


@dataclass
class PrepareConfig:
    """Parse, validate, split and publish a MovieLens (or synthetic) data set under STORAGE/data."""

    storage: str = help_field("runs/demo", "storage root: a local folder or a pyarrow URI (s3://…)")
    dataset: Dataset = help_field("ml-100k", "which data set")
    data_dir: str | None = help_field(None, "folder with the data set's files (skips fetching)")
    split: str = help_field(
        "random,temporal", "comma-separated splits to prepare: random, temporal"
    )
    seed: int = help_field(42, "seed of the random split (42 = the Recommenders benchmark)")
    valid_ratio: float = help_field(0.1, "share of train carved out for validation/early stopping")
    synthetic_preset: str | None = help_field(
        None, f"synthetic: a MovieLens-shaped size, one of {', '.join(PRESETS)}"
    )
    # None: the preset's value, or 1,000 users / 2,000 items / 100,000 interactions without one.
    synthetic_users: int | None = help_field(None, "synthetic: number of users (overrides preset)")
    synthetic_items: int | None = help_field(None, "synthetic: number of items (overrides preset)")
    synthetic_interactions: int | None = help_field(
        None, "synthetic: approximate interactions (overrides the preset)"
    )
    synthetic_seed: int = help_field(0, "synthetic: generator seed")

    def __post_init__(self) -> None:
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ValueError(f"--split: unknown {bad}; choose from {SPLITS}")
        if not 0 <= self.valid_ratio < 1:
            raise ValueError(f"--valid-ratio must be in [0, 1), got {self.valid_ratio}")
        if self.synthetic_preset is not None and self.synthetic_preset not in PRESETS:
            raise ValueError(
                f"--synthetic-preset: unknown {self.synthetic_preset!r}; "
                f"choose from {list(PRESETS)}"
            )

    @property
    def synthetic_spec(self) -> SyntheticSpec:
        """The synthetic size: the preset (default: ``small``) with the explicit sizes over it."""
        sizes = (self.synthetic_users, self.synthetic_items, self.synthetic_interactions)
        return preset_spec(self.synthetic_preset or "small", *sizes, seed=self.synthetic_seed)

    @property
    def splits(self) -> list[str]:
        return [s.strip() for s in self.split.split(",") if s.strip()]


def load_raw(cfg: PrepareConfig) -> tuple[RawData, dict[str, int]]:
    """Reads and validates the configured data set."""
    if cfg.dataset == "synthetic":
        spec = cfg.synthetic_spec
        # Chunks stream into one Arrow table: no single pandas frame of all interactions.
        n_chunks = -(-spec.n_users // CHUNK_USERS)
        generated = tqdm(
            iter_interaction_chunks(spec, CHUNK_USERS),
            desc="synthetic users",
            total=n_chunks,
            delay=5,
            disable=None,
        )
        chunks = [pa.Table.from_pandas(c, preserve_index=False) for c in generated]
        items, users = synthetic_items_users(spec)
        raw = RawData(
            pa.concat_tables(chunks), items, users, RATING_SCALES["synthetic"], f"synthetic:{spec}"
        )
        return raw, {"duplicate_pairs": 0}  # the generator draws distinct pairs per user
    folder = locate(cfg.dataset, cfg.data_dir)
    log.info("reading %s from %s", cfg.dataset, folder)
    return validate_raw(read_folder(folder, cfg.dataset))


def run(cfg: PrepareConfig) -> dict:
    start = time.perf_counter()
    storage = Storage(cfg.storage)
    raw, drops = load_raw(cfg)
    log.info(
        "parsed %s rows in %.1fs; splitting %s",
        len(raw.interactions),
        time.perf_counter() - start,
        cfg.splits,
    )
    manifest = write_prepared(
        storage,
        raw,
        cfg.dataset,
        cfg.splits,
        cfg.seed,
        cfg.valid_ratio,
        drops,
        extra={"config": {k: v for k, v in vars(cfg).items() if k != "storage"}},
    )
    print(summary(manifest))
    print(f"wrote {storage.uri}/data in {time.perf_counter() - start:.1f}s")
    return manifest


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PrepareConfig, argv)
    run(cfg)


if __name__ == "__main__":
    main()
