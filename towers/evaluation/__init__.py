"""Layer 6, evaluation: the protocol that compares models, baseline selection, reports.

- ``protocol`` — every model ranked on the same test candidates (:func:`evaluate_model`).
- ``knn_selection`` — UserKNN's settings chosen on the validation split.
- ``item_item_selection`` — the item-item reference (EASE or ItemKNN) and its setting, likewise.
- ``report`` — the Markdown table and the plots of metric vs k.
"""
