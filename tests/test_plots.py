from __future__ import annotations

import matplotlib
import numpy as np

from embtune_utils import plots

matplotlib.use("Agg")  # no display in tests


def test_histograms_one_line_per_label():
    fig = plots.histograms({"a": np.array([0.1, 0.2]), "b": np.array([0.5, 0.9])}, xlabel="x", title="t")
    assert len(fig.axes[0].patches) == 2 and "a (n=2)" in [t.get_text() for t in fig.axes[0].get_legend().texts]


def test_bars_with_and_without_errors():
    fig = plots.bars({"base": 0.5, "tuned": 0.6}, {"tuned": (0.55, 0.65)}, ylabel="y", title="t")
    assert [round(p.get_height(), 2) for p in fig.axes[0].patches] == [0.5, 0.6]
    assert len(plots.bars({"a": 1.0}, None, ylabel="y", title="t").axes[0].patches) == 1


def test_curves_one_panel_per_series_with_reference_line():
    fig = plots.curves({"loss": [(1, 2.0), (2, 1.0)], "dev": [(1, 0.5)]}, xlabel="step", title="t", hline={"dev": 0.4})
    assert len(fig.axes) == 2 and fig.axes[1].get_legend() is not None


def test_lines_log_scale_and_zero_line():
    fig = plots.lines({"a": [3.0, 2.0, 1.0]}, xlabel="i", ylabel="v", title="t", logy=True, zero=False)
    assert fig.axes[0].get_yscale() == "log"
    fig = plots.lines({"d": [0.2, -0.1]}, xlabel="i", ylabel="v", title="t", zero=True)
    assert len(fig.axes[0].lines) == 2  # the series and y = 0


def test_pareto_one_panel_per_cost_with_the_front_joined():
    rows = [{"config": "finetuned a", "ndcg@10": 0.5, "size": 10.0}, {"config": "b", "ndcg@10": 0.4, "size": 1.0}]
    rows += [{"config": "worse", "ndcg@10": 0.3, "size": 20.0}]
    fig = plots.pareto(rows, {"size": "bytes"}, title="t")
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1.0, 10.0] and fig.axes[0].get_xscale() == "log"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["a", "b"]
