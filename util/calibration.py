"""Reference scores: the video scores of a held-out split (FF++ val) a verdict is read against, stored
in a checkpoint or in a file beside it. They give the threshold, the score's rank among the real
videos (a conformal p-value) and the verdict: fake when p_fake > threshold (a tie goes to real).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from util.checkpoint import read_if_ours
from util.download import AUTHORS_URL, download, sha256_of
from util.files import write_json
from util.stats import at_equal_error

FORMAT = "clip-deepfake-reference/1"
KEY = "reference"          # the entry of a checkpoint dict that carries its reference (train.py's best.pt)
SUFFIX = ".reference.json"  # the file beside a checkpoint: best.pt -> best.pt.reference.json
DEFAULT_THRESHOLD = 0.5    # the argmax of the two logits: uncalibrated
TABLE_FPRS = (0.01, 0.05)  # the false-alarm rates of the benchmark table's TPR columns
MIN_ALARMS = 10            # fpr=R needs R x (real videos) >= 10: the rate then has a relative error <= ~30%
SMALL = 100                # fewer real reference videos: a rank moves by more than 1% with one video


# ----------------------------------------------------------------------------- the reference

@dataclass(frozen=True)
class Reference:
    real: np.ndarray   # [R] float64, the real videos' scores, sorted ascending
    fake: np.ndarray   # [F] float64, the fake videos' scores, sorted ascending
    source: str        # what the videos are, for sentences: "FF++ val"
    origin: str = ""   # where it was read from: "stored in runs/x/best.pt", or the file beside it

    @property
    def small(self) -> bool:
        return self.real.size < SMALL

    def describe(self) -> str:
        where = f" ({self.origin})" if self.origin else ""
        small = f"; small (under {SMALL} real videos): rank and threshold are rough" if self.small else ""
        counts = f"{self.real.size} real and {self.fake.size} fake"
        return f"reference: {counts} {self.source} videos{where}{small}"


def build_reference(labels, scores, source: str = "FF++ val", origin: str = "") -> Reference:
    """The reference of video labels (0 real, 1 fake) and p_fake; ValueError unless both classes."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), one per score: {labels.size} for "
                         f"{scores.size}")
    if not (np.isfinite(scores) & (scores >= 0) & (scores <= 1)).all():
        raise ValueError("scores must be p_fake in [0, 1]")
    real, fake = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    if real.size == 0 or fake.size == 0:
        raise ValueError(f"a reference needs real and fake videos: got {real.size} real, {fake.size} "
                         "fake")
    return Reference(real, fake, source, origin)


def reference_entry(reference: Reference) -> dict:
    """The reference as plain types: a checkpoint's KEY entry loads with weights_only=True."""
    return {"format": FORMAT, "source": reference.source, "real": reference.real.tolist(),
            "fake": reference.fake.tolist()}


