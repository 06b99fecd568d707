"""Reference scores: the video scores of a held-out split (FF++ val) that a verdict is read
against. They give the threshold (equal error rate, a false-alarm rate, or a number), the score's
rank among the reference's real videos (a conformal p-value), and the verdict sentence; they are
stored in a checkpoint (key "reference") or in a file beside it, checked against it.

    reference = build_reference(labels, video_p, "FF++ val")      # labels 1 = fake
    save_reference(reference, Path("runs/x/best.pt"))             # runs/x/best.pt.reference.json
    reference = load_reference(Path("runs/x/best.pt"))            # or None: uncalibrated
    threshold = choose_threshold(threshold_flag("eer"), reference)
    print(judge(0.73, threshold, reference).line())
    # p_fake 0.7300 -> FAKE: above 97.1% of the 140 FF++ val real videos; threshold 0.4100
    # (equal error rate on FF++ val)

A video is called fake when p_fake > threshold (a tie goes to real, as data.compute_metrics and
the argmax of the two logits decide).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.checkpoint import read_if_ours
from util.download import AUTHORS_URL, download, sha256_of
from util.files import write_json

FORMAT = "clip-deepfake-reference/1"
KEY = "reference"          # the entry of a checkpoint dict that carries its reference (train.py's best.pt)
SUFFIX = ".reference.json"  # the file beside a checkpoint: best.pt -> best.pt.reference.json
DEFAULT_THRESHOLD = 0.5    # the argmax of the two logits: uncalibrated
TABLE_FPRS = (0.01, 0.05)  # the false-alarm rates of the benchmark table's TPR columns


# ----------------------------------------------------------------------------- the reference

@dataclass(frozen=True)
class Reference:
    """Video scores (p_fake) of a labelled split the detector was not trained on."""
    real: np.ndarray   # [R] float64, the real videos' scores, sorted ascending
    fake: np.ndarray   # [F] float64, the fake videos' scores, sorted ascending
    source: str        # what the videos are, for sentences: "FF++ val"
    origin: str = ""   # where it was read from: "stored in runs/x/best.pt", or the file beside it

    def describe(self) -> str:
        """One line naming the reference, e.g. for evaluate.py to print once before the verdicts."""
        where = f" ({self.origin})" if self.origin else ""
        return f"reference: {self.real.size} real and {self.fake.size} fake {self.source} videos{where}"


def split_source(dataset: str, split: str) -> str:
    """A split as sentences name it: "FF++ val" for ff++'s val split, "FF++ c40 val" for ff++-c40's."""
    from util.results import display  # imported here: its statistics cost train.py half a second of start-up
    return f"{display(dataset)} {split}"


def build_reference(labels, scores, source: str = "FF++ val", origin: str = "") -> Reference:
    """The reference of a split from its video labels (0 real, 1 fake) and video scores (p_fake in
    [0, 1]), in any order. ValueError when the lengths differ, a label is not 0/1, a score is not
    a finite number in [0, 1], or a class is missing (the equal error rate needs both)."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), found {sorted(set(labels.tolist()))[:5]}")
    bad = ~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
    if bad.any():
        raise ValueError(f"scores must be p_fake in [0, 1]: {int(bad.sum())} are not, e.g. {scores[bad][0]}")
    real, fake = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    if real.size == 0 or fake.size == 0:
        raise ValueError(f"a reference needs real and fake videos: got {real.size} real, {fake.size} fake")
    return Reference(real, fake, source, origin)


def reference_entry(reference: Reference) -> dict:
    """The reference as plain types (a checkpoint's KEY entry loads with weights_only=True):
    {"format": FORMAT, "source": str, "real": [float], "fake": [float]}."""
    return {"format": FORMAT, "source": reference.source,
            "real": reference.real.tolist(), "fake": reference.fake.tolist()}


