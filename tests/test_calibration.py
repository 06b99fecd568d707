"""util/calibration.py: reference scores, thresholds (eer, fpr=, a number) and when a reference is
too small for them, the conformal rank, the verdict, the file beside a checkpoint and its checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

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
    save_checkpoint(path, clip_vit.DeepfakeDetector(clip_vit.tiny_visual()), {"clip": "tiny", "norm": True})
    return path


@pytest.mark.parametrize("labels, scores", [([0, 1], [0.1]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, 1.5]),
                                            ([0, 1], [0.1, float("nan")]), ([0, 0], [0.1, 0.2])])
def test_build_reference_refuses_what_is_not_one(labels, scores):
    with pytest.raises(ValueError):
        C.build_reference(labels, scores)


# ----------------------------------------------------------------------------- thresholds

def test_eer_threshold_by_hand():
    # ROC points (thresholds decreasing): p_fake > .5 gives FNR - FPR = 1/6, > .4 gives -1/6: half way
    ref = reference([0.2, 0.6], [0.4, 0.5, 0.9])
    assert C.eer_threshold(ref) == pytest.approx(0.45)
    # separable: between the classes
    assert 0.3 <= C.eer_threshold(reference([0.1, 0.2, 0.3], [0.7, 0.8])) < 0.7
    # a tie across classes: half way from "> .7" (FNR .5, FPR 0) to "> .1" (FNR 0, FPR .5)
    assert C.eer_threshold(reference([0.1, 0.7], [0.7, 0.8])) == pytest.approx(0.4)


def test_eer_threshold_realises_the_equal_error_rate():
    """On scores with no ties, the rates at the threshold are the EER's to within one video."""
    rng = np.random.default_rng(0)
    real, fake = rng.beta(2, 5, 140), rng.beta(5, 2, 560)
    t = C.eer_threshold(reference(real, fake))
    labels = np.r_[np.zeros(real.size), np.ones(fake.size)]
    eer = data.compute_metrics(labels, np.r_[real, fake])["eer"]
    for rate in (np.mean(real > t), np.mean(fake <= t)):  # FPR and FNR at it
        assert abs(rate - eer) <= 1 / real.size + 1e-9


def test_fpr_threshold_allows_at_most_that_share_of_false_alarms():
    real = np.arange(100) / 100  # 0.00 .. 0.99
    assert (C.fpr_threshold(real, 0.01), C.fpr_threshold(real, 0.05)) == pytest.approx((0.98, 0.94))
    rng = np.random.default_rng(1)
    for rate in (0.01, 0.05, 0.2):
        scores = rng.random(140)
        t = C.fpr_threshold(scores, rate)
        next_lower = scores[scores < t].max()  # it allows more
        assert np.mean(scores > t) <= rate < np.mean(scores > next_lower)


@pytest.mark.parametrize("text, rule", [("0", ("value", 0.0)), ("1", ("value", 1.0)), ("0.3", ("value", 0.3)),
                                        ("EER", ("eer", None)), ("fpr=.05", ("fpr", 0.05))])
def test_threshold_flag_reads(text, rule):
    assert C.threshold_flag(text) == C.ThresholdRule(*rule)


def test_choose_threshold_and_what_a_reference_can_carry():
    real = np.linspace(0.0, 0.5, 200)
    big, small = reference(real, [0.6, 0.7]), reference([0.1, 0.2], [0.6, 0.7])
    assert C.choose_threshold(None, None).value == 0.5
    assert C.choose_threshold(None, big) == C.choose_threshold(C.ThresholdRule("eer"), big)
    assert C.choose_threshold(C.threshold_flag("fpr=0.05"), big).value == C.fpr_threshold(real, 0.05)
    for asked, ref in (("eer", None), ("fpr=0.05", None), ("fpr=0.01", big), ("fpr=0.5", small)):
        with pytest.raises(ValueError) as e:  # fpr=R needs 10 false alarms: 10 / R real videos
            C.choose_threshold(C.threshold_flag(asked), ref)
        assert "\n" not in str(e.value) and "--threshold" in str(e.value)
    with pytest.raises(ValueError) as e:  # says how many real videos it needs
        C.choose_threshold(C.threshold_flag("fpr=0.01"), big)
    assert "1000" in str(e.value)
    # a number below every real score: the threshold says it calls them all fake; above all of them, none
    assert "100.0%" in C.choose_threshold(C.threshold_flag("0.0"), small).how
    assert " 0.0%" in C.choose_threshold(C.threshold_flag("0.9"), small).how


# ----------------------------------------------------------------------------- rank and verdict

