"""A benchmark's results as evaluate.py shows and stores them: the Markdown tables (every metric
per dataset and level, the paper's columns with the paper's row beside the measured one,
robustness under perturbations, two models compared) and the files of each dataset and of a
comparison, each written whole. Numbers in the results are fractions (as data.compute_metrics
gives them); tables show percent, each AUROC with its 95% interval: `95.91 [94.70, 97.02]`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from util import plots
from util.files import csv_text, write_json, write_output
from util.layouts import FFPP_METHODS, Video
from util.paper import DATASETS, beside, paper_value
from util.perturb import label as perturbation_label
from util.stats import paired_comparison

# how the tables name each dataset
DISPLAY = {"cdfv2": "CDFv2", "dfd": "DFD", "dfdc": "DFDC", "ffiw": "FFIW", "dsv1": "DSv1",
           "ff++": "FF++", "dfdcp": "DFDCP", "folder": "folder"}


def display(dataset: str) -> str:
    """Table name: CDFv2, FF++, and FF++ c40 for the folder ff++-c40."""
    base, _, compression = dataset.partition("-")
    return DISPLAY.get(base, base) + (f" {compression}" if compression else "")


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def auroc_cell(m: dict) -> str:
    """The AUROC (%) of metrics `m` and its 95% interval `auroc_ci`; n/a when undefined."""
    if m["auroc"] is None:
        return "n/a"
    lo, hi = m["auroc_ci"]
    return f"{pct(m['auroc'])} [{pct(lo)}, {pct(hi)}]"


def points(x: float) -> str:
    """A difference of AUROCs in points, signed: +0.41 (-0.0 shown as +0.00)."""
    return f"{100 * x + 0.0:+.2f}"


def metrics_table(results: list[dict]) -> str:
    """All metrics per dataset and level, with counts; n/a cells explained below the table."""
    lines = ["| dataset | level | count | real | fake | AUROC [95% CI] | AP | EER | Acc@0.5 | Acc@thr "
             "| TPR@1%FPR | TPR@5%FPR |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in results:
        name = display(r["dataset"])
        for level in ("video", "frame"):
            m = r[level]
            lines.append(f"| {name} | {level} | {m['n']} | {m['n_real']} | {m['n_fake']} | "
                         f"{auroc_cell(m)} | {pct(m['ap'])} | {pct(m['eer'])} | {pct(m['acc'])} | "
                         f"{pct(m.get('acc_ref'))} | {pct(m.get('tpr@1%fpr'))} | {pct(m.get('tpr@5%fpr'))} |")
            if m.get("undefined"):
                notes.append(f"- {name} {level}: {m['undefined']}")
    if results and "threshold" in results[0]:
        t = results[0]["threshold"]
        notes.append(f"- Acc@thr: accuracy at threshold {t['value']:.4f} ({t['how']}); TPR@x%FPR: on each "
                     f"dataset's own real videos")
    return "\n".join(lines + ([""] + notes if notes else []))


def mean_cell(values: list[float]) -> str:
    """The mean of the paper's columns that were measured, and how many of them: `95.10 (3/5)`."""
    if not values:
        return "n/a"
    some = f" ({len(values)}/{len(DATASETS)})" if len(values) < len(DATASETS) else ""
    return f"{sum(values) / len(values):.2f}{some}"


def paper_table(results: dict, label: str, row: str | None, missing: list[str], failed: dict[str, str]) -> str:
    """Video-level AUROC (%) in the paper's columns and their mean (no interval), the paper's row
    beneath when the model has one (its mean over the same columns), plus FF++ per manipulation.
    `missing`: datasets not preprocessed; `failed`: {dataset: why it could not be evaluated}."""
    def cell(d: str) -> str:
        return auroc_cell(results[d]["video"]) if d in results else "error" if d in failed else "missing"

    measured = [d for d in DATASETS if d in results and results[d]["video"]["auroc"] is not None]
    lines = ["Video-level AUROC (%) [95% CI], trained on FF++ c23:", "",
             "| model | " + " | ".join(DISPLAY[d] for d in DATASETS) + " | mean |",
             "|---|" + "---:|" * (len(DATASETS) + 1),
             f"| {label} | " + " | ".join(cell(d) for d in DATASETS)
             + f" | {mean_cell([100 * results[d]['video']['auroc'] for d in measured])} |"]
    if row is not None:
        lines.append(f"| paper: {row} | " + " | ".join(f"{paper_value(row, d):.2f}" for d in DATASETS)
                     + f" | {mean_cell([paper_value(row, d) for d in measured])} |")
    ffpp = results.get("ff++")
    lines += ["", "FF++ test, video-level AUROC (%) per manipulation (real videos vs that method):", ""]
    if ffpp is None:
        lines.append(f"FF++ test: {cell('ff++')}")
    else:
        srcs = list(ffpp.get("per_source", {}))
        lines += ["| model | " + " | ".join(FFPP_METHODS.get(s, s) for s in srcs) + " | all |",
                  "|---|" + "---:|" * (len(srcs) + 1),
                  f"| {label} | " + " | ".join(auroc_cell(ffpp["per_source"][s]) for s in srcs)
                  + f" | {auroc_cell(ffpp['video'])} |"]
    if missing:
        lines += ["", "missing (not preprocessed): " + ", ".join(display(d) for d in missing)]
    if failed:
        lines += ["", "error (not evaluated; fix and re-run):"]
        lines += [f"- {display(d)}: {why}" for d, why in failed.items()]
    return "\n".join(lines)


