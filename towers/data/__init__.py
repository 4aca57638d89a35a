"""Layer 1, data: from raw files to the prepared data set every model trains on.

- ``raw`` — the canonical tables (:class:`~towers.data.raw.RawData`) and ``DataError``.
- ``movielens``, ``sources``, ``synthetic`` — where the tables come from.
- ``validation`` — checks on the raw tables (clear errors, counted drops).
- ``interactions`` — :class:`~towers.data.interactions.Interactions`, the indexed log.
- ``splits`` — random (the Recommenders benchmark) and temporal train/valid/test splits.
- ``features`` — the towers' feature tables.
- ``prepared`` — writing and reading the prepared data set (``data/`` of a run).
"""
