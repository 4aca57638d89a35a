"""Rating-prediction metrics (MSE, RMSE, MAE, R²) over aligned true and predicted ratings."""

from __future__ import annotations

import numpy as np


def rating_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Rating-prediction errors over ``(N,)`` pairs.

    ``MSE = mean((y - ŷ)^2)``, ``RMSE = sqrt(MSE)``, ``MAE = mean(|y - ŷ|)``,
    ``R^2 = 1 - sum((y - ŷ)^2) / sum((y - mean(y))^2)`` (NaN when ``y`` is constant).
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.size == 0:
        raise ValueError("rating_metrics needs at least one pair")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("rating_metrics: y_true and y_pred must be finite (found NaN or inf)")
    residual = y_true - y_pred
    sse = float(residual @ residual)
    sst = float(((y_true - y_true.mean()) ** 2).sum())
    mse = sse / y_true.size
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.abs(residual).mean()),
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
    }