def paper_comparison(results: dict, label: str, paper: dict) -> str:
    """The paper's row the model reproduces, and per dataset the paper's number beside the measured
    AUROC: the difference and whether the paper's number lies inside the 95% interval. `paper`:
    {"row": name or None, "why": a clause, "datasets": {dataset: util.paper.beside(...)}}."""
    if paper["row"] is None:
        return f"The paper's row for {label}: none: {paper['why']}; no paper number to compare."
    head = f"The paper's row for {label}: {paper['row']} ({paper['why']})."
    if not paper["datasets"]:
        return head + " No dataset evaluated here has an AUROC in the paper's columns (" + \
            ", ".join(DISPLAY[d] for d in DATASETS) + ")."
    lines = [head, "", "| dataset | video AUROC [95% CI] | paper | measured - paper | paper inside the CI |",
             "|---|---:|---:|---:|---|"]
    for d, b in paper["datasets"].items():
        lines.append(f"| {display(d)} | {auroc_cell(results[d]['video'])} | {b['paper']:.2f} | "
                     f"{b['diff']:+.2f} | {'yes' if b['inside_ci'] else 'no'} |")
    return "\n".join(lines)


def robustness_table(dataset: str, split: str, robustness: dict) -> str:
    """Video-level AUROC (%) [95% CI] of a split unperturbed and under each perturbation, with its
    change from the unperturbed in points. `robustness`: {"seed", "rows": [{"perturbation",
    "severity", "video": metrics}, ...]}, the unperturbed row ("none") first."""
    rows = robustness["rows"]
    clean = rows[0]["video"]["auroc"]
    lines = [f"{display(dataset)} {split} under perturbations of every crop (before the CLIP transform; "
             f"noise seed {robustness['seed']}), video-level AUROC (%):", "",
             "| perturbation | video AUROC [95% CI] | change |", "|---|---:|---:|",
             f"| none | {auroc_cell(rows[0]['video'])} | |"]
    for r in rows[1:]:
        m = r["video"]
        change = "n/a" if m["auroc"] is None or clean is None else points(m["auroc"] - clean)
        lines.append(f"| {perturbation_label(r['perturbation'], r['severity'])} | {auroc_cell(m)} | {change} |")
    return "\n".join(lines)


