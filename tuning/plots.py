"""Tuning plots as PNG bytes (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullFormatter

from towers.evaluation.report import png_bytes


def plot_metric_vs_lr(table: pd.DataFrame, metric: str) -> bytes:
    """Best validation ``metric`` of each trial against its learning rate, coloured by D."""
    fig, ax = plt.subplots(figsize=(6, 4))
    dims = sorted(table["embedding_dim"].unique())
    cmap = plt.get_cmap("viridis", max(len(dims), 2))
    for i, dim in enumerate(dims):
        rows = table[table["embedding_dim"] == dim]
        ax.scatter(rows["lr"], rows[f"best_{metric}"], color=cmap(i), label=f"D={dim}", s=40)
    ax.set_xscale("log")
    # Ticks at 1 and 3 x 10^e: matplotlib's own minor labels (2, 3, 4 … x 10^e) overlap.
    lo, hi = table["lr"].min(), table["lr"].max()
    ticks = [m * 10.0**e for e in range(-7, 1) for m in (1, 3) if lo / 3 <= m * 10.0**e <= hi * 3]
    ax.set_xticks(ticks, [f"{t:.0e}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {metric} (best epoch)")
    ax.set_title("Tune trials: validation metric vs learning rate")
    ax.grid(alpha=0.3)
    ax.legend(title="embedding dim", fontsize=8)
    return png_bytes(fig)


def plot_learning_curves(curves: pd.DataFrame, metric: str) -> bytes:
    """Validation ``metric`` per epoch of every trial (ASHA's early stops show as short lines)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for trial, rows in curves.groupby("trial"):
        ax.plot(rows["epoch"] + 1, rows[metric], marker="o", ms=3, lw=1, label=f"trial {trial}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Learning curves of the Tune trials")
    ax.grid(alpha=0.3)
    if curves["trial"].nunique() <= 12:
        ax.legend(fontsize=7, ncol=2)
    return png_bytes(fig)