def from_entry(entry, origin: str) -> Reference:
    """reference_entry's dict back as a Reference; ValueError (without the fix) when it is not one."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"not a reference of format {FORMAT!r} (found {found!r})")
    if not isinstance(entry.get("source"), str):
        raise ValueError("its source is missing")
    for part in ("real", "fake"):
        values = entry.get(part)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"its {part} scores are missing or not numbers")
    labels = [0] * len(entry["real"]) + [1] * len(entry["fake"])
    return build_reference(labels, entry["real"] + entry["fake"], entry["source"], origin)


def scores_sha256(entry: dict) -> str:
    """SHA-256 of an entry's source and scores: a reference file edited or damaged into other
    valid JSON fails it."""
    return hashlib.sha256(json.dumps([entry["source"], entry["real"], entry["fake"]]).encode()).hexdigest()


# ----------------------------------------------------------------------------- beside a checkpoint

def checkpoint_file(source: str | os.PathLike) -> Path:
    """The file a --checkpoint names, the one its reference belongs to: the path, or for `authors`
    the cached download (util.download; fetched now if it is not there yet)."""
    return download(AUTHORS_URL) if str(source) == "authors" else Path(source)


def reference_path(checkpoint: str | os.PathLike) -> Path:
    """The file beside a checkpoint file that holds its reference: <checkpoint>.reference.json.
    For the authors' weights, `checkpoint` is the cached download (util.download.download)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


def save_reference(reference: Reference, checkpoint: str | os.PathLike) -> Path:
    """Writes the reference beside the checkpoint file it was scored with (whole or not at all;
    a failed write is one OSError naming the file) and returns its path.

    Ownership: the file records the SHA-256 of the checkpoint file's bytes (what load_reference
    checks). A file hash serves every kind of checkpoint alike (this project's, the authors'
    Lightning file) without loading a model; it stays valid when the checkpoint is copied or
    renamed, and fails when the checkpoint is rewritten (training went on: another model)."""
    checkpoint = Path(checkpoint)
    entry = reference_entry(reference)
    path = reference_path(checkpoint)
    write_json(path, {**entry, "checkpoint": checkpoint.name, "checkpoint_sha256": sha256_of(checkpoint),
                      "scores_sha256": scores_sha256(entry)})
    return path


def calibrate(source: str, labels, scores, split: str = "FF++ val") -> Path:
    """evaluate.py --calibrate: the reference of a split's video labels and scores, by the checkpoint
    --checkpoint names (a path or `authors`), saved beside it (save_reference) and said in one line."""
    reference = build_reference(labels, scores, split)
    path = save_reference(reference, checkpoint_file(source))
    print(f"{reference.describe()}: written to {path}")
    return path


def load_reference(checkpoint: str | os.PathLike, name: str | None = None) -> Reference | None:
    """The reference of a checkpoint file: the file beside it (reference_path) when there is one,
    else the KEY entry of this project's checkpoint (train.py stores its FF++ val scores there),
    else None (uncalibrated). The file beside wins: it was made later, on purpose (--calibrate).

    One-line ValueError when the file beside is damaged (not JSON, a field missing or malformed,
    scores failing their SHA-256) or was made for another checkpoint (its checkpoint_sha256 is not
    this file's), or when the checkpoint's own entry is damaged. `name`: the checkpoint as the user
    gave it (--checkpoint authors), for the fix the message gives; default: the path."""
    checkpoint = Path(checkpoint)
    name = name or str(checkpoint)
    fix = f"delete it and make it again: python evaluate.py --calibrate --checkpoint {name}"
    path = reference_path(checkpoint)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            reference = from_entry(stored, str(path))
            if stored.get("scores_sha256") != scores_sha256(stored):
                raise ValueError("its scores do not match their SHA-256")
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path} is a damaged reference file ({str(e).splitlines()[0][:160]}); {fix}") from None
        if stored.get("checkpoint_sha256") != sha256_of(checkpoint):
            made = f"{stored['checkpoint']!r}, " if isinstance(stored.get("checkpoint"), str) else ""
            raise ValueError(f"{path} was made for another checkpoint ({made}SHA-256 "
                             f"{str(stored.get('checkpoint_sha256'))[:16]}...), not for {checkpoint} as it is now; {fix}")
        return reference
    ckpt = read_if_ours(checkpoint)
    if ckpt is None or KEY not in ckpt:
        return None
    try:
        return from_entry(ckpt[KEY], f"stored in {checkpoint}")
    except ValueError as e:
        raise ValueError(f"{checkpoint} holds a damaged reference ({e}); make one beside it: "
                         f"python evaluate.py --calibrate --checkpoint {name}") from None


# ----------------------------------------------------------------------------- thresholds

@dataclass(frozen=True)
class ThresholdRule:
    """What --threshold asks for: kind "value" (a number in [0, 1]), "eer", or "fpr" (value = the rate)."""
    kind: str
    value: float | None = None


THRESHOLD_HELP = ("a number in [0, 1], 'eer' (equal error rate on the reference) or 'fpr=R' (R false "
                  "alarms on the reference's real videos, R in (0, 1), e.g. fpr=0.01)")


