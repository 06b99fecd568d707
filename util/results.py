"""The paper's table as data, which row a checkpoint is, and a benchmark's results as evaluate.py shows
and stores them. Numbers in results are fractions; tables show percent."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from util import plots
from util.checkpoint import read_if_ours
from util.files import csv_text, write_json, write_output
from util.layouts import FFPP_METHODS, FFPP_SOURCES, Video
from util.perturb import label as perturbation_label

# ----------------------------------------------------------------------------- the paper

DATASETS = ("cdfv2", "dfd", "dfdc", "ffiw", "dsv1")  # the table's columns, trained on FF++ c23
FULL = "full (LN + norm + UnAl + slerp)"
TABLE = {  # row -> video-level AUROC (%) per column of DATASETS
    "linear probe (frozen CLIP)": (78.13, 88.15, 73.62, 79.28, 63.65),
    "LN-tuning":                  (94.88, 96.83, 86.41, 92.24, 83.57),
    "LN-tuning + L2 norm":        (96.21, 98.18, 87.82, 92.72, 88.81),
    FULL:                         (96.62, 98.00, 87.15, 91.52, 92.01),
}
ROWS = {("linear-probe", False, False, False): "linear probe (frozen CLIP)",  # (tuning, norm, losses, slerp)
        ("ln", False, False, False): "LN-tuning", ("ln", True, False, False): "LN-tuning + L2 norm",
        ("ln", True, True, True): FULL}
# the published recipe (train.TrainConfig's defaults): a run that departs from it is no reproduction
OBJECTIVE = ("uniformity", "alignment", "slerp")
RECIPE = {"clip": "ViT-L/14", "dataset": "ff++", "sources": list(FFPP_SOURCES), "balanced": False,
          "frames": 32, "batch_size": 128, "epochs": 10, "lr": 8e-5, "min_lr": 5e-5, "beta1": 0.9,
          "beta2": 0.999, "weight_decay": 0.0, "uniformity": 0.5, "alignment": 0.1}


def paper_row(config: dict) -> str | None:
    """The TABLE row a train.py config's objective is (tuning, norm, loss weights > 0, slerp), or None."""
    norm = config.get("norm", config.get("normalize"))
    tuning, uniformity, alignment, slerp = (config.get(k) for k in ("tuning", *OBJECTIVE))
    if None in (norm, tuning, uniformity, alignment, slerp):
        return None
    if (float(uniformity) > 0) != (float(alignment) > 0):
        return None
    return ROWS.get((tuning, bool(norm), float(uniformity) > 0, bool(slerp)))


def shown(value) -> str:
    """A config value as the recipe note writes it: ? when missing, on/off, 8e-05, a,b (sorted)."""
    if value is None or isinstance(value, bool):
        return {None: "?", True: "on", False: "off"}[value]
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return ",".join(sorted(value)) if isinstance(value, list) else str(value)


def departures(config: dict, row: str) -> list[str]:
    """How a config departs from the recipe: ['clip tiny (ViT-L/14)', ...] (loss weights: full row)."""
    keys = [k for k in RECIPE if row == FULL or k not in ("uniformity", "alignment")]
    return [f"{k} {shown(config.get(k))} ({shown(RECIPE[k])})" for k in keys
            if shown(config.get(k)) != shown(RECIPE[k])]


def paper_row_of(source: str) -> dict:
    """{"row": a checkpoint's TABLE row or None, "why", "departures"}; the authors' is FULL."""
    ours = None if source == "authors" else read_if_ours(source)
    if ours is None:
        why = "the authors' released checkpoint" if source == "authors" else "the authors' checkpoint format"
        return {"row": FULL, "why": why, "departures": []}
    config, row = ours["config"], paper_row(ours["config"])
    if row is None:
        keys = {"tuning": config.get("tuning"), "norm": config.get("norm", config.get("normalize"))}
        keys |= {k: config.get(k) for k in OBJECTIVE}
        text = ", ".join(f"{k} {shown(v)}" for k, v in keys.items())
        return {"row": None, "why": f"its config ({text}) matches no row of the paper's table",
                "departures": []}
    return {"row": row, "why": "from its config", "departures": departures(config, row)}


