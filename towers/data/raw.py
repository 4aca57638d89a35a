"""The canonical tables every data source produces, with the schema that describes them.

- ``interactions``: ``user_id``, ``item_id`` (int64 or string), ``rating`` float32 (implicit
  data: the weight, 1.0 by default), ``timestamp`` int64 Unix seconds (0 when the data has none);
  a pandas frame, or a pyarrow Table for data past one frame.
- ``items``: ``item_id`` and one column per schema feature and display column, by feature name.
- ``users``: ``user_id`` and one column per schema feature.

MovieLens-shaped tables (``items``: title, year, genres; ``users``: age, gender, occupation) may
leave ``schema`` None: :func:`towers.data.movielens.movielens_schema` describes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from towers.data.errors import DataError
from towers.data.schema import Schema

__all__ = ["DataError", "RawData"]


@dataclass
class RawData:
    """The three canonical tables plus where they came from."""

    interactions: pd.DataFrame | pa.Table
    items: pd.DataFrame
    users: pd.DataFrame
    rating_scale: tuple[float, float]
    source: str
    schema: Schema | None = None
    # The schema as the input files name their columns (your own data): how to read a new items
    # table of the same form later (build_index --items); None for adapters.
    source_schema: Schema | None = None