def p_value(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def comparison_table(c: dict) -> str:
    """Two models on the same videos: each one's video AUROC [95% CI] and paper's row, then A - B
    with DeLong's paired interval and p-value, and the paired bootstrap's interval. `c`: evaluate.py's
    compare.json (fractions)."""
    lines = [f"{display(c['dataset'])} {c['split']}: both models scored on the same {c['n']} videos "
             f"({c['n_real']} real, {c['n_fake']} fake), video-level AUROC (%):", "",
             "| | model | paper's row | video AUROC [95% CI] |", "|---|---|---|---:|"]
    for key in ("a", "b"):
        m = c[key]
        lines.append(f"| {key.upper()} | {m['model']} | {m['row'] or 'none'} | {auroc_cell(m)} |")
    lo, hi = c["ci"]
    boot_lo, boot_hi = c["bootstrap_ci"]
    lines += ["", f"A - B: {points(c['diff'])} [{points(lo)}, {points(hi)}] points, {p_value(c['p'])} "
              f"(DeLong's paired test; paired bootstrap 95% CI [{points(boot_lo)}, {points(boot_hi)}])"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reports

def benchmark_summary(label: str, split: str, results: dict, row: str | None, why: str, missing: list[str],
                      failed: dict[str, str], paper_columns: bool, n_boot: int, seed: int) -> dict:
    """What a benchmark run reports (summary.json): the results per dataset, the paper's row and its
    numbers beside the measured ones, how the intervals were drawn (n_boot resamples from seed),
    and `table`, the Markdown: the paper's columns (paper_columns: --dataset all), every metric,
    the paper's row beside the measured one, and robustness for each dataset perturbed."""
    paper = {"row": row, "why": why,
             "datasets": {d: b for d, r in results.items()
                          if (b := beside(row, d, r["video"]["auroc"], r["video"]["auroc_ci"]))}}
    head = [paper_table(results, label, row, missing, failed)] if paper_columns else []
    table = "\n\n".join(head + [metrics_table(list(results.values())), paper_comparison(results, label, paper)]
                         + [robustness_table(d, r["split"], r["robustness"]) for d, r in results.items()
                            if "robustness" in r])
    intervals = (f"95% percentile bootstrap, {n_boot} class-stratified resamples of the videos (numpy "
                 f"seed {seed}); frame level: whole videos resampled")
    return {"model": label, "split": split, "results": results, "paper": paper, "intervals": intervals,
            "missing": missing, "failed": failed, "table": table}


def comparison(labels: np.ndarray, sides: dict, scores: list[np.ndarray], n_boot: int, seed: int, **about) -> dict:
    """Two models' video scores on the same videos compared (compare.json): `about` (dataset, split,
    data), the counts, `sides` ({"a": {"model", "row", metrics}, "b": ...}) and
    util.stats.paired_comparison's auroc_a, auroc_b, diff, ci, p and bootstrap_ci."""
    return {**about, "n": int(labels.size), "n_real": int((labels == 0).sum()), "n_fake": int(labels.sum()),
            **sides, **paired_comparison(labels, *scores, n_boot=n_boot, seed=seed),
            "method": "DeLong's paired test of the two video AUROCs (ci: the difference +- 1.96 standard "
                      f"errors); bootstrap_ci: paired percentile bootstrap, {n_boot} class-stratified "
                      f"resamples of the videos (seed {seed})"}


# ----------------------------------------------------------------------------- files

def write_dataset_outputs(out_dir: Path, result: dict, videos: list[Video], video_p: np.ndarray,
                          curves: list, perturbed: np.ndarray | None = None) -> None:
    """videos.csv, roc.png (none for one class), with result["robustness"] robustness.csv (each
    video's p_fake unperturbed and under each perturbation, `perturbed` [K, len(videos)]) and
    robustness.png, and metrics.json, which lists the files and is written last: its presence
    means the others are complete. curves: plots.roc_figure's (name, labels, scores, metrics)."""
    videos_csv, metrics = out_dir / "videos.csv", out_dir / "metrics.json"
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake": f"{p:.6f}", "path": v.path, "file": v.file} for v, p in zip(videos, video_p)]
    write_output(videos_csv, csv_text(list(rows[0]), rows))
    result["files"] = {"videos": str(videos_csv), "metrics": str(metrics)}
    title = f"{display(result['dataset'])} {result['split']} - {result['model']}"
    figures = {"roc": plots.roc_figure(curves, title)}
    if "robustness" in result:
        names = [perturbation_label(r["perturbation"], r["severity"]) for r in result["robustness"]["rows"][1:]]
        scored = [{"video_id": v.video_id, "source": v.source, "label": v.label, "path": v.path, "none": f"{p:.6f}",
                   **{name: f"{q:.6f}" for name, q in zip(names, column)}}
                  for v, p, column in zip(videos, video_p, np.asarray(perturbed).T)]
        write_output(out_dir / "robustness.csv", csv_text(list(scored[0]), scored))
        result["files"]["robustness_csv"] = str(out_dir / "robustness.csv")
        figures["robustness"] = plots.robustness_figure(result["robustness"]["rows"], f"{title}, perturbed")
    for name, figure in figures.items():
        path = out_dir / f"{name}.png"
        if figure is not None:
            write_output(path, plots.png(figure))
        else:  # one class: no curve to draw, nor a stale one from a past run
            path.unlink(missing_ok=True)
        result["files"][name] = str(path) if figure is not None else None
    write_json(metrics, result)


def write_comparison(out: Path, c: dict, videos: list[Video], scores: list[np.ndarray]) -> None:
    """compare.csv (each video's p_fake under A and B), compare.md (comparison_table) and
    compare.json (`c`), written last."""
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake_a": f"{a:.6f}", "p_fake_b": f"{b:.6f}", "path": v.path} for v, a, b in zip(videos, *scores)]
    write_output(out / "compare.csv", csv_text(list(rows[0]), rows))
    write_output(out / "compare.md", comparison_table(c) + "\n")
    write_json(out / "compare.json", c)