def recipe_note(paper: dict) -> str:
    """'recipe differs: clip tiny (ViT-L/14), ...', or '' for the published recipe."""
    return "recipe differs: " + ", ".join(paper["departures"]) if paper.get("departures") else ""


def beside(row: str | None, dataset: str, auroc: float | None, ci) -> dict | None:
    """The paper's AUROC (%) beside a measured one: {"paper", "diff" (points), "inside_ci" (on the
    interval's ends to two decimals, as printed)}; None without both numbers."""
    value = TABLE[row][DATASETS.index(dataset)] if row is not None and dataset in DATASETS else None
    if value is None or auroc is None:
        return None
    lo, hi = (round(100 * x, 2) for x in ci)
    return {"paper": value, "diff": 100 * auroc - value, "inside_ci": lo <= value <= hi}


# ----------------------------------------------------------------------------- tables

DISPLAY = {"cdfv2": "CDFv2", "dfd": "DFD", "dfdc": "DFDC", "ffiw": "FFIW", "dsv1": "DSv1",
           "ff++": "FF++", "dfdcp": "DFDCP", "folder": "folder"}  # how the tables name each dataset


def display(dataset: str) -> str:
    """Table name: CDFv2, FF++, and FF++ c40 for the folder ff++-c40."""
    base, _, compression = dataset.partition("-")
    return DISPLAY.get(base, base) + (f" {compression}" if compression else "")


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def auroc_cell(m: dict) -> str:
    """The AUROC (%) of metrics `m` and its 95% interval: `95.91 [94.70, 97.02]`; n/a when undefined."""
    if m["auroc"] is None:
        return "n/a"
    return f"{pct(m['auroc'])} [{pct(m['auroc_ci'][0])}, {pct(m['auroc_ci'][1])}]"


def points(x: float) -> str:
    """A difference of AUROCs in points, signed: +0.41 (-0.0 shown as +0.00)."""
    return f"{100 * x + 0.0:+.2f}"


