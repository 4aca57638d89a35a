"""Two-tower recommender library: data, features, model, losses, metrics, baselines, indexes.

Pure Python + PyTorch + NumPy/pandas/pyarrow/SciPy. Nothing here imports ``ray``, ``fastapi`` or
``scann`` at module level (ScaNN is imported lazily inside the index class), so every piece is
unit-testable without a cluster.
"""

__version__ = "0.1.0"
