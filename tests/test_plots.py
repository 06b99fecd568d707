"""Tests of util/plots.py: what the ROC and training-curve figures hold, and their PNG."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from data import compute_metrics
from util import plots
from util.train_log import Curve


def legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_roc_figure_curves_legend_and_labels():
    # AUROC 3.5 / 4 (one tie), by hand; the second curve holds one class only: left out
    labels, scores = [0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8]
    fakes = ([1, 1], [0.3, 0.6])
    curves = [("video", labels, scores, compute_metrics(labels, scores)),
              ("fakes only", *fakes, compute_metrics(*fakes))]
    fig = plots.roc_figure(curves, "CDFv2 test - tiny/best.pt")
    ax = fig.axes[0]
    assert legend(fig) == ["chance", "video: AUROC 87.50% (n=4)"]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == \
        ("CDFv2 test - tiny/best.pt", "False positive rate", "True positive rate")
    chance, curve = ax.get_lines()
    assert chance.get_linestyle() == "--" and list(chance.get_xdata()) == list(chance.get_ydata()) == [0, 1]
    fpr, tpr, _ = roc_curve(labels, scores)
    assert np.array_equal(curve.get_xdata(), fpr) and np.array_equal(curve.get_ydata(), tpr)
    assert ax.get_xlim() == ax.get_ylim() == (0, 1)
    assert plots.roc_figure(curves[1:], "one class") is None


def test_curves_figure_best_of_each_run_in_the_legend():
    curves = [Curve(Path("runs/ln"), [100, 200, 300], [0, 1, 2], [0.80, 0.86, 0.84]),
              Curve(Path("runs/full"), [100, 150, 200], [1, 2, 3], [0.90, 0.95, 0.95], undefined=1)]
    fig = plots.curves_figure(curves, "step")
    ax = fig.axes[0]
    assert legend(fig) == ["ln: best 86.00% at step 200", "full: best 95.00% at step 150"]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == \
        ("Validation video-level AUROC during training", "training step", "val video AUROC (%)")
    ln, full = ax.get_lines()
    assert list(ln.get_xdata()) == [100, 200, 300] and ln.get_ydata() == pytest.approx([80, 86, 84])
    assert ln.get_marker() == "o" and full.get_marker() == "o"
    assert ln.get_color() != full.get_color()
    assert ax.get_ylim() == pytest.approx((75, 100))  # 5% steps with a margin, at most 100
    assert ax.get_xlim()[0] == 0

    fig = plots.curves_figure(curves, "epoch")
    assert legend(fig) == ["ln: best 86.00% at epoch 1", "full: best 95.00% at epoch 2"]
    assert fig.axes[0].get_xlabel() == "epoch (0 = the first, as train.py logs it)"
    assert list(fig.axes[0].get_lines()[1].get_xdata()) == [1, 2, 3]


def test_png_decodes_to_the_figure_size_with_something_drawn():
    curves = [Curve(Path("runs/ln"), [100, 200], [0, 1], [0.8, 0.9])]
    img = cv2.imdecode(np.frombuffer(plots.png(plots.curves_figure(curves, "step")), np.uint8), cv2.IMREAD_COLOR)
    side = round(plots.SIZE_INCHES * plots.DPI)
    assert img.shape == (side, side, 3)
    assert (img < 250).any(axis=2).mean() > 0.02  # not a blank canvas
    # the run's line in matplotlib's first colour (tab:blue, BGR 180 119 31) is in the picture
    assert (np.abs(img.astype(int) - (180, 119, 31)).sum(axis=2) < 30).sum() > 100


def test_robustness_figure_lines_from_the_unperturbed_point():
    def row(name, severity, auroc, lo, hi):
        return {"perturbation": name, "severity": severity, "video": {"auroc": auroc, "auroc_ci": [lo, hi]}}
    rows = [row("none", None, 0.90, 0.85, 0.95),
            row("jpeg", 30, 0.70, 0.60, 0.80), row("jpeg", 90, 0.88, 0.83, 0.93),  # given strong first
            row("blur", 1.0, 0.86, 0.80, 0.91)]
    fig = plots.robustness_figure(rows, "CDFv2 test - full/best.pt, perturbed")
    ax = fig.axes[0]
    assert legend(fig) == ["unperturbed: 90.00%", "jpeg (quality 90, 30)", "blur (sigma 1)"]
    assert ax.get_ylabel() == "video AUROC (%)" and list(ax.get_xticks()) == [0, 1, 2]
    lines = {line.get_label(): line for line in ax.get_lines()}
    clean, jpeg, blur = (lines[name] for name in legend(fig))
    assert list(clean.get_ydata()) == pytest.approx([90, 90])
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "*"] \
        == [(0, pytest.approx(90))]
    # from the unperturbed value, mild (quality 90) to strong (30); nudged sideways, in order
    assert list(jpeg.get_ydata()) == pytest.approx([90, 88, 70]) and list(blur.get_ydata()) == pytest.approx([90, 86])
    assert np.diff(jpeg.get_xdata()) == pytest.approx([1, 1]) and jpeg.get_xdata()[0] < 0 < blur.get_xdata()[0]
    # the intervals: error bars from lo to hi at each perturbed point
    bars = [[tuple(s[:, 1]) for s in c.get_segments()] for c in ax.collections]
    assert bars == [[pytest.approx((83, 93)), pytest.approx((60, 80))], [pytest.approx((80, 91))]]
    one_class = [{**rows[0], "video": {"auroc": None, "auroc_ci": None}}] + rows[1:]
    assert plots.robustness_figure(one_class, "one class") is None
