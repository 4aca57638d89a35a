"""Layer 5, recommenders: one interface, three models.

- ``base`` — :class:`~towers.recommenders.base.Recommender` (``fit``, ``score``, ``recommend``).
- ``popularity`` — the floor.
- ``user_knn`` — the UserKNN baseline (LensKit's explicit and implicit modes).
- ``two_tower`` — the trained two-tower model as a recommender, and its export format.
"""
