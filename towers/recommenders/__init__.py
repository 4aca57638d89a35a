"""Layer 5, recommenders: one interface, five models.

- ``base`` — :class:`~towers.recommenders.base.Recommender` (``fit``, ``score``, ``recommend``).
- ``popularity`` — the floor.
- ``user_knn`` — the UserKNN baseline (LensKit's explicit and implicit modes).
- ``item_item`` — the item-item reference: EASE (dense closed form) and ItemKNN (sparse).
- ``two_tower`` — the trained two-tower model as a recommender, and its export format.
"""
