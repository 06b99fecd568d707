"""The paper's cross-dataset table as data, and which of its rows a checkpoint's config is."""
from __future__ import annotations

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
