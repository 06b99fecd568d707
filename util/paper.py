"""The paper's cross-dataset table as data, which of its rows a checkpoint reproduces, and a
measured AUROC beside the paper's number."""
from __future__ import annotations

from util.checkpoint import read_if_ours

# the table's columns in its order (dataset keys of evaluate.py), trained on FF++ c23
DATASETS = ("cdfv2", "dfd", "dfdc", "ffiw", "dsv1")

# row -> video-level AUROC (%) per column of DATASETS, top to bottom as in the paper
TABLE = {
    "linear probe (frozen CLIP)":      (78.13, 88.15, 73.62, 79.28, 63.65),
    "LN-tuning":                       (94.88, 96.83, 86.41, 92.24, 83.57),
    "LN-tuning + L2 norm":             (96.21, 98.18, 87.82, 92.72, 88.81),
    "full (LN + norm + UnAl + slerp)": (96.62, 98.00, 87.15, 91.52, 92.01),
}

# the authors' released checkpoint is the full method
AUTHORS_ROW = "full (LN + norm + UnAl + slerp)"


def paper_row(config: dict) -> str | None:
    """The TABLE row a train.py checkpoint config reproduces, or None when it matches no row.

    Reads `tuning`, `norm` (older configs: `normalize`), `uniformity` and `alignment` (loss
    weights, 0 = off) and `slerp`. The rows: linear probe = tuning "linear-probe", no norm, both
    weights 0, no slerp; LN-tuning = "ln", no norm, weights 0, no slerp; LN-tuning + L2 norm =
    "ln", norm, weights 0, no slerp; full = "ln", norm, both weights > 0, slerp. Any other
    combination, or a config missing one of these keys, is None: the paper has no number for it."""
    norm = config.get("norm", config.get("normalize"))
    tuning, uniformity, alignment, slerp = (config.get(k) for k in ("tuning", "uniformity", "alignment", "slerp"))
    if None in (norm, tuning, uniformity, alignment, slerp):
        return None
    losses = (float(uniformity) > 0, float(alignment) > 0)
    variant = (tuning, bool(norm), losses, bool(slerp))
    return {("linear-probe", False, (False, False), False): "linear probe (frozen CLIP)",
            ("ln", False, (False, False), False): "LN-tuning",
            ("ln", True, (False, False), False): "LN-tuning + L2 norm",
            ("ln", True, (True, True), True): "full (LN + norm + UnAl + slerp)"}.get(variant)


def paper_value(row: str | None, dataset: str) -> float | None:
    """The paper's AUROC (%) of `row` on `dataset`; None when row is None (no matching row) or the
    dataset is not one of the table's columns (ff++, dfdcp, a folder). An unknown row name is a
    KeyError: row names come from TABLE (paper_row, AUTHORS_ROW)."""
    values = TABLE[row] if row is not None else None
    return values[DATASETS.index(dataset)] if values is not None and dataset in DATASETS else None


def config_text(config: dict) -> str:
    """The keys paper_row reads, as a reader checks them: `tuning ln, norm on, uniformity 0.5, ...`
    (`?` for a key the config lacks)."""
    norm = config.get("norm", config.get("normalize"))
    parts = {"tuning": config.get("tuning"), "norm": norm, "uniformity": config.get("uniformity"),
             "alignment": config.get("alignment"), "slerp": config.get("slerp")}
    show = {None: "?", True: "on", False: "off"}
    return ", ".join(f"{k} {show[v] if v is None or isinstance(v, bool) else v}" for k, v in parts.items())


def checkpoint_row(source: str) -> tuple[str | None, str]:
    """(the TABLE row a detector checkpoint reproduces, or None; why, as a clause of a sentence).
    'authors' and the authors' model.ckpt (a file not of this project's format) are the full
    method; this project's checkpoint is paper_row of the config it was trained with."""
    if source == "authors":
        return AUTHORS_ROW, "the authors' released checkpoint"
    ours = read_if_ours(source)
    if ours is None:
        return AUTHORS_ROW, "the authors' checkpoint format"
    row = paper_row(ours["config"])
    if row is None:
        return None, f"its config ({config_text(ours['config'])}) matches no row of the paper's table"
    return row, "from its config"


def beside(row: str | None, dataset: str, auroc: float | None, ci) -> dict | None:
    """The paper's AUROC (%) of `row` on `dataset` beside a measured AUROC and its interval
    (fractions, as the metrics hold them): {"paper": %, "diff": measured - paper in points,
    "inside_ci": whether the paper's number lies in the interval}; None when the paper has no
    number for it or nothing was measured (one class). Inside is judged on the interval's ends in
    percent to two decimals, as the tables print them and the paper gives its numbers."""
    value = paper_value(row, dataset)
    if value is None or auroc is None:
        return None
    lo, hi = (round(100 * x, 2) for x in ci)
    return {"paper": value, "diff": 100 * auroc - value, "inside_ci": lo <= value <= hi}
