"""Layer 2, metrics: top-k selection and the metrics that score it (pure NumPy, no models).

- ``top_k`` — top-k with exclusions, the ranking step every model shares.
- ``ranking`` — Precision, Recall, MAP, NDCG, HitRate and coverage at k.
- ``rating`` — MSE, RMSE, MAE and R².
"""
