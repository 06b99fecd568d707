"""The figures evaluate.py writes, drawn with matplotlib: ROC curves of a benchmark (roc.png),
validation video AUROC during training (curves.png, the paper's Figure 1) and video AUROC under
perturbations (robustness.png), each a Figure object that png() renders to the bytes of a PNG file.

Figures are matplotlib.figure.Figure objects drawn by the Agg renderer directly, without pyplot:
no display, no backend to choose, no figure registry that keeps every figure alive."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from util.files import png_bytes
from util.perturb import SEVERITY, strength
from util.train_log import Curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIZE_INCHES, DPI = 6.4, 100  # a 640 x 640 pixel PNG


def new_axes(title: str, xlabel: str, ylabel: str):
    """(figure, its one set of axes) with a title, axis labels and a light grid."""
    from matplotlib.figure import Figure  # imported here: half a second of every command's start-up
    fig = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10, wrap=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9")
    return fig, ax


def roc_figure(curves: list, title: str) -> Figure | None:
    """ROC curves (name, labels, scores, their data.compute_metrics) with AUROC and n in the
    legend and the chance diagonal; None when no curve is defined (one class only)."""
    from sklearn.metrics import roc_curve  # imported here: a quarter of every command's start-up
    defined = [c for c in curves if c[3]["auroc"] is not None]
    if not defined:
        return None
    fig, ax = new_axes(title, "False positive rate", "True positive rate")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, labels, scores, m in defined:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, linewidth=2, label=f"{name}: AUROC {100 * m['auroc']:.2f}% (n={m['n']})")
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def curves_figure(curves: list[Curve], x: str) -> Figure:
    """Val video AUROC (%) against x ('step' or 'epoch'), one line with markers per run; the
    legend says each run's best and where."""
    xlabel = "training step" if x == "step" else "epoch (0 = the first, as train.py logs it)"
    fig, ax = new_axes("Validation video-level AUROC during training", xlabel, "val video AUROC (%)")
    for c in curves:
        xs, b = c.steps if x == "step" else c.epochs, c.best()
        ax.plot(xs, [100 * v for v in c.auroc], marker="o", markersize=4, linewidth=2,
                label=f"{c.run.name}: best {100 * c.auroc[b]:.2f}% at {x} {xs[b]}")
    values = [v for c in curves for v in c.auroc]
    y_lo = max(0.0, math.floor(min(values) * 20 - 0.5) / 20)   # 5% steps, a margin below
    y_hi = min(1.0, math.ceil(max(values) * 20 + 0.5) / 20)
    ax.set_ylim(100 * y_lo, 100 * y_hi)
    ax.set_xlim(left=0)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def robustness_figure(rows: list[dict], title: str) -> Figure | None:
    """Video AUROC (%) under perturbations against the severity step: 0 = unperturbed (a star and a
    dashed line across), then each perturbation's severities from mild to strong
    (util.perturb.strength), one line per perturbation from the unperturbed point, with its 95%
    intervals as error bars on the perturbed points (nudged sideways so that lines on top of each
    other stay readable) and its severities in the legend. rows: evaluate.py's robustness rows,
    the unperturbed (perturbation "none") first; None when its AUROC is undefined (one class: the
    same videos, so every row's is)."""
    clean = rows[0]["video"]
    if clean["auroc"] is None:
        return None
    fig, ax = new_axes(title, "severity step (0 = unperturbed; then mild to strong)", "video AUROC (%)")
    ax.axhline(100 * clean["auroc"], linestyle="--", color="0.4", linewidth=1,
               label=f"unperturbed: {100 * clean['auroc']:.2f}%")
    ax.plot([0], [100 * clean["auroc"]], marker="*", markersize=12, color="0.2", linestyle="none", zorder=3)
    names, steps = list(dict.fromkeys(r["perturbation"] for r in rows[1:])), 1
    for k, name in enumerate(names):
        own = sorted((r for r in rows[1:] if r["perturbation"] == name), key=lambda r: strength(name, r["severity"]))
        nudge = 0.06 * (k - (len(names) - 1) / 2)
        xs = np.arange(len(own) + 1) + nudge                                   # [k+1], 0 = unperturbed
        ys = np.array([100 * m["auroc"] for m in [clean] + [r["video"] for r in own]])
        cis = np.array([r["video"]["auroc_ci"] for r in own]).reshape(-1, 2) * 100  # [k, 2]
        line, = ax.plot(xs, ys, marker="o", markersize=4, linewidth=2,
                        label=f"{name} ({SEVERITY[name][4]} " + ", ".join(f"{r['severity']:g}" for r in own) + ")")
        ax.errorbar(xs[1:], ys[1:], yerr=[ys[1:] - cis[:, 0], cis[:, 1] - ys[1:]], linestyle="none",
                    color=line.get_color(), capsize=3, elinewidth=1)
        steps = max(steps, len(xs))
    ax.set_xticks(range(steps))
    ax.legend(loc="lower left", fontsize=8)
    return fig


def png(fig: Figure) -> bytes:
    """The figure rendered by Agg, as the bytes of a PNG file (files.png_bytes encodes it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # [H, W, 4]
    return png_bytes(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR))