def test_conformal_p_value_by_hand_and_valid():
    def p_value(score, real):
        return C.judge(score, C.Threshold(0.5, "x"), reference(real, [1.0])).p_value

    real = [0.1, 0.2, 0.3, 0.4]
    assert [p_value(s, real) for s in (0.35, 0.9, 0.3, 0.0)] == pytest.approx([2 / 5, 1 / 5, 3 / 5, 1])
    rng = np.random.default_rng(2)  # P(p <= a) <= a when the score comes from the reference's distribution
    p = np.array([p_value(rng.random(), rng.random(19)) for _ in range(4000)])
    assert all(np.mean(p <= a) <= a + 0.02 for a in (0.05, 0.1, 0.25))


def test_verdict_rank_columns_and_a_small_reference():
    real = np.r_[np.linspace(0.0, 0.7, 136), np.linspace(0.8, 0.9, 4)]  # 136 of 140 below 0.73
    v = C.judge(0.73, C.Threshold(0.41, "eer"), reference(real, [0.9, 0.95]))
    assert v.fake and v.real_below == pytest.approx(136 / 140) and v.p_value == pytest.approx(5 / 141)
    assert "97.1%" in v.line() and "0.4100" in v.line() and "small" not in v.line()
    d = v.as_dict()
    assert d["line"] == v.line() and d["reference"]["small"] is False and json.loads(json.dumps(d)) == d
    assert v.csv_columns() == {"threshold": "0.410000", "rank": f"{136 / 140:.6f}",
                               "p_value": f"{5 / 141:.6f}", "verdict": "fake"}
    assert list(v.csv_columns()) == list(C.CSV_FIELDS)
    two = C.judge(0.15, C.Threshold(0.5, "x"), reference([0.1, 0.2], [0.9]))
    assert two.csv_columns()["verdict"] == "real" and two.as_dict()["reference"]["small"] is True
    assert "small" in two.line()
    none = C.judge(0.5, C.choose_threshold(None, None), None)  # a tie goes to real
    assert none.csv_columns() == {"threshold": "0.500000", "rank": "", "p_value": "", "verdict": "real"}


# ----------------------------------------------------------------------------- beside a checkpoint

def test_reference_beside_the_checkpoint_round_trips_and_wins(checkpoint):
    assert C.load_reference(checkpoint) is None  # uncalibrated
    path = C.calibrate(reference([0.1, 0.2, 0.3], [0.6, 0.8]), checkpoint)
    loaded = C.load_reference(checkpoint)
    assert loaded.real.tolist() == [0.1, 0.2, 0.3] and loaded.fake.tolist() == [0.6, 0.8]
    moved = checkpoint.rename(checkpoint.with_name("copy.pt"))  # the same bytes under another name
    path.rename(C.reference_path(moved))
    assert C.load_reference(moved).real.tolist() == [0.1, 0.2, 0.3]
    stored = moved.with_name("stored.pt")  # train.py's best.pt carries its scores; a file beside it wins
    save_checkpoint(stored, clip_vit.DeepfakeDetector(clip_vit.tiny_visual()), {"clip": "tiny"},
                    **{C.KEY: C.reference_entry(reference([0.1, 0.2], [0.7, 0.9]))})
    assert C.load_reference(stored).fake.tolist() == [0.7, 0.9]
    C.calibrate(reference([0.3], [0.8], "FF++ c40 val"), stored)
    assert C.load_reference(stored).source == "FF++ c40 val"
    other = moved.with_name("model.ckpt")  # any file not ours, without a file beside it: uncalibrated
    other.write_bytes(b"not a torch file")
    assert C.load_reference(other) is None


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2], lambda text: text.replace("0.9", "1.7"),
    lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "fake"}),
    lambda text: json.dumps({**json.loads(text), "real": ["a"]}),
    lambda text: json.dumps({**json.loads(text), "format": "other/1"}), lambda text: "[1, 2]", "\xff\xfe",
    "another checkpoint"])
def test_damaged_or_foreign_reference_is_one_line_naming_it(checkpoint, damage):
    path = C.calibrate(reference([0.1, 0.2], [0.9]), checkpoint)
    if damage == "another checkpoint":  # training went on: another model
        save_checkpoint(checkpoint, clip_vit.DeepfakeDetector(clip_vit.tiny_visual(seed=1)), {"clip": "tiny"})
    elif isinstance(damage, str):
        path.write_bytes(damage.encode("latin-1"))
    else:
        path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError) as e:
        C.load_reference(checkpoint)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path))


def test_damaged_reference_in_the_checkpoint_names_it(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, clip_vit.DeepfakeDetector(clip_vit.tiny_visual()), {"clip": "tiny"},
                    **{C.KEY: {"format": C.FORMAT, "source": "FF++ val", "real": [0.1], "fake": [2.0]}})
    with pytest.raises(ValueError) as e:
        C.load_reference(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
