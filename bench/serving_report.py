"""The serving benchmark's outputs: the Markdown table, the req/s + p99 plot, the files.

``bench/bench_serving.py`` measures; this turns its rows (one dict per wrk round: target, pair,
connections, rps, p50_ms, p99_ms, errors, requests) into what docs/bench_serving.md shows.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def table(rows: list[dict]) -> str:
    """Medians over rounds; each Serve target against the bare rounds interleaved with it."""
    lines = [
        "| target | connections | req/s | bare req/s | vs bare | p50 ms | p99 ms | "
        "bare p99 ms | errors / requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["pair"], r["connections"]), {}).setdefault(r["target"], []).append(r)
    for (pair, connections), by_target in groups.items():
        base = by_target["bare"]
        name = pair if pair != "-" else "bare"
        runs = by_target.get(name, base)
        rps, bare_rps = median(runs, "rps"), median(base, "rps")
        lines.append(
            f"| {name} | {connections} | {rps:.0f} | {bare_rps:.0f} | {rps / bare_rps:.2f} | "
            f"{median(runs, 'p50_ms'):.1f} | {median(runs, 'p99_ms'):.1f} | "
            f"{median(base, 'p99_ms'):.1f} | {sum(r['errors'] for r in runs)} / "
            f"{sum(r['requests'] for r in runs)} |"
        )
    return "\n".join(lines)


def median(runs: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def plot(rows: list[dict]) -> bytes:
    """PNG: req/s and p99 against connections, one line per target (medians over rounds), the
    bare process's rounds pooled over all pairs; the target's 50 ms p99 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from towers.evaluation.report import png_bytes

    series: dict[str, dict[int, list[dict]]] = {}
    for r in rows:
        series.setdefault(r["target"], {}).setdefault(r["connections"], []).append(r)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted(series, key=lambda n: (n != "bare", n)):
        points = sorted(series[name].items())
        x = [c for c, _ in points]
        style = {"marker": "o", "label": name}
        style |= {"color": "black", "linestyle": "--"} if name == "bare" else {}
        left.plot(x, [median(runs, "rps") for _, runs in points], **style)
        right.plot(x, [median(runs, "p99_ms") for _, runs in points], **style)
    right.axhline(50, color="red", linewidth=0.8, linestyle=":", label="p99 target 50 ms")
    for ax, label in ((left, "requests/s"), (right, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["connections"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("wrk connections")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    left.set_title("GET /recommend throughput (median of rounds)")
    right.set_title("p99 latency (median of rounds)")
    return png_bytes(fig)


def write_outputs(rows: list[dict], out: Path) -> None:
    """``rows.jsonl`` (every measurement), ``table.md`` and ``serving.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "table.md").write_text(table(rows) + "\n")
    (out / "serving.png").write_bytes(plot(rows))
    print(f"wrote {out}/rows.jsonl, table.md, serving.png")