def threshold_flag(text: str) -> ThresholdRule:
    """argparse type of --threshold: a number in [0, 1], `eer`, or `fpr=R` with R in (0, 1)."""
    text = text.strip().lower()
    if text == "eer":
        return ThresholdRule("eer")
    kind, number = ("fpr", text[4:]) if text.startswith("fpr=") else ("value", text)
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    ok = 0 < value < 1 if kind == "fpr" else 0 <= value <= 1  # nan fails both
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not {THRESHOLD_HELP}")
    return ThresholdRule(kind, value)


@dataclass(frozen=True)
class Threshold:
    value: float
    how: str  # where it comes from, for the verdict: "equal error rate on FF++ val", ...


def eer_threshold(reference: Reference) -> float:
    """The threshold at the equal error rate of the reference's videos, by the definition of
    data.equal_error_rate: on sklearn's ROC curve (every point, thresholds decreasing) FNR - FPR
    falls from 1 to -1, and the EER lies on the segment from the last point with FNR > FPR to the
    first with FNR <= FPR, where it crosses 0; the threshold is interpolated between those two
    points' thresholds in the same proportion as the rate. roc_curve's point k calls fake the
    scores >= its threshold, which this project's rule (p_fake > threshold) calls fake at the next
    lower score: the point's threshold here (0 for the last point, every video fake). So the
    threshold found lies among those that give the first point with FNR <= FPR."""
    from sklearn.metrics import roc_curve  # imported here: a quarter of every command's start-up
    from util.stats import at_equal_error  # data.equal_error_rate's crossing, for the threshold
    labels = np.r_[np.zeros(reference.real.size), np.ones(reference.fake.size)]
    fpr, tpr, at_least = roc_curve(labels, np.r_[reference.real, reference.fake], drop_intermediate=False)
    above = np.r_[at_least[1:], 0.0]                   # the same points as p_fake > threshold
    return at_equal_error(fpr, tpr, above)


def fpr_threshold(real, fpr: float) -> float:
    """The lowest threshold at which at most a share `fpr` of the real scores `real` lie above it
    (are false alarms): the (floor(fpr * R) + 1)-th largest real score. Ties make the share
    smaller, never larger; with fpr * R < 1 it is the largest real score (no false alarm)."""
    real = np.sort(np.asarray(real, dtype=np.float64).reshape(-1))[::-1]  # descending
    if real.size == 0 or not 0 < fpr < 1:
        raise ValueError(f"fpr_threshold needs real scores and a rate in (0, 1), got {real.size} and {fpr}")
    return float(real[math.floor(fpr * real.size + 1e-9)])


def choose_threshold(rule: ThresholdRule | None, reference: Reference | None) -> Threshold:
    """The threshold --threshold asks for (rule None: `eer` with a reference, else 0.5 uncalibrated).
    ValueError (one line) when `eer` or `fpr=` is asked for without a reference."""
    if rule is None and reference is None:
        return Threshold(DEFAULT_THRESHOLD, "uncalibrated: no reference scores for this checkpoint; "
                                            "make them with evaluate.py --calibrate")
    rule = rule or ThresholdRule("eer")
    if rule.kind == "value":
        return Threshold(float(rule.value), "given by --threshold"
                         + ("" if reference is not None else "; uncalibrated: no reference scores"))
    if reference is None:
        asked = "eer" if rule.kind == "eer" else f"fpr={rule.value:g}"
        raise ValueError(f"--threshold {asked} needs reference scores, and this checkpoint has none: make them "
                         f"once with python evaluate.py --calibrate --checkpoint CHECKPOINT, or give a number")
    if rule.kind == "eer":
        return Threshold(eer_threshold(reference), f"equal error rate on {reference.source}")
    return Threshold(fpr_threshold(reference.real, rule.value),
                     f"{100 * rule.value:g}% false alarms on the {reference.real.size} {reference.source} real videos")


def calibrated(source: str | None, rule: ThresholdRule | None) -> tuple[Threshold, Reference | None]:
    """The threshold and the reference of the checkpoint --checkpoint names (a path or `authors`;
    None, zero-shot CLIP: no reference), said in one line, e.g. `reference: 140 real and 560 fake
    FF++ val videos (stored in runs/x/best.pt); threshold 0.4100 (equal error rate on FF++ val)`."""
    reference = None if source is None else load_reference(checkpoint_file(source), str(source))
    threshold = choose_threshold(rule, reference)
    print(f"{reference.describe() if reference else 'reference: none'}; threshold {threshold.value:.4f} "
          f"({threshold.how})")
    return threshold, reference


