"""util/calibration.py: reference scores, thresholds (eer, fpr=, a number), the conformal rank,
the verdict sentence, the file beside a checkpoint and its checks, the benchmark table's columns."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

import clip_vit
import data
from util import calibration as C
from util.checkpoint import save_checkpoint


def reference(real, fake, source="FF++ val") -> C.Reference:
    return C.build_reference([0] * len(real) + [1] * len(fake), list(real) + list(fake), source)


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of this project (tiny detector) without a reference."""
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, clip_vit.DeepfakeDetector(clip_vit.tiny_visual()), {"clip": "tiny", "normalize": True})
    return path


# ----------------------------------------------------------------------------- building

def test_build_reference_sorts_each_class():
    ref = C.build_reference([1, 0, 0, 1], [0.9, 0.3, 0.1, 0.6], "FF++ val")
    assert ref.real.tolist() == [0.1, 0.3] and ref.fake.tolist() == [0.6, 0.9]
    assert ref.describe() == "reference: 2 real and 2 fake FF++ val videos"


@pytest.mark.parametrize("labels, scores, says", [
    ([0, 1], [0.1], "differ in length"),
    ([0, 2], [0.1, 0.2], "must be 0 (real) or 1 (fake)"),
    ([0, 1], [0.1, 1.5], "scores must be p_fake in [0, 1]"),
    ([0, 1], [0.1, float("nan")], "scores must be p_fake in [0, 1]"),
    ([0, 0], [0.1, 0.2], "needs real and fake videos: got 2 real, 0 fake"),
])
def test_build_reference_refuses(labels, scores, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        C.build_reference(labels, scores)


# ----------------------------------------------------------------------------- thresholds

def test_eer_threshold_interpolates_as_the_rate_does():
    # ROC points (thresholds decreasing): p_fake > .5 gives FNR - FPR = 1/6, > .4 gives -1/6: half way
    ref = reference([0.2, 0.6], [0.4, 0.5, 0.9])
    assert C.eer_threshold(ref) == pytest.approx(0.45)
    labels = np.r_[np.zeros(2), np.ones(3)]
    fpr, tpr, _ = roc_curve(labels, np.r_[ref.real, ref.fake], drop_intermediate=False)
    assert data.equal_error_rate(fpr, tpr) == pytest.approx(0.5)  # the rate, half way too


def test_eer_threshold_realises_the_equal_error_rate():
    """On scores with no ties, the rates at the threshold are the EER's to within one video."""
    rng = np.random.default_rng(0)
    real, fake = rng.beta(2, 5, 140), rng.beta(5, 2, 560)
    ref = reference(real, fake)
    t = C.eer_threshold(ref)
    labels = np.r_[np.zeros(real.size), np.ones(fake.size)]
    fpr, tpr, _ = roc_curve(labels, np.r_[real, fake], drop_intermediate=False)
    eer = data.equal_error_rate(fpr, tpr)
    assert abs(np.mean(real > t) - eer) <= 1 / real.size + 1e-9
    assert abs(np.mean(fake <= t) - eer) <= 1 / real.size + 1e-9


def test_eer_threshold_of_separable_scores_lies_between_the_classes():
    t = C.eer_threshold(reference([0.1, 0.2, 0.3], [0.7, 0.8]))
    assert 0.3 <= t < 0.7  # every video called right: an EER of 0
    # a tie across classes: half way from "> .7" (FNR .5, FPR 0) to "> .1" (FNR 0, FPR .5)
    assert C.eer_threshold(reference([0.1, 0.7], [0.7, 0.8])) == pytest.approx(0.4)


def test_fpr_threshold_allows_at_most_that_share_of_false_alarms():
    real = np.arange(100) / 100  # 0.00 .. 0.99
    assert C.fpr_threshold(real, 0.01) == pytest.approx(0.98)  # only 0.99 above it
    assert C.fpr_threshold(real, 0.05) == pytest.approx(0.94)
    assert C.fpr_threshold(real, 0.001) == pytest.approx(0.99)  # fewer than one video: none above
    rng = np.random.default_rng(1)
    for rate in (0.01, 0.05, 0.2):
        scores = rng.random(140)
        t = C.fpr_threshold(scores, rate)
        assert np.mean(scores > t) <= rate
        below = scores[scores < t].max()                   # the next lower threshold allows more
        assert np.mean(scores > below) > rate


@pytest.mark.parametrize("text, rule", [
    ("0", C.ThresholdRule("value", 0.0)), ("1", C.ThresholdRule("value", 1.0)),
    ("0.3", C.ThresholdRule("value", 0.3)), ("eer", C.ThresholdRule("eer")), ("EER", C.ThresholdRule("eer")),
    ("fpr=0.01", C.ThresholdRule("fpr", 0.01)), ("fpr=.5", C.ThresholdRule("fpr", 0.5)),
])
def test_threshold_flag_reads(text, rule):
    assert C.threshold_flag(text) == rule


@pytest.mark.parametrize("text", ["1.5", "-0.1", "nan", "inf", "fpr=0", "fpr=1", "fpr=abc", "fpr=", "abc", "",
                                  "eer=0.1"])
def test_threshold_flag_refuses_with_one_line(text, capsys):
    parser = argparse.ArgumentParser(prog="evaluate.py")
    parser.add_argument("--threshold", type=C.threshold_flag)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--threshold", text])
    assert e.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"evaluate.py: error: argument --threshold: {text.lower()!r} is not {C.THRESHOLD_HELP}"


def test_choose_threshold():
    ref = reference([0.1, 0.2, 0.3, 0.4], [0.6, 0.7])
    default = C.choose_threshold(None, None)
    assert default.value == 0.5 and default.how.startswith("uncalibrated: no reference scores")
    assert C.choose_threshold(None, ref) == C.choose_threshold(C.ThresholdRule("eer"), ref)
    assert C.choose_threshold(None, ref).how == "equal error rate on FF++ val"
    fpr = C.choose_threshold(C.threshold_flag("fpr=0.25"), ref)
    assert fpr == C.Threshold(0.3, "25% false alarms on the 4 FF++ val real videos")
    assert C.choose_threshold(C.threshold_flag("0.3"), ref) == C.Threshold(0.3, "given by --threshold")
    assert "uncalibrated" in C.choose_threshold(C.threshold_flag("0.3"), None).how
    for asked in ("eer", "fpr=0.01"):
        with pytest.raises(ValueError, match=f"--threshold {asked} needs reference scores") as e:
            C.choose_threshold(C.threshold_flag(asked), None)
        assert "\n" not in str(e.value) and "--calibrate" in str(e.value)


# ----------------------------------------------------------------------------- rank and verdict

def test_conformal_p_value():
    real = [0.1, 0.2, 0.3, 0.4]
    assert C.conformal_p_value(0.35, real) == pytest.approx(2 / 5)  # (1 + one real >= it) / 5
    assert C.conformal_p_value(0.9, real) == pytest.approx(1 / 5)   # never 0
    assert C.conformal_p_value(0.3, real) == pytest.approx(3 / 5)   # a tie counts against it
    assert C.conformal_p_value(0.0, real) == 1.0


def test_conformal_p_value_is_valid_when_the_video_is_like_the_reference():
    """P(p <= a) <= a when the score comes from the reference's own distribution."""
    rng = np.random.default_rng(2)
    p = np.array([C.conformal_p_value(rng.random(), rng.random(19)) for _ in range(4000)])
    for a in (0.05, 0.1, 0.25):
        assert np.mean(p <= a) <= a + 0.02  # 2% of slack for 4000 draws


def test_verdict_line_states_rank_and_threshold():
    real = np.r_[np.linspace(0.0, 0.7, 136), np.linspace(0.8, 0.9, 4)]  # 136 of 140 below 0.73
    ref = reference(real, [0.9, 0.95])
    v = C.judge(0.73, C.Threshold(0.41, "equal error rate on FF++ val"), ref)
    assert v.line() == ("p_fake 0.7300 -> FAKE: above 97.1% of the 140 FF++ val real videos; "
                        "threshold 0.4100 (equal error rate on FF++ val)")
    assert v.fake and v.real_below == pytest.approx(136 / 140) and v.p_value == pytest.approx(5 / 141)
    d = v.as_dict()
    assert d["line"] == v.line() and d["reference"] == {"source": "FF++ val", "origin": "", "n_real": 140,
                                                        "n_fake": 2}
    assert json.loads(json.dumps(d)) == d  # plain types
    assert v.csv_columns() == {"threshold": "0.410000", "rank": f"{136 / 140:.6f}", "p_value": f"{5 / 141:.6f}"}
    assert list(v.csv_columns()) == list(C.CSV_FIELDS)


def test_verdict_without_reference_says_uncalibrated():
    v = C.judge(0.9731, C.choose_threshold(None, None), None)
    assert v.line() == ("p_fake 0.9731 -> FAKE: threshold 0.5000 (uncalibrated: no reference scores for this "
                        "checkpoint; make them with evaluate.py --calibrate)")
    assert v.csv_columns() == {"threshold": "0.500000", "rank": "", "p_value": ""}
    assert C.judge(0.5, C.Threshold(0.5, "x"), None).label == "real"  # a tie goes to real


# ----------------------------------------------------------------------------- beside a checkpoint

def test_reference_beside_the_checkpoint_round_trips(checkpoint):
    assert C.load_reference(checkpoint) is None  # uncalibrated
    ref = reference([0.1, 0.2, 0.3], [0.6, 0.8])
    path = C.save_reference(ref, checkpoint)
    assert path == checkpoint.parent / "best.pt.reference.json"
    loaded = C.load_reference(checkpoint)
    assert loaded.real.tolist() == ref.real.tolist() and loaded.fake.tolist() == ref.fake.tolist()
    assert loaded.source == "FF++ val" and loaded.origin == str(path)
    moved = checkpoint.rename(checkpoint.with_name("copy.pt"))  # the same bytes under another name
    path.rename(C.reference_path(moved))
    assert C.load_reference(moved).real.tolist() == ref.real.tolist()


def test_reference_of_another_checkpoint_is_refused(checkpoint):
    C.save_reference(reference([0.1], [0.9]), checkpoint)
    save_checkpoint(checkpoint, clip_vit.DeepfakeDetector(clip_vit.tiny_visual(seed=1)),
                    {"clip": "tiny", "normalize": True})  # training went on: another model
    with pytest.raises(ValueError) as e:
        C.load_reference(checkpoint, name="runs/x/best.pt")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{C.reference_path(checkpoint)} was made for another checkpoint ('best.pt', SHA-256 ")
    assert message.endswith("delete it and make it again: python evaluate.py --calibrate --checkpoint runs/x/best.pt")


@pytest.mark.parametrize("damage, says", [
    (lambda text: text[: len(text) // 2], "Unterminated string|Expecting"),
    (lambda text: text.replace("0.9", "0.7"), "its scores do not match their SHA-256"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "fake"}), "its fake scores are missing"),
    (lambda text: json.dumps({**json.loads(text), "real": ["a"]}), "its real scores are missing or not numbers"),
    (lambda text: json.dumps({**json.loads(text), "format": "other/1"}), "not a reference of format"),
    (lambda text: "[1, 2]", "not a reference of format"),
])
def test_damaged_reference_file_is_refused_with_one_line(checkpoint, damage, says):
    path = C.save_reference(reference([0.1, 0.2], [0.9]), checkpoint)
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=says) as e:
        C.load_reference(checkpoint)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path} is a damaged reference file (")
    assert message.endswith(f"delete it and make it again: python evaluate.py --calibrate --checkpoint {checkpoint}")


def test_reference_undecodable_bytes_are_damage(checkpoint):
    path = C.save_reference(reference([0.1], [0.9]), checkpoint)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="is a damaged reference file"):
        C.load_reference(checkpoint)