def from_entry(entry, origin: str) -> Reference:
    """reference_entry's dict back as a Reference; ValueError when it is not one."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT \
            or not isinstance(entry.get("source"), str):
        raise ValueError(f"not a reference of format {FORMAT!r}")
    real, fake = entry.get("real"), entry.get("fake")
    if not all(isinstance(v, list) and all(isinstance(x, (int, float)) for x in v) for v in (real, fake)):
        raise ValueError("its scores are missing or not numbers")
    return build_reference([0] * len(real) + [1] * len(fake), real + fake, entry["source"], origin)


# ----------------------------------------------------------------------------- beside a checkpoint

def reference_path(checkpoint: str | os.PathLike) -> Path:
    return Path(checkpoint).with_name(Path(checkpoint).name + SUFFIX)


def calibrate(reference: Reference, source: str | os.PathLike) -> Path:
    """evaluate.py --calibrate: the reference beside the checkpoint file, with the SHA-256 of its bytes:
    it serves any kind of checkpoint, survives a copy or a rename, and fails once that is rewritten."""
    file = download(AUTHORS_URL) if str(source) == "authors" else Path(source)  # the cached download
    path = reference_path(file)
    write_json(path, {**reference_entry(reference), "checkpoint": file.name,
                      "checkpoint_sha256": sha256_of(file)})
    print(f"{reference.describe()}: written to {path}")
    return path


def load_reference(checkpoint: str | os.PathLike, name: str | None = None) -> Reference | None:
    """A checkpoint's reference: the file beside it (it wins), else its KEY entry, else None."""
    fix = f"python evaluate.py --calibrate --checkpoint {name or checkpoint}"
    path = reference_path(checkpoint)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            reference = from_entry(stored, str(path))
        except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path} is a damaged reference file ({str(e)[:160]}); delete it and make it "
                             f"again: {fix}") from None
        if stored.get("checkpoint_sha256") != sha256_of(checkpoint):
            raise ValueError(f"{path} was made for another checkpoint ({stored.get('checkpoint')!r}), not "
                             f"for {checkpoint} as it is now; delete it and make it again: {fix}")
        return reference
    ckpt = read_if_ours(checkpoint)
    try:
        if ckpt is None or KEY not in ckpt:
            return None
        return from_entry(ckpt[KEY], f"stored in {checkpoint}")
    except ValueError as e:
        raise ValueError(f"{checkpoint} holds a damaged reference ({e}); make one beside it: {fix}") from None


# ----------------------------------------------------------------------------- thresholds

@dataclass(frozen=True)
class ThresholdRule:
    """What --threshold asks for: kind "value" (a number in [0, 1]), "eer", or "fpr" (value = the rate)."""
    kind: str
    value: float | None = None


THRESHOLD_HELP = ("a number in [0, 1], 'eer' (equal error rate on the reference) or 'fpr=R' (R false "
                  "alarms on the reference's real videos, R in (0, 1), e.g. fpr=0.01)")


def threshold_flag(text: str) -> ThresholdRule:
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
    """The threshold at the reference's equal error rate. roc_curve's point k calls fake the scores >=
    its threshold, i.e. p_fake > the next lower one."""
    labels = np.r_[np.zeros(reference.real.size), np.ones(reference.fake.size)]
    fpr, tpr, at_least = roc_curve(labels, np.r_[reference.real, reference.fake], drop_intermediate=False)
    return at_equal_error(fpr, tpr, np.r_[at_least[1:], 0.0])


def fpr_threshold(real, fpr: float) -> float:
    """The lowest threshold with at most a share `fpr` of the real scores above it: the
    (floor(fpr * R) + 1)-th largest; ties make the share smaller, never larger."""
    real = np.sort(np.asarray(real, dtype=np.float64).reshape(-1))[::-1]  # descending
    return float(real[math.floor(fpr * real.size + 1e-9)])


def choose_threshold(rule: ThresholdRule | None, reference: Reference | None) -> Threshold:
    """The threshold --threshold asks for (None: `eer` with a reference, else 0.5 uncalibrated)."""
    if rule is None and reference is None:
        return Threshold(DEFAULT_THRESHOLD, "uncalibrated: no reference scores for this checkpoint; "
                                            "make them with evaluate.py --calibrate")
    rule = rule or ThresholdRule("eer")
    if rule.kind == "value":
        if reference is None:
            return Threshold(float(rule.value), "given by --threshold; uncalibrated: no reference scores")
        above = np.count_nonzero(reference.real > rule.value) / reference.real.size
        return Threshold(float(rule.value), f"given by --threshold; it calls {100 * above:.1f}% of the "
                                            f"{reference.real.size} {reference.source} real videos fake")
    asked = "eer" if rule.kind == "eer" else f"fpr={rule.value:g}"
    if reference is None:
        raise ValueError(f"--threshold {asked} needs reference scores, and this checkpoint has none: make "
                         f"them once with python evaluate.py --calibrate --checkpoint CHECKPOINT, or give a "
                         "number")
    if rule.kind == "eer":
        return Threshold(eer_threshold(reference), f"equal error rate on {reference.source}")
    n, need = reference.real.size, math.ceil(MIN_ALARMS / rule.value - 1e-9)  # MIN_ALARMS false alarms
    if n < need:
        lowest = f"fpr={math.ceil(100 * MIN_ALARMS / n) / 100:g} or more, " if n > MIN_ALARMS else ""
        raise ValueError(f"--threshold {asked} needs at least {need} real reference videos ({MIN_ALARMS} "
                         f"false alarms among them); the {reference.source} reference has {n}: use "
                         f"{lowest}eer or a number, or calibrate on more real videos")
    return Threshold(fpr_threshold(reference.real, rule.value),
                     f"{100 * rule.value:g}% false alarms on the {n} {reference.source} real videos")


