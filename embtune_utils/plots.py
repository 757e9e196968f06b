"""The course's plots: score distributions, bars and lines with confidence intervals, forest plots of paired
differences, training curves, a filter funnel and Pareto fronts.

Every function takes `show`: True (the default, for notebooks) displays the figure once, closes it and returns None, so
a plot call may end a cell without the figure appearing twice; False returns the Figure (for tests, or to save it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embtune_utils import evaluate

BLUE, RED, GREY = "#4C72B0", "#C44E52", "#999999"


def _finish(fig: Any, show: bool) -> Any:
    """Lay out the figure; show it once and close it (returns None), or return it untouched."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    if not show:
        return fig
    plt.show()  # the inline backend displays and closes the figure here
    plt.close(fig)
    return None


def histograms(values: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 40, show: bool = True) -> Any:
    """Overlaid, normalised histograms of several distributions (one per label)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    arrays = {k: np.asarray(v, dtype=float) for k, v in values.items()}
    edges = np.linspace(
        min(float(v.min()) for v in arrays.values()), max(float(v.max()) for v in arrays.values()), bins
    )
    for label, v in arrays.items():
        ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.8, label=f"{label} (n={len(v)})")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    return _finish(fig, show)


def bars(
    values: dict[str, float], cis: dict[str, tuple[float, float]], ylabel: str, title: str, show: bool = True
) -> Any:
    """A bar per label from 0, each with its (low, high) confidence interval: every metric bar carries its CI."""
    import matplotlib.pyplot as plt

    labels = list(values)
    missing = [k for k in labels if k not in (cis or {})]
    if missing:
        raise ValueError(
            f"No confidence interval for {missing}: pass (low, high) for every bar (evaluate.bootstrap_ci gives one)."
        )
    heights = np.array([values[k] for k in labels], dtype=float)
    yerr = np.array([[h - cis[k][0], cis[k][1] - h] for h, k in zip(heights, labels)]).T
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)), 3.5))
    ax.bar(labels, heights, yerr=yerr, capsize=4, color=BLUE)
    for x, h in enumerate(heights):
        ax.annotate(f"{h:.3f}", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7, color="w")
    ax.set(ylabel=ylabel, title=title)
    ax.set_ylim(0, max(1e-9, max(cis[k][1] for k in labels)) * 1.08)
    ax.tick_params(axis="x", rotation=30)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    return _finish(fig, show)


def forest(diffs: dict[str, tuple[float, float, float]], xlabel: str, title: str, show: bool = True) -> Any:
    """Paired differences (mean, low, high), one row each, with a line at 0; rows whose CI excludes 0 are coloured."""
    import matplotlib.pyplot as plt

    labels = list(diffs)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    for y, label in enumerate(labels):
        mean, lo, hi = diffs[label]
        color = {1: BLUE, -1: RED, 0: GREY}[evaluate.ci_side(lo, hi)]
        ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt="o", color=color, capsize=3)
        ax.annotate(
            f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]", (hi, y), xytext=(6, -3), textcoords="offset points", fontsize=7
        )
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.35 * (right - left))  # room for the labels
    return _finish(fig, show)


def errorline(
    series: dict[str, list[tuple[float, float, float, float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    hline: dict[str, float] | None = None,
    show: bool = True,
) -> Any:
    """One line per series through (x, mean, low, high) points, with its confidence interval as a band."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, points in series.items():
        xs, mean, lo, hi = (np.array(v, dtype=float) for v in zip(*sorted(points)))
        (line,) = ax.plot(xs, mean, marker="o", markersize=4, label=label)
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    for label, level in (hline or {}).items():
        ax.axhline(level, color=GREY, linestyle="--", linewidth=1, label=f"{label} {level:.3f}")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _finish(fig, show)


def funnel(counts: dict[str, int], title: str, xlabel: str = "queries left", show: bool = True) -> Any:
    """Horizontal bars, one per step in order, each labelled with its count and what the step removed."""
    import matplotlib.pyplot as plt

    labels, values = list(counts), [int(v) for v in counts.values()]
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color=BLUE)
    for y, v in enumerate(values):
        removed = f"  (-{values[y - 1] - v:,})" if y and values[y - 1] > v else ""
        ax.annotate(f"{v:,}{removed}", (v, y), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.3 if values else 1)
    ax.set(xlabel=xlabel, title=title)
    return _finish(fig, show)


def curves(
    panels: dict[str, list[tuple[float, float]]],
    xlabel: str,
    title: str,
    hline: dict[str, float] | None = None,
    show: bool = True,
) -> Any:
    """One panel per named series of (x, y) points, side by side; hline draws a labelled reference level per panel."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.3), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items()):
        xs, ys = zip(*points) if points else ((), ())
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, markersize=3)
        if hline and name in hline:
            ax.axhline(hline[name], color=GREY, linestyle="--", linewidth=1, label=f"base {hline[name]:.3f}")
            ax.legend(fontsize=8)
        ax.set(xlabel=xlabel, ylabel=name)
    fig.suptitle(title)
    return _finish(fig, show)


def lines(
    series: dict[str, Any],
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
    zero: bool = False,
    show: bool = True,
) -> Any:
    """Several series of y values on one axes (x = 0, 1, ...); zero draws the y = 0 line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, ys in series.items():
        ax.plot(np.arange(len(ys)), ys, label=label, linewidth=1.6)
    if zero:
        ax.axhline(0, color=GREY, linewidth=0.8)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _finish(fig, show)


def pareto(rows: list[dict[str, Any]], costs: dict[str, str], title: str = "", show: bool = True) -> Any:
    """NDCG@10 against each cost (log x), one panel per cost; the Pareto-optimal rows are joined and labelled."""
    import matplotlib.pyplot as plt

    from embtune_utils.deploy import pareto_front

    fig, axes = plt.subplots(1, len(costs), figsize=(6.5 * len(costs), 4.2), squeeze=False)
    for ax, (cost, xlabel) in zip(axes[0], costs.items()):
        xs, ys = np.array([r[cost] for r in rows], dtype=float), np.array([r["ndcg@10"] for r in rows], dtype=float)
        ax.scatter(xs, ys, s=18, color=GREY)
        front = pareto_front(rows, cost)
        ax.plot([r[cost] for r in front], [r["ndcg@10"] for r in front], marker="o", color=RED, label="Pareto front")
        for r in front:
            label = r["config"].removeprefix("finetuned ")  # the model most rows share
            ax.annotate(label, (r[cost], r["ndcg@10"]), fontsize=7, xytext=(4, -8), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="NDCG@10")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return _finish(fig, show)
