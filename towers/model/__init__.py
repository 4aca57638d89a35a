"""Layer 3, model: the two-tower network, its config and its losses (PyTorch only).

- ``config`` — :class:`~towers.model.config.TwoTowerConfig` and the presets.
- ``network`` — the user tower, the item tower, the rating head and ``TwoTower``.
- ``losses`` — pointwise BCE, in-batch and full-catalog softmax, rating MSE.
"""