def calibrated(source: str | None, rule: ThresholdRule | None) -> tuple[Threshold, Reference | None]:
    """The threshold and reference of the checkpoint --checkpoint names (None for zero-shot), said."""
    reference = None
    if source is not None:  # authors: the cached download
        reference = load_reference(download(AUTHORS_URL) if source == "authors" else Path(source), source)
    threshold = choose_threshold(rule, reference)
    print(f"{reference.describe() if reference else 'reference: none'}; threshold {threshold.value:.4f} "
          f"({threshold.how})")
    return threshold, reference


# ----------------------------------------------------------------------------- the verdict

@dataclass(frozen=True)
class Verdict:
    p_fake: float
    threshold: Threshold
    reference: Reference | None
    real_below: float | None = None  # the share of the reference's real videos below p_fake: its rank
    p_value: float | None = None     # conformal: (1 + #{real >= p_fake}) / (R + 1)

    @property
    def fake(self) -> bool:
        return self.p_fake > self.threshold.value

    @property
    def label(self) -> str:
        return "FAKE" if self.fake else "real"

    def line(self) -> str:
        """`p_fake 0.7300 -> FAKE: above 97.1% of the 140 FF++ val real videos; threshold 0.4100 (...)`"""
        rank, ref = "", self.reference
        if ref is not None:
            small = f" (a small reference: under {SMALL})" if ref.small else ""
            rank = f"above {100 * self.real_below:.1f}% of the {ref.real.size} {ref.source} real videos"
            rank += f"{small}; "
        return f"p_fake {self.p_fake:.4f} -> {self.label}: {rank}threshold {self.threshold.value:.4f} " \
               f"({self.threshold.how})"

    def as_dict(self) -> dict:
        ref = self.reference
        return {"p_fake": self.p_fake, "label": self.label, "threshold": self.threshold.value,
                "threshold_source": self.threshold.how, "real_below": self.real_below,
                "p_value": self.p_value,
                "reference": ref and {"source": ref.source, "origin": ref.origin, "small": ref.small,
                                      "n_real": int(ref.real.size), "n_fake": int(ref.fake.size)},
                "line": self.line()}

    def csv_columns(self) -> dict:
        rank, p = ("" if x is None else f"{x:.6f}" for x in (self.real_below, self.p_value))
        return {"threshold": f"{self.threshold.value:.6f}", "rank": rank, "p_value": p,
                "verdict": "fake" if self.fake else "real"}


CSV_FIELDS = ("threshold", "rank", "p_value", "verdict")


def judge(p_fake: float, threshold: Threshold, reference: Reference | None) -> Verdict:
    """The p-value is valid (P(p <= a) <= a) when the video's score is exchangeable with the
    reference's real ones; it says nothing about videos from elsewhere."""
    if reference is None:
        return Verdict(float(p_fake), threshold, None)
    real = reference.real
    below = float(np.count_nonzero(real < p_fake) / real.size)
    p_value = float((1 + np.count_nonzero(real >= p_fake)) / (real.size + 1))
    return Verdict(float(p_fake), threshold, reference, below, p_value)


def tpr_at_fpr(labels, scores, fpr: float) -> float | None:
    """The benchmark table's TPR at a false-alarm rate; None without both classes."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    real, fake = scores[labels == 0], scores[labels == 1]
    if real.size == 0 or fake.size == 0:
        return None
    return float(np.mean(fake > fpr_threshold(real, fpr)))
