"""Layer 7, index: maximum-inner-product top-k over item embeddings.

- ``base`` — the :class:`ItemIndex` interface (``build``, ``search``, ``save``, ``load``) and its
  on-disk format.
- ``exact`` — brute force with torch; ``scann`` — ScaNN, imported lazily.
- ``factory`` — the kind for a catalog size, and recall against exact search.

Importing the package defines (and so registers) both kinds, which ``ItemIndex.load`` rebuilds
from a manifest; the names below are the package's public API.
"""

from towers.index.base import (
    FORMAT_VERSION,
    IDS_FILE,
    MANIFEST,
    Exclude,
    IncompleteIndexError,
    IndexMismatchError,
    ItemIndex,
    index_recall,
)
from towers.index.exact import ExactIndex
from towers.index.factory import make_index, measure_recall
from towers.index.scann import ScannIndex, ScannSettings

__all__ = [
    "FORMAT_VERSION",
    "IDS_FILE",
    "MANIFEST",
    "ExactIndex",
    "Exclude",
    "IncompleteIndexError",
    "IndexMismatchError",
    "ItemIndex",
    "ScannIndex",
    "ScannSettings",
    "index_recall",
    "make_index",
    "measure_recall",
]
