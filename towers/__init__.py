"""Two-tower recommender library, in layers; each imports only the layers below it.

Bottom up: ``storage`` (storage root, manifests, atomic writes), ``data`` (raw tables, MovieLens,
synthetic, validation, splits, features, the prepared data set), ``metrics`` (top-k, ranking and
rating metrics), ``model`` (config, towers, losses), ``training`` (batch inputs, the one epoch
loop, checkpoints), ``recommenders`` (popularity, UserKNN, two-tower), ``evaluation`` (the
comparison protocol, UserKNN selection, reports), ``index`` (exact and ScaNN), ``artifacts`` (the
run layout) and ``launch`` (config → CLI, starting Ray: for the entry points). docs/ARCHITECTURE.md
has the map.

Pure Python + PyTorch + NumPy/pandas/pyarrow/SciPy. Nothing here imports ``ray``, ``fastapi`` or
``scann`` at module level (ScaNN is imported lazily inside the index class), so every piece is
unit-testable without a cluster.
"""

__version__ = "0.1.0"
