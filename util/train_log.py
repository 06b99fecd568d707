"""train.py's log.jsonl read back: a run's validation video AUROC at the end of each epoch (the
data of the paper's Figure 1)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.layouts import DataError


@dataclass
class Curve:
    """One run's validation records: the run folder, then per epoch end step, epoch, AUROC."""
    run: Path
    steps: list[int]
    epochs: list[int]
    auroc: list[float]
    undefined: int = 0   # epochs whose val AUROC was undefined (null: one class)

    def best(self) -> int:
        """Index of the best record (the first of equals, as train.py keeps best.pt)."""
        return int(np.argmax(self.auroc))


def parse_record(line: str, where: str) -> dict | None:
    """One log.jsonl line -> the validation record {step, epoch, val_video_auroc} it holds, or
    None for a step log or an epoch end without validation. DataError for a malformed line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a JSON object ({e.msg}); train.py writes one per line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object; train.py writes one per line")
    if not record.get("epoch_done") or "val_video_auroc" not in record:
        return None
    value, step, epoch = record["val_video_auroc"], record.get("step"), record.get("epoch")
    valid = (type(step) is int and type(epoch) is int
             and (value is None or (type(value) in (int, float) and 0 <= value <= 1)))
    if not valid:
        raise DataError(f"{where}: a validation record needs an integer step and epoch and "
                        f"val_video_auroc in [0, 1] or null, found {line.strip()[:120]}")
    return record


def read_curve(run: Path) -> Curve:
    """The validation AUROC records of a train.py run folder (its log.jsonl). A resumed run may
    log a step twice: the last record of a step counts."""
    log = run / "log.jsonl"
    if not run.is_dir():
        raise FileNotFoundError(f"--curves {run}: not a folder; expected a train.py run folder "
                                f"such as runs/<name>/ holding log.jsonl")
    if not log.is_file():
        raise FileNotFoundError(f"--curves {run}: no log.jsonl in it; expected a train.py run "
                                f"folder (train.py writes runs/<name>/log.jsonl)")
    records = {}
    try:
        with open(log, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                record = parse_record(line, f"{log} line {n}") if line.strip() else None
                if record is not None:
                    records[record["step"]] = record
    except UnicodeDecodeError:
        raise DataError(f"{log}: not UTF-8 text; expected train.py's log (one JSON object per line)") from None
    if not records:
        raise DataError(f"{log}: no validation records (lines with \"epoch_done\": true and "
                        f"\"val_video_auroc\"); train.py writes one per finished epoch unless --no-val")
    kept = [records[s] for s in sorted(records) if records[s]["val_video_auroc"] is not None]
    if not kept:
        raise DataError(f"{log}: val video AUROC undefined (null) in all {len(records)} validation "
                        f"records: the val split holds one class only")
    return Curve(run, [r["step"] for r in kept], [r["epoch"] for r in kept],
                 [float(r["val_video_auroc"]) for r in kept], len(records) - len(kept))