def metrics_table(results: list[dict]) -> str:
    """All metrics per dataset and level, with counts; n/a cells explained below the table."""
    lines = ["| dataset | level | count | real | fake | AUROC [95% CI] | AP | EER | Acc@0.5 | Acc@thr "
             "| TPR@1%FPR | TPR@5%FPR |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in results:
        for level in ("video", "frame"):
            m = r[level]
            cells = [m["n"], m["n_real"], m["n_fake"], auroc_cell(m)]
            cells += [pct(m.get(k)) for k in ("ap", "eer", "acc", "acc_ref", "tpr@1%fpr", "tpr@5%fpr")]
            lines.append(f"| {display(r['dataset'])} | {level} | " + " | ".join(map(str, cells)) + " |")
            if m.get("undefined"):
                notes.append(f"- {display(r['dataset'])} {level}: {m['undefined']}")
    if results and "threshold" in results[0]:
        t = results[0]["threshold"]
        notes.append(f"- Acc@thr: accuracy at threshold {t['value']:.4f} ({t['how']}); TPR@x%FPR: on each "
                     f"dataset's own real videos")
    return "\n".join(lines + ([""] + notes if notes else []))


def paper_table(results: dict, label: str, paper: dict, missing: list[str], failed: dict[str, str]) -> str:
    """Video AUROC (%) in the paper's columns, the paper's row beneath, FF++ per manipulation."""
    def cell(d: str) -> str:
        return auroc_cell(results[d]["video"]) if d in results else "error" if d in failed else "missing"

    def mean(values: list[float]) -> str:  # of the columns measured, and how many: `95.10 (3/5)`
        some = f" ({len(values)}/{len(DATASETS)})" if len(values) < len(DATASETS) else ""
        return f"{sum(values) / len(values):.2f}{some}" if values else "n/a"

    row, note = paper["row"], recipe_note(paper)
    measured = [d for d in DATASETS if d in results and results[d]["video"]["auroc"] is not None]
    lines = ["Video-level AUROC (%) [95% CI], trained on FF++ c23:", "",
             "| model | " + " | ".join(DISPLAY[d] for d in DATASETS) + " | mean |",
             "|---|" + "---:|" * (len(DATASETS) + 1),
             f"| {label} | " + " | ".join(map(cell, DATASETS))
             + f" | {mean([100 * results[d]['video']['auroc'] for d in measured])} |"]
    if row is not None:
        paper_mean = mean([TABLE[row][DATASETS.index(d)] for d in measured])
        lines.append(f"| paper: {row}{f' ({note})' if note else ''} | "
                     + " | ".join(f"{v:.2f}" for v in TABLE[row]) + f" | {paper_mean} |")
    lines += ["", "FF++ test, video-level AUROC (%) per manipulation (real videos vs that method):", ""]
    ffpp = results.get("ff++")
    if ffpp is None:
        lines.append(f"FF++ test: {cell('ff++')}")
    else:
        srcs = list(ffpp.get("per_source", {}))
        cells = [auroc_cell(ffpp["per_source"][s]) for s in srcs] + [auroc_cell(ffpp["video"])]
        lines += ["| model | " + " | ".join(FFPP_METHODS.get(s, s) for s in srcs) + " | all |",
                  "|---|" + "---:|" * (len(srcs) + 1), f"| {label} | " + " | ".join(cells) + " |"]
    if missing:
        lines += ["", "missing (not preprocessed): " + ", ".join(map(display, missing))]
    if failed:
        lines += ["", "error (not evaluated; fix and re-run):"]
        lines += [f"- {display(d)}: {why}" for d, why in failed.items()]
    return "\n".join(lines)


def paper_comparison(results: dict, label: str, paper: dict) -> str:
    """The model's paper row, whether it is a reproduction, and the paper beside each AUROC."""
    if paper["row"] is None:
        return f"The paper's row for {label}: none: {paper['why']}; no paper number to compare."
    note = recipe_note(paper)
    verdict = f"{note}: not" if note else "the published recipe:"
    head = f"The paper's row for {label}: {paper['row']} ({paper['why']}); {verdict} a reproduction of " \
        "the row."
    if not paper["datasets"]:
        columns = ", ".join(DISPLAY[d] for d in DATASETS)
        return f"{head} No dataset evaluated here has an AUROC in the paper's columns ({columns})."
    lines = [head, "", "| dataset | video AUROC [95% CI] | paper | measured - paper | paper inside the CI |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {display(d)} | {auroc_cell(results[d]['video'])} | {b['paper']:.2f} | {b['diff']:+.2f} | "
              f"{'yes' if b['inside_ci'] else 'no'} |" for d, b in paper["datasets"].items()]
    return "\n".join(lines)


def robustness_table(dataset: str, split: str, robustness: dict) -> str:
    """Video AUROC (%) [95% CI] unperturbed and under each perturbation, with its change in points."""
    rows = robustness["rows"]
    lines = [f"{display(dataset)} {split} under perturbations of every crop (before the CLIP transform; "
             f"noise seed {robustness['seed']}), video-level AUROC (%):", "",
             "| perturbation | video AUROC [95% CI] | change |", "|---|---:|---:|",
             f"| none | {auroc_cell(rows[0]['video'])} | |"]
    for r in rows[1:]:
        m, clean = r["video"], rows[0]["video"]["auroc"]
        change = "n/a" if None in (m["auroc"], clean) else points(m["auroc"] - clean)
        name = perturbation_label(r["perturbation"], r["severity"])
        lines.append(f"| {name} | {auroc_cell(m)} | {change} |")
    return "\n".join(lines)


def comparison_table(c: dict) -> str:
    """Two models on the same videos (compare.json `c`): each AUROC, then A - B with DeLong's test."""
    lines = [f"{display(c['dataset'])} {c['split']}: both models scored on the same {c['n']} videos "
             f"({c['n_real']} real, {c['n_fake']} fake), video-level AUROC (%):", "",
             "| | model | paper's row | video AUROC [95% CI] |", "|---|---|---|---:|"]
    for key in ("a", "b"):
        row = "; ".join(filter(None, [c[key]["row"] or "none", recipe_note(c[key])]))
        lines.append(f"| {key.upper()} | {c[key]['model']} | {row} | {auroc_cell(c[key])} |")
    (lo, hi), (boot_lo, boot_hi) = c["ci"], c["bootstrap_ci"]
    p = "p < 0.0001" if c["p"] < 1e-4 else f"p = {c['p']:.2g}"
    lines += ["", f"A - B: {points(c['diff'])} [{points(lo)}, {points(hi)}] points, {p} "
              f"(DeLong's paired test; paired bootstrap 95% CI [{points(boot_lo)}, {points(boot_hi)}])"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reports and files

def benchmark_summary(label: str, split: str, results: dict, paper: dict, missing: list[str],
                      failed: dict[str, str], paper_columns: bool, n_boot: int, seed: int) -> dict:
    """summary.json: results, the paper's row beside them, the intervals' method, the Markdown."""
    paper = {**paper, "reproduction": paper["row"] is not None and not paper["departures"],
             "datasets": {d: b for d, r in results.items()
                          if (b := beside(paper["row"], d, r["video"]["auroc"], r["video"]["auroc_ci"]))}}
    head = [paper_table(results, label, paper, missing, failed)] if paper_columns else []
    head += [metrics_table(list(results.values())), paper_comparison(results, label, paper)]
    table = "\n\n".join(head + [robustness_table(d, r["split"], r["robustness"])
                                 for d, r in results.items() if "robustness" in r])
    intervals = (f"95% percentile bootstrap, {n_boot} class-stratified resamples of the videos (numpy "
                 f"seed {seed}); frame level: whole videos resampled")
    return {"model": label, "split": split, "results": results, "paper": paper, "intervals": intervals,
            "missing": missing, "failed": failed, "table": table}


def write_dataset_outputs(out_dir: Path, result: dict, videos: list[Video], video_p: np.ndarray,
                          curves: list, perturbed: np.ndarray | None = None) -> None:
    """videos.csv, roc.png (none for one class), with --perturb robustness.csv/png (`perturbed`
    [K, len(videos)]); metrics.json last, listing them: its presence means the others are complete."""
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake": f"{p:.6f}", "path": v.path, "file": v.file} for v, p in zip(videos, video_p)]
    write_output(out_dir / "videos.csv", csv_text(list(rows[0]), rows))
    result["files"] = {"videos": str(out_dir / "videos.csv"), "metrics": str(out_dir / "metrics.json")}
    title = f"{display(result['dataset'])} {result['split']} - {result['model']}"
    figures = {"roc": plots.roc_figure(curves, title)}
    if "robustness" in result:
        names = [perturbation_label(r["perturbation"], r["severity"])
                 for r in result["robustness"]["rows"][1:]]
        rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "path": v.path,
                 "none": f"{p:.6f}", **{name: f"{q:.6f}" for name, q in zip(names, column)}}
                for v, p, column in zip(videos, video_p, np.asarray(perturbed).T)]
        write_output(out_dir / "robustness.csv", csv_text(list(rows[0]), rows))
        result["files"]["robustness_csv"] = str(out_dir / "robustness.csv")
        figures["robustness"] = plots.robustness_figure(result["robustness"]["rows"], f"{title}, perturbed")
    for name, figure in figures.items():
        path = out_dir / f"{name}.png"
        if figure is not None:
            write_output(path, plots.png(figure))
        else:  # one class: no curve to draw, nor a stale one from a past run
            path.unlink(missing_ok=True)
        result["files"][name] = str(path) if figure is not None else None
    write_json(out_dir / "metrics.json", result)


def write_comparison(out: Path, c: dict, videos: list[Video], scores: list[np.ndarray]) -> None:
    """compare.csv (each video's p_fake under A and B), compare.md and compare.json (`c`), written last."""
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake_a": f"{a:.6f}", "p_fake_b": f"{b:.6f}", "path": v.path}
            for v, a, b in zip(videos, *scores)]
    write_output(out / "compare.csv", csv_text(list(rows[0]), rows))
    write_output(out / "compare.md", comparison_table(c) + "\n")
    write_json(out / "compare.json", c)
