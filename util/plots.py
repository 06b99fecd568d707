"""The figures evaluate.py writes: ROC curves of a benchmark (roc.png), validation video AUROC
during training (curves.png, the paper's Figure 1), video AUROC under perturbations
(robustness.png), and util.report's. matplotlib Figure objects drawn by Agg without pyplot: no
display, no backend to choose, no registry keeping every figure alive. Legends sit below the axes,
never on the data."""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from util.perturb import SEVERITY, strength
from util.run import Curve

SIZE_INCHES, DPI = 6.4, 100  # a 640 x 640 pixel PNG


def new_axes(title: str, xlabel: str, ylabel: str):
    """(figure, its one set of axes) with a title, axis labels and a light grid."""
    fig = Figure(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10, wrap=True)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, color="0.9")
    return fig, ax


def legend_below(fig: Figure) -> None:
    """The legend under the axes, off the data: long labels in one column, wrapped to the figure."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, [textwrap.fill(label, 80) for label in labels], loc="outside lower center",
               ncols=1 if max(map(len, labels)) > 40 else 2, fontsize=8, frameon=False)


def roc_figure(curves: list, title: str) -> Figure | None:
    """ROC curves (name, labels, scores, their data.compute_metrics) with AUROC and n in the
    legend and the chance diagonal; None when no curve is defined (one class only). The axes are
    padded and the curves drawn above the frame, widest first: curves along the axes (AUROC 1)
    or on top of each other all show."""
    defined = [c for c in curves if c[3]["auroc"] is not None]
    if not defined:
        return None
    fig, ax = new_axes(title, "False positive rate", "True positive rate")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for k, (name, labels, scores, m) in enumerate(defined):
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, linewidth=1.5 * (len(defined) - k), zorder=3, clip_on=False,
                label=f"{name}: AUROC {100 * m['auroc']:.2f}% (n={m['n']})")
    ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), aspect="equal")
    legend_below(fig)
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
    ax.set_ylim(100 * y_lo - 1, 100 * y_hi + 1)                 # a point at 100% is not cut in half
    ax.set_xlim(left=0)
    legend_below(fig)
    return fig


def robustness_figure(rows: list[dict], title: str) -> Figure | None:
    """Video AUROC (%) against the severity step: 0 = unperturbed (a star, a dashed line across),
    then each perturbation's severities from mild to strong, one line each from the unperturbed
    point, 95% intervals as error bars (nudged sideways so that coinciding lines stay readable).
    rows: evaluate.py's, the unperturbed ("none") first; None when its AUROC is undefined."""
    clean = rows[0]["video"]
    if clean["auroc"] is None:
        return None
    fig, ax = new_axes(title, "severity step (0 = unperturbed; then mild to strong)", "video AUROC (%)")
    ax.axhline(100 * clean["auroc"], linestyle="--", color="0.4", linewidth=1,
               label=f"unperturbed: {100 * clean['auroc']:.2f}%")
    ax.plot([0], [100 * clean["auroc"]], marker="*", markersize=12, color="0.2", linestyle="none", zorder=3)
    names, steps = list(dict.fromkeys(r["perturbation"] for r in rows[1:])), 1
    for k, name in enumerate(names):
        own = sorted((r for r in rows[1:] if r["perturbation"] == name),
                     key=lambda r: strength(name, r["severity"]))
        xs = np.arange(len(own) + 1) + 0.06 * (k - (len(names) - 1) / 2)     # [k+1], 0 = unperturbed
        ys = np.array([100 * m["auroc"] for m in [clean] + [r["video"] for r in own]])
        cis = np.array([r["video"]["auroc_ci"] for r in own]).reshape(-1, 2) * 100  # [k, 2]
        severities = ", ".join(f"{r['severity']:g}" for r in own)
        line, = ax.plot(xs, ys, marker="o", markersize=4, linewidth=2,
                        label=f"{name} ({SEVERITY[name][4]} {severities})")
        ax.errorbar(xs[1:], ys[1:], yerr=[ys[1:] - cis[:, 0], cis[:, 1] - ys[1:]], linestyle="none",
                    color=line.get_color(), capsize=3, elinewidth=1)
        steps = max(steps, len(xs))
    ax.set_xticks(range(steps))
    legend_below(fig)
    return fig


def png(fig: Figure) -> bytes:
    """The figure rendered by Agg, as the bytes of a PNG file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
