from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from embtune_utils import plots

matplotlib.use("Agg")  # no display in tests


def test_histograms_one_line_per_label():
    fig = plots.histograms({"a": np.array([0.1, 0.2]), "b": np.array([0.5, 0.9])}, xlabel="x", title="t", show=False)
    assert len(fig.axes[0].patches) == 2 and "a (n=2)" in [t.get_text() for t in fig.axes[0].get_legend().texts]


def test_bars_need_a_ci_on_every_bar_and_start_at_zero():
    fig = plots.bars({"base": 0.5, "tuned": 0.6}, {"base": (0.45, 0.55), "tuned": (0.55, 0.65)}, "y", "t", show=False)
    ax = fig.axes[0]
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.5, 0.6]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 0.65
    with pytest.raises(ValueError, match="confidence interval for \\['base'\\]"):
        plots.bars({"base": 0.5, "tuned": 0.6}, {"tuned": (0.55, 0.65)}, ylabel="y", title="t", show=False)


def test_shown_plots_return_nothing_so_a_cell_never_shows_a_figure_twice():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    assert plots.bars({"a": 1.0}, {"a": (0.9, 1.1)}, ylabel="y", title="t") is None
    assert len(plt.get_fignums()) == before  # closed after showing


def test_forest_colours_rows_whose_ci_excludes_zero():
    fig = plots.forest(
        {"gain": (0.1, 0.05, 0.15), "tie": (0.0, -0.02, 0.02), "loss": (-0.1, -0.2, -0.01)}, "d", "t", False
    )
    ax = fig.axes[0]
    colours = [matplotlib.colors.to_hex(c.lines[0].get_color()) for c in ax.containers]
    assert colours == [plots.BLUE.lower(), plots.GREY.lower(), plots.RED.lower()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gain", "tie", "loss"]


def test_errorline_draws_a_band_per_series_and_reference_lines():
    points = [(64, 0.4, 0.35, 0.45), (384, 0.5, 0.45, 0.55), (128, 0.45, 0.4, 0.5)]
    fig = plots.errorline({"a": points}, "dims", "ndcg", "t", logx=True, hline={"base": 0.3}, show=False)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == [64, 128, 384] and len(ax.collections) == 1
    assert ax.get_xscale() == "log" and "base 0.300" in [t.get_text() for t in ax.get_legend().texts]


def test_funnel_keeps_the_order_and_says_what_each_step_removed():
    fig = plots.funnel({"generated": 10, "length": 10, "dedup": 7}, title="t", show=False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["generated", "length", "dedup"]
    assert "7  (-3)" in [t.get_text() for t in ax.texts]


def test_curves_one_panel_per_series_with_reference_line():
    fig = plots.curves({"loss": [(1, 2.0), (2, 1.0)], "dev": [(1, 0.5)]}, "step", "t", hline={"dev": 0.4}, show=False)
    assert len(fig.axes) == 2 and fig.axes[1].get_legend() is not None


def test_lines_log_scale_and_zero_line():
    fig = plots.lines({"a": [3.0, 2.0, 1.0]}, xlabel="i", ylabel="v", title="t", logy=True, zero=False, show=False)
    assert fig.axes[0].get_yscale() == "log"
    fig = plots.lines({"d": [0.2, -0.1]}, xlabel="i", ylabel="v", title="t", zero=True, show=False)
    assert len(fig.axes[0].lines) == 2  # the series and y = 0


def test_pareto_one_panel_per_cost_with_the_front_joined():
    rows = [{"config": "finetuned a", "ndcg@10": 0.5, "size": 10.0}, {"config": "b", "ndcg@10": 0.4, "size": 1.0}]
    rows += [{"config": "worse", "ndcg@10": 0.3, "size": 20.0}]
    fig = plots.pareto(rows, {"size": "bytes"}, title="t", show=False)
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1.0, 10.0] and fig.axes[0].get_xscale() == "log"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["a", "b"]
