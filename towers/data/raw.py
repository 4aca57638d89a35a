"""The canonical tables every data source produces, and the error bad input raises.

- ``interactions``: ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64
  (a pandas frame, or a pyarrow Table for data past one frame).
- ``items``: ``item_id`` int64, ``title`` str, ``year`` Int64 (nullable), ``genres`` list[str].
- ``users``: ``user_id`` int64 and, where the data set has them, ``age`` Int64, ``gender`` str,
  ``occupation`` str.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa


class DataError(ValueError):
    """Input data is malformed; the message names the file and the problem."""


@dataclass
class RawData:
    """The three canonical tables plus where they came from."""

    interactions: pd.DataFrame | pa.Table
    items: pd.DataFrame
    users: pd.DataFrame
    rating_scale: tuple[float, float]
    source: str
