"""The comparison report: a Markdown table a person reads and PNG plots of metric vs k."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

# The paper's own numbers (Lima & Campos 2024, ML-100K): a different split and protocol, shown
# for context only; only P/R/MAP at 5 and recall at 20 are quoted in DESIGN.md.
PAPER_REPORTED = {
    "user_knn (paper)": {
        "precision@5": 0.253,
        "recall@5": 0.368,
        "map@5": 0.515,
        "recall@20": 0.705,
    },
    "two_tower (paper)": {
        "precision@5": 0.058,
        "recall@5": 0.084,
        "map@5": 0.161,
        "recall@20": 0.172,
    },
}
# Microsoft Recommenders ML-100K benchmark (random 75/25 per-item split, seed 42, top-10): the
# same protocol as our `random` split, so these rows compare directly.
RECOMMENDERS_BENCHMARK = {
    "BiVAE (MS Recommenders)": {
        "ndcg@10": 0.475,
        "precision@10": 0.412,
        "recall@10": 0.219,
        "map": 0.146,
    },
    "BPR (MS Recommenders)": {
        "ndcg@10": 0.442,
        "precision@10": 0.388,
        "recall@10": 0.213,
        "map": 0.132,
    },
    "SVD (MS Recommenders)": {"rmse": 0.939},
}
# The report key of the item-item reference (EASE or ItemKNN, chosen on validation).
ITEM_ITEM = "item_item"
RANKING = ("precision", "recall", "map", "ndcg")
LABELS = {
    "precision": "P",
    "recall": "R",
    "map": "MAP",
    "ndcg": "NDCG",
    "hit_rate": "HR",
    "coverage": "Cov",
}


def _label(name: str) -> str:
    """Context rows: the paper used another protocol; the Recommenders rows used our split."""
    return "published, same split" if "Recommenders" in name else "different protocol"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def row_name(name: str, report: dict[str, Any]) -> str:
    """A model's row label: its report key, with the chosen setting for the item-item reference
    (``item_item (EASE, λ=50)``)."""
    label = report.get("item_item_selection", {}).get("label") if name == ITEM_ITEM else None
    return f"{name} ({label})" if label else name


def reference_note(report: dict[str, Any]) -> list[str]:
    """The lines that say what the item-item row is and how its setting was chosen."""
    selection = report.get("item_item_selection")
    if not selection:
        return []
    return [
        f"`{ITEM_ITEM}` is the item-item reference ({selection['label']}): EASE where the "
        f"catalog has at most {selection['ease_max_items']:,} items, ItemKNN above; "
        f"its setting was chosen on validation {selection['metric']} "
        f"({selection['valid']:.4f}, {len(selection['grid'])} settings tried) and refitted on "
        "train ∪ valid, like UserKNN's.",
        "",
    ]


def markdown_report(report: dict[str, Any], ks: Sequence[int] = (5, 10, 20)) -> str:
    """Renders ``metrics.json`` content as Markdown: one table per k, then rating metrics."""
    models: dict[str, dict[str, float]] = report["models"]
    lines = [
        f"# Two-tower vs UserKNN on {report['dataset']} (`{report['split']}` split)",
        "",
        f"Test users: {report.get('n_test_users', '?')}; every test interaction is relevant; "
        "items seen in training are excluded; all models ranked on the same candidates.",
        "",
        *protocol_note(report),
        *reference_note(report),
    ]
    implicit = report.get("feedback") == "implicit"
    if implicit:
        lines += ["Implicit feedback (no ratings): rating metrics do not apply.", ""]
    context: dict[str, dict[str, float]] = {}
    if report["dataset"] == "ml-100k":  # published numbers, for context, on this data set only
        context = {**PAPER_REPORTED}
        if report["split"] == "random":
            context.update(RECOMMENDERS_BENCHMARK)
    for k in ks:
        cols = [f"{m}@{k}" for m in (*RANKING, "hit_rate", "coverage")]
        header = [LABELS[c.split("@")[0]] + f"@{k}" for c in cols]
        lines += [
            f"## k = {k}",
            "",
            "| model | " + " | ".join(header) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for name, values in models.items():
            best = {c: max(v.get(c, float("-inf")) for v in models.values()) for c in cols}
            cells = [
                f"**{_fmt(values.get(c))}**" if values.get(c) == best[c] else _fmt(values.get(c))
                for c in cols
            ]
            lines.append(f"| {row_name(name, report)} | " + " | ".join(cells) + " |")
        for name, values in context.items():
            if any(c in values for c in cols):
                cells = [_fmt(values.get(c)) for c in cols]
                lines.append(f"| *{name}, {_label(name)}* | " + " | ".join(cells) + " |")
        lines.append("")
    columns = ("map",) if implicit else ("map", "rmse", "mse", "mae", "r2")
    header = ("MAP (Recommenders)", "RMSE", "MSE", "MAE", "R²")[: len(columns)]
    lines += [
        "## Full MAP" if implicit else "## Full MAP and rating metrics",
        "",
        "| model | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in {
        **{row_name(n, report): v for n, v in models.items()},
        **{f"*{n}, {_label(n)}*": v for n, v in context.items() if "map" in v or "rmse" in v},
    }.items():
        cells = [_fmt(values.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""]
    if context:
        lines += [
            "Rows in *italics* are published numbers for context. The paper's used its own split "
            "and protocol; the Recommenders rows used the same random 75/25 per-item split with "
            "seed 42.",
        ]
    lines += [
        "MAP@k divides by min(|relevant|, k); MAP (Recommenders) divides by |relevant| over the "
        "top-10 list.",
        "",
    ]
    return "\n".join(lines)


def protocol_note(report: dict[str, Any]) -> list[str]:
    """The next-item protocol in words, where the split is leave-one-out (its rows compare with
    the sequential recommenders' published tables only under it)."""
    if report["split"] != "leave-one-out":
        return []
    return [
        "Protocol: leave-one-out (next item): each test user's last interaction by time is the "
        "one relevant item, ranked against the full catalog with the user's earlier items "
        "excluded (no sampled candidates), as in the SASRec / S3-Rec full-ranking tables; "
        "HR@k is the share of users whose item is in the top k.",
        "",
    ]


def plot_metrics_vs_k(report: dict[str, Any], ks: Sequence[int] = (5, 10, 20)) -> bytes:
    """A 2x2 grid (Precision, Recall, MAP, NDCG) of metric vs k, one line per model; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    for ax, metric in zip(axes.flat, RANKING, strict=True):
        for name, values in report["models"].items():
            ys = [values.get(f"{metric}@{k}") for k in ks]
            ax.plot(ks, ys, marker="o", label=row_name(name, report))
        ax.set_title(f"{LABELS[metric]}@k")
        ax.set_xticks(list(ks))
        ax.grid(alpha=0.3)
    axes[1, 0].set_xlabel("k")
    axes[1, 1].set_xlabel("k")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{report['dataset']} ({report['split']} split): ranking metrics vs k")
    return png_bytes(fig)


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the size every plot of the project uses); closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
