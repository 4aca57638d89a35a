"""Prepare a data set: parse, validate, index, split, and publish ``data/`` as Parquet.

python -m ray_jobs.prepare --dataset ml-100k --storage runs/demo
python -m ray_jobs.prepare --dataset synthetic --synthetic-interactions 10000000 --storage /tmp/s
python -m ray_jobs.prepare --dataset synthetic --synthetic-preset ml-25m --storage /tmp/s25m
python -m ray_jobs.prepare --interactions events.parquet --items items.csv --schema schema.yaml \
    --split temporal --storage runs/shop          # your own data (docs/YOUR_DATA.md)
python -m ray_jobs.prepare --interactions train.csv --test-interactions test.csv \
    --split given --storage runs/bench            # a benchmark's own split, one file per part
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa

from towers.data.contract import load_dataset
from towers.data.files import fingerprint
from towers.data.movielens import RATING_SCALES, read_folder
from towers.data.prepared import summary, write_prepared
from towers.data.raw import RawData
from towers.data.schema import Schema
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
from towers.progress import progress
from towers.storage.root import Storage

log = logging.getLogger("prepare")
CHUNK_USERS = 50_000  # synthetic users generated per chunk (a progress step on large sets)
Dataset = Literal["ml-100k", "ml-1m", "ml-latest-small", "ml-20m", "ml-25m", "ml-32m", "synthetic"]


@dataclass
class PrepareConfig:
    """Parse, validate, split and publish a data set under STORAGE/data: your own files
    (--interactions, --items, --users, --schema), MovieLens or synthetic data."""

    storage: str = help_field("runs/demo", "storage root: a local folder or a pyarrow URI (s3://…)")
    dataset: Dataset = help_field("ml-100k", "which data set (ignored with --interactions)")
    interactions: str | None = help_field(
        None, "your interactions table: a Parquet/CSV file or folder, local or a URI"
    )
    items: str | None = help_field(None, "your items table (features, display columns)")
    users: str | None = help_field(None, "your users table (features)")
    schema: str | None = help_field(
        None, "YAML/JSON file naming the columns and their kinds (inferred and printed if absent)"
    )
    test_interactions: str | None = help_field(
        None, "--split given: the test part as its own file (--interactions is then train)"
    )
    valid_interactions: str | None = help_field(
        None, "--split given: the validation part as its own file (default: carved from train)"
    )
    data_dir: str | None = help_field(None, "folder with the data set's files (skips fetching)")
    split: str = help_field(
        "random,temporal",
        "comma-separated splits to prepare: random, temporal, leave-one-out (each user's last "
        "interaction by time is test, the one before valid: the next-item protocol), given "
        "(the data's own parts: the "
        "schema's interactions.part column, or --test-interactions)",
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
        if self.interactions is None and any((self.items, self.users, self.schema)):
            raise ValueError("--items, --users and --schema describe --interactions: give it too")
        if self.interactions is None and "given" in self.splits:
            raise ValueError("--split given: the parts come from your files; give --interactions")
        if self.valid_interactions is not None and self.test_interactions is None:
            raise ValueError("--valid-interactions needs --test-interactions (and --interactions)")
        if self.test_interactions is not None and "given" not in self.splits:
            raise ValueError(
                "--test-interactions gives the data's own split: prepare it with --split given"
            )
        if self.test_interactions is not None and self.interactions is None:
            raise ValueError("--test-interactions needs --interactions, the train part")
        if self.synthetic_preset is not None and self.synthetic_preset not in PRESETS:
            raise ValueError(
                f"--synthetic-preset: unknown {self.synthetic_preset!r}; "
                f"choose from {list(PRESETS)}"
            )

    @property
    def name(self) -> str:
        """The data set's name in manifests and reports."""
        if self.interactions is None:
            return self.dataset
        stem = self.interactions.rstrip("/").rsplit("/", 1)[-1]
        return stem.split(".", 1)[0] or "files"

    @property
    def synthetic_spec(self) -> SyntheticSpec:
        """The synthetic size: the preset (default: ``small``) with the explicit sizes over it."""
        sizes = (self.synthetic_users, self.synthetic_items, self.synthetic_interactions)
        return preset_spec(self.synthetic_preset or "small", *sizes, seed=self.synthetic_seed)

    @property
    def part_files(self) -> dict[str, str] | None:
        """The given split's test (and valid) files, or None when the parts are a column."""
        files = {"test": self.test_interactions, "valid": self.valid_interactions}
        return {part: path for part, path in files.items() if path is not None} or None

    @property
    def splits(self) -> list[str]:
        return [s.strip() for s in self.split.split(",") if s.strip()]


def inputs_fingerprint(cfg: PrepareConfig) -> str:
    """A short hash of what ``data/`` is prepared from: the settings (not the storage) and, for
    your own files, each file's path, size and modification time, and the schema file's text.
    ``data/manifest.json`` carries it; the pipeline compares it before reusing or replacing."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "storage"}
    if cfg.interactions is not None:
        for what in ("interactions", "test_interactions", "valid_interactions", "items", "users"):
            if getattr(cfg, what):
                settings[f"{what}_files"] = fingerprint(getattr(cfg, what), what)
        if cfg.schema:
            settings["schema_text"] = Path(cfg.schema).read_text()
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_raw(cfg: PrepareConfig) -> tuple[RawData, dict[str, int]]:
    """Reads and validates the configured data set."""
    if cfg.interactions is not None:
        schema = Schema.load(cfg.schema) if cfg.schema else None
        given = "given" in cfg.splits
        if not given and schema is not None and schema.interactions.part is not None:
            log.warning(
                "the schema names a part column (%r) but --split is %s: the data's own split is "
                "prepared with --split given",
                schema.interactions.part,
                cfg.split,
            )
        raw, drops = load_dataset(
            cfg.interactions, cfg.items, cfg.users, schema, given, cfg.part_files
        )
        cleaned, more = validate_raw(raw)
        return cleaned, {**drops, **more}
    if cfg.dataset == "synthetic":
        spec = cfg.synthetic_spec
        # Chunks stream into one Arrow table: no single pandas frame of all interactions.
        n_chunks = -(-spec.n_users // CHUNK_USERS)
        generated = progress(
            iter_interaction_chunks(spec, CHUNK_USERS),
            f"synthetic users (chunks of {CHUNK_USERS:,})",
            total=n_chunks,
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
    inputs = inputs_fingerprint(cfg)
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
        cfg.name,
        cfg.splits,
        cfg.seed,
        cfg.valid_ratio,
        drops,
        extra={"config": {k: v for k, v in vars(cfg).items() if k != "storage"}, "inputs": inputs},
    )
    print(summary(manifest))
    print(f"wrote {storage.uri}/data in {time.perf_counter() - start:.1f}s")
    return manifest


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PrepareConfig, argv)
    run(cfg)


if __name__ == "__main__":
    main()
