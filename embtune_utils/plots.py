"""The course's plots: score distributions, bar charts with error bars, training curves, Pareto fronts."""

from __future__ import annotations

from typing import Any

import numpy as np


def histograms(values: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 40) -> Any:
    """Overlaid, normalised histograms of several score distributions (one per label)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    edges = np.linspace(
        min(float(v.min()) for v in values.values()), max(float(v.max()) for v in values.values()), bins
    )
    for label, v in values.items():
        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.8, label=f"{label} (n={len(v)})")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def bars(values: dict[str, float], errors: dict[str, tuple[float, float]] | None, ylabel: str, title: str) -> Any:
    """A bar per label, with an asymmetric error bar (low, high) where given."""
    import matplotlib.pyplot as plt

    labels = list(values)
    heights = np.array([values[k] for k in labels])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)), 3.5))
    yerr = None
    if errors:
        spans = [errors.get(k, (heights[i], heights[i])) for i, k in enumerate(labels)]  # no error bar where none given
        yerr = np.array([[h - lo, hi - h] for h, (lo, hi) in zip(heights, spans)]).T
    ax.bar(labels, heights, yerr=yerr, capsize=4, color="#4C72B0")
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    lo = min(heights.min(), min((e[0] for e in (errors or {}).values()), default=heights.min()))
    ax.set_ylim(max(0.0, lo - 0.05), None)
    fig.tight_layout()
    plt.show()
    return fig


def curves(
    panels: dict[str, list[tuple[float, float]]], xlabel: str, title: str, hline: dict[str, float] | None = None
) -> Any:
    """One panel per named series of (x, y) points, side by side; hline draws a labelled reference level per panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.3), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items()):
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        if hline and name in hline:
            ax.axhline(hline[name], color="grey", linestyle="--", linewidth=1, label=f"base {hline[name]:.3f}")
            ax.legend(fontsize=8)
        ax.set(xlabel=xlabel, ylabel=name)
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return fig


def lines(series: dict[str, Any], xlabel: str, ylabel: str, title: str, logy: bool = False, zero: bool = False) -> Any:
    """Several series of y values on one axes (x = 0, 1, ...); zero draws the y = 0 line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, ys in series.items():
        ax.plot(np.arange(len(ys)), ys, label=label, linewidth=1.6)
    if zero:
        ax.axhline(0, color="grey", linewidth=0.8)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
    return fig


def pareto(rows: list[dict[str, Any]], costs: dict[str, str], title: str = "") -> Any:
    """NDCG@10 against each cost (log x), one panel per cost; the Pareto-optimal rows are joined and labelled."""
    import matplotlib.pyplot as plt

    from embtune_utils.deploy import pareto_front

    fig, axes = plt.subplots(1, len(costs), figsize=(6.5 * len(costs), 4.2), squeeze=False)
    for ax, (cost, xlabel) in zip(axes[0], costs.items()):
        xs, ys = np.array([r[cost] for r in rows], dtype=float), np.array([r["ndcg@10"] for r in rows], dtype=float)
        ax.scatter(xs, ys, s=18, color="#999999")
        front = pareto_front(rows, cost)
        ax.plot(
            [r[cost] for r in front], [r["ndcg@10"] for r in front], marker="o", color="#C44E52", label="Pareto front"
        )
        for r in front:
            label = r["config"].removeprefix("finetuned ")  # the model most rows share
            ax.annotate(label, (r[cost], r["ndcg@10"]), fontsize=7, xytext=(4, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="NDCG@10")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return fig
