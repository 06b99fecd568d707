"""util/plots.py: what the ROC, training-curve and robustness figures hold, every curve visible and
every legend off the data, and their PNG."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from data import compute_metrics
from util import plots
from util.run import Curve

CURVES = [Curve(Path("runs/ln"), [100, 200, 300], [0, 1, 2], [0.80, 0.86, 1.0]),
          Curve(Path("runs/full"), [100, 150, 200], [1, 2, 3], [0.90, 0.95, 0.95], undefined=1)]


def robustness_rows() -> list[dict]:
    def row(name, severity, auroc, lo, hi):
        return {"perturbation": name, "severity": severity, "video": {"auroc": auroc, "auroc_ci": [lo, hi]}}
    return [row("none", None, 0.90, 0.85, 0.95), row("jpeg", 30, 0.70, 0.60, 0.80),  # given strong first
            row("jpeg", 90, 0.88, 0.83, 0.93), row("blur", 1.0, 0.86, 0.80, 0.91)]


def picture(fig) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(plots.png(fig), np.uint8), cv2.IMREAD_COLOR)


def test_roc_curves_all_visible_at_auroc_1():
    labels, perfect = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    frames = ([0, 0, 1, 1, 0, 1], [0.2, 0.5, 0.5, 0.8, 0.6, 0.3])
    curves = [("video", labels, perfect, compute_metrics(labels, perfect)),
              ("Deepfakes videos", labels, perfect, compute_metrics(labels, perfect)),
              ("frame", *frames, compute_metrics(*frames)),
              ("fakes only", [1, 1], [0.3, 0.6], {"auroc": None})]
    fig = plots.roc_figure(curves, "CDFv2 test - tiny/best.pt")
    ax = fig.axes[0]
    lines = ax.get_lines()[1:]
    assert len(lines) == 3  # the one-class curve is left out
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for line in lines:  # inside the frame, not on it
        assert x0 < min(line.get_xdata()) and max(line.get_xdata()) < x1
        assert y0 < min(line.get_ydata()) and max(line.get_ydata()) < y1
    image = picture(fig).astype(int)
    assert image.shape == (round(plots.SIZE_INCHES * plots.DPI),) * 2 + (3,)
    for line in lines:  # each colour is drawn, the coinciding ones too
        bgr = np.array(to_rgb(line.get_color()))[::-1] * 255
        assert (np.abs(image - bgr).sum(axis=2) < 40).sum() > 200, line.get_label()
    assert plots.roc_figure(curves[3:], "one class") is None


@pytest.mark.parametrize("figure", ["roc", "curves", "robustness"])
def test_legend_is_off_the_data(figure):
    labels, scores = [0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8]
    name = "a run named at length, as its folder is: " + "x" * 40  # the legend is not cut either
    fig = {"roc": lambda: plots.roc_figure([(name, labels, scores, compute_metrics(labels, scores))], "t"),
           "curves": lambda: plots.curves_figure(CURVES, "step"),
           "robustness": lambda: plots.robustness_figure(robustness_rows(), "t")}[figure]()
    picture(fig)  # drawn: the layout is done
    legend, ax = fig.legends[0].get_window_extent(), fig.axes[0].get_window_extent()
    assert not legend.overlaps(ax) and legend.y1 < ax.y0 and 0 <= legend.x0 < legend.x1 <= fig.bbox.x1


def test_curves_figure_each_run_with_its_best():
    fig = plots.curves_figure(CURVES, "step")
    ax = fig.axes[0]
    ln, _ = ax.get_lines()
    assert list(ln.get_xdata()) == [100, 200, 300] and ln.get_ydata() == pytest.approx([80, 86, 100])
    assert ax.get_ylim()[0] < 80 and ax.get_ylim()[1] > 100 and ax.get_xlim()[0] == 0  # no point on the frame
    assert ["100.00% at step 300" in t.get_text() for t in fig.legends[0].get_texts()] == [True, False]
    assert list(plots.curves_figure(CURVES, "epoch").axes[0].get_lines()[1].get_xdata()) == [1, 2, 3]


def test_robustness_figure_lines_from_the_unperturbed_point():
    fig = plots.robustness_figure(robustness_rows(), "CDFv2 test - full/best.pt, perturbed")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 1, 2]
    lines = {line.get_label(): line for line in ax.get_lines()}
    clean, jpeg, blur = (lines[t.get_text()] for t in fig.legends[0].get_texts())
    assert list(clean.get_ydata()) == pytest.approx([90, 90])
    # from the unperturbed value, mild (quality 90) to strong (30); nudged sideways, in order
    assert list(jpeg.get_ydata()) == pytest.approx([90, 88, 70])
    assert list(blur.get_ydata()) == pytest.approx([90, 86])
    assert np.diff(jpeg.get_xdata()) == pytest.approx([1, 1])
    assert jpeg.get_xdata()[0] < 0 < blur.get_xdata()[0]
    bars = [[tuple(s[:, 1]) for s in c.get_segments()] for c in ax.collections]  # the intervals, lo to hi
    assert bars == [[pytest.approx((83, 93)), pytest.approx((60, 80))], [pytest.approx((80, 91))]]
    rows = robustness_rows()
    rows[0]["video"] = {"auroc": None, "auroc_ci": None}
    assert plots.robustness_figure(rows, "one class") is None