# ----------------------------------------------------------------------------- the verdict

def conformal_p_value(score: float, real) -> float:
    """(1 + #{real scores >= score}) / (R + 1): the conformal p-value of `score` against the R
    real reference scores. Assumption: a real video of the reference's distribution (FF++ val
    real) has a score exchangeable with theirs; then P(p <= a) <= a for every a, so a small p
    says the video is unlike the reference's real videos. It says nothing when the video comes
    from elsewhere (another dataset, other compression): that is a change of distribution."""
    real = np.asarray(real, dtype=np.float64)
    return float((1 + np.count_nonzero(real >= score)) / (real.size + 1))


@dataclass(frozen=True)
class Verdict:
    """A score read against a threshold and, when there is one, a reference."""
    p_fake: float
    threshold: Threshold
    reference: Reference | None

    @property
    def fake(self) -> bool:
        return self.p_fake > self.threshold.value

    @property
    def label(self) -> str:
        return "FAKE" if self.fake else "real"

    @property
    def real_below(self) -> float | None:
        """The share of the reference's real videos scoring strictly below p_fake (its rank)."""
        if self.reference is None:
            return None
        return float(np.count_nonzero(self.reference.real < self.p_fake) / self.reference.real.size)

    @property
    def p_value(self) -> float | None:
        return None if self.reference is None else conformal_p_value(self.p_fake, self.reference.real)

    def line(self) -> str:
        """`p_fake 0.7300 -> FAKE: above 97.1% of the 140 FF++ val real videos; threshold 0.4100
        (equal error rate on FF++ val)`; without a reference the rank is left out."""
        rank = ""
        if self.reference is not None:
            rank = (f"above {100 * self.real_below:.1f}% of the {self.reference.real.size} "
                    f"{self.reference.source} real videos; ")
        return f"p_fake {self.p_fake:.4f} -> {self.label}: {rank}threshold {self.threshold.value:.4f} " \
               f"({self.threshold.how})"

    def as_dict(self) -> dict:
        """Everything line() says, as plain types (report.json)."""
        ref = self.reference
        return {"p_fake": self.p_fake, "label": self.label, "threshold": self.threshold.value,
                "threshold_source": self.threshold.how, "real_below": self.real_below, "p_value": self.p_value,
                "reference": None if ref is None else {"source": ref.source, "origin": ref.origin,
                                                       "n_real": int(ref.real.size), "n_fake": int(ref.fake.size)},
                "line": self.line()}

    def csv_columns(self) -> dict:
        """The columns predictions.csv gains at its end: threshold, rank (real_below), p_value;
        empty rank and p_value without a reference."""
        rank, p = self.real_below, self.p_value
        return {"threshold": f"{self.threshold.value:.6f}", "rank": "" if rank is None else f"{rank:.6f}",
                "p_value": "" if p is None else f"{p:.6f}"}


CSV_FIELDS = ("threshold", "rank", "p_value")


def judge(p_fake: float, threshold: Threshold, reference: Reference | None) -> Verdict:
    return Verdict(float(p_fake), threshold, reference)


# ----------------------------------------------------------------------------- the benchmark table

def accuracy_at(labels, scores, threshold: float) -> float:
    """Accuracy when p_fake > threshold is called fake (data.compute_metrics's rule)."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    return float(((scores > threshold) == (labels == 1)).mean())


def tpr_at_fpr(labels, scores, fpr: float) -> float | None:
    """The share of fakes above fpr_threshold(the real scores, fpr): the ROC curve's TPR at that
    false-alarm rate on these labels and scores; None without both classes."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    real, fake = scores[labels == 0], scores[labels == 1]
    if real.size == 0 or fake.size == 0:
        return None
    return float(np.mean(fake > fpr_threshold(real, fpr)))


def table_metrics(labels, scores, threshold: Threshold) -> dict:
    """The benchmark table's new columns of one dataset and level: {"acc_ref": accuracy at the
    reference threshold, "tpr@1%fpr": ..., "tpr@5%fpr": ...} (TABLE_FPRS)."""
    out = {"acc_ref": accuracy_at(labels, scores, threshold.value)}
    out |= {f"tpr@{100 * r:g}%fpr": tpr_at_fpr(labels, scores, r) for r in TABLE_FPRS}
    return out