def test_reference_stored_in_the_checkpoint(tmp_path):
    """train.py's best.pt carries its FF++ val scores (KEY); a file beside it, made later, wins."""
    ref = reference([0.1, 0.2], [0.7, 0.9])
    path = tmp_path / "best.pt"
    detector = clip_vit.DeepfakeDetector(clip_vit.tiny_visual())
    save_checkpoint(path, detector, {"clip": "tiny", "normalize": True}, **{C.KEY: C.reference_entry(ref)})
    stored = C.load_reference(path)
    assert stored.fake.tolist() == [0.7, 0.9] and stored.origin == f"stored in {path}"
    assert torch.load(path, weights_only=True)[C.KEY]["format"] == C.FORMAT  # plain types
    C.save_reference(reference([0.3], [0.8], "FF++ val (c40)"), path)
    assert C.load_reference(path).source == "FF++ val (c40)"


def test_damaged_reference_in_the_checkpoint_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, clip_vit.DeepfakeDetector(clip_vit.tiny_visual()), {"clip": "tiny", "normalize": True},
                    **{C.KEY: {"format": C.FORMAT, "source": "FF++ val", "real": [0.1], "fake": [2.0]}})
    with pytest.raises(ValueError, match=r"best.pt holds a damaged reference \(scores must be p_fake in \[0, 1\]"):
        C.load_reference(path)


def test_other_files_have_no_reference(tmp_path):
    """The authors' model.ckpt (or any file not ours) without a file beside it: uncalibrated."""
    other = tmp_path / "model.ckpt"
    other.write_bytes(b"not a torch file")
    assert C.load_reference(other) is None
    C.save_reference(reference([0.1], [0.9]), other)
    assert C.load_reference(other).real.tolist() == [0.1]


# ----------------------------------------------------------------------------- the benchmark table

def test_table_metrics():
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    m = C.table_metrics(labels, scores, C.Threshold(0.5, "x"))
    assert m == {"acc_ref": pytest.approx(6 / 8), "tpr@1%fpr": pytest.approx(3 / 4), "tpr@5%fpr": pytest.approx(3 / 4)}
    assert C.accuracy_at(labels, scores, 0.6) == pytest.approx(7 / 8)  # 0.6 itself is real
    assert C.tpr_at_fpr(labels, scores, 0.25) == 1.0  # one false alarm allowed (0.6): above 0.3
    assert C.tpr_at_fpr([1, 1], [0.2, 0.9], 0.01) is None
