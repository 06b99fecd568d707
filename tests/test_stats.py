"""util/stats.py against independent computations: a Python loop over the same resamples with
scikit-learn's AUROC, DeLong's components by a double loop over pairs, DeLong's variance against
the bootstrap's."""
from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from util import stats


def scored(n: int, shift: float = 0.8, seed: int = 0, decimals: int | None = None):
    """Labels (about half fake) and scores, fakes higher by `shift` sd; rounded to get ties."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(labels * shift, 1.0)
    return labels, (np.round(scores, decimals) if decimals is not None else scores)


def loop_interval(labels, scores, unit, draws, level=0.95):
    """The percentile interval the slow way: each resample built as a list of samples."""
    members = [np.flatnonzero(unit == u) for u in range(unit.max() + 1)]
    resamples = [np.concatenate([members[u] for u in row]) for row in draws]
    aucs = [roc_auc_score(labels[i], scores[i]) for i in resamples if len(set(labels[i])) == 2]
    return tuple(np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])), len(aucs)


@pytest.mark.parametrize("groups", [False, True])
def test_bootstrap_equals_a_loop_over_the_same_resamples(groups):
    rng = np.random.default_rng(1)  # 30 videos of 1-8 frames; a frame's score is its video's plus a little
    sizes = rng.integers(1, 9, 30) if groups else np.ones(30, int)
    video_labels = np.array([0, 1] * 15)
    labels, names = np.repeat(video_labels, sizes), np.repeat([f"v{i:02d}" for i in range(30)], sizes)
    video_scores = np.repeat(rng.normal(video_labels * 0.7, 1.0), sizes)
    scores = np.round(video_scores + rng.normal(0, 0.1, labels.size), 1)
    groups = names if groups else None
    unit, draws = stats.resample_units(labels, groups, n_boot=300, seed=3)
    assert draws.shape == (300, 30) and (unit == np.repeat(np.arange(30), sizes)).all()
    assert (video_labels[draws].sum(1) == 15).all()  # stratified: 15 real and 15 fake videos every time
    expected, kept = loop_interval(labels, scores, unit, draws)
    ci = stats.bootstrap_auroc_ci(labels, scores, groups, n_boot=300, seed=3)
    assert kept == 300 and ci == pytest.approx(expected, abs=1e-12)
    assert ci != stats.bootstrap_auroc_ci(labels, scores, groups, n_boot=300, seed=4)
    if groups is not None:  # resampling videos is wider than resampling frames as if independent
        lo, hi = stats.bootstrap_auroc_ci(labels, scores, n_boot=300, seed=3)
        assert ci[1] - ci[0] > hi - lo


@pytest.mark.parametrize("labels, groups", [([0, 1, 0, 1], ["a", "a", "b", "c"]), ([1, 1], None)])
def test_mixed_groups_and_one_class_are_refused(labels, groups):
    with pytest.raises(ValueError):
        stats.bootstrap_auroc_ci(labels, [0.1, 0.2, 0.3, 0.4][:len(labels)], groups)


def test_bootstrap_of_5000_videos_takes_under_a_second():
    labels, scores = scored(5000)
    stats.bootstrap_auroc_ci(labels[:100], scores[:100], n_boot=10)  # first-call costs
    seconds = []  # CPU time of this process, best of 3: the machine may be shared
    for _ in range(3):
        start = time.process_time()
        lo, hi = stats.bootstrap_auroc_ci(labels, scores, n_boot=2000)
        seconds.append(time.process_time() - start)
    assert min(seconds) < 1.0 and lo < roc_auc_score(labels, scores) < hi


def test_delong_components_by_a_double_loop_and_near_the_bootstrap():
    labels, scores = scored(120, decimals=1)
    fake, real = scores[labels == 1], scores[labels == 0]
    pair = (fake[:, None] > real[None, :]) + 0.5 * (fake[:, None] == real[None, :])  # [m, n]
    v10, v01 = pair.mean(1), pair.mean(0)
    cov = np.cov(v10) / fake.size + np.cov(v01) / real.size
    aurocs, got = stats.delong_covariance(labels, np.stack([scores, -scores]))
    assert aurocs == pytest.approx([pair.mean(), 1 - pair.mean()], abs=1e-12)
    assert aurocs[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got == pytest.approx(np.array([[cov, -cov], [-cov, cov]]), abs=1e-12)
    labels, scores = scored(800, decimals=2)
    boot = stats.bootstrap_aurocs(labels, scores, n_boot=2000, seed=0)
    assert stats.delong_covariance(labels, scores)[1][0, 0] == pytest.approx(boot.var(), rel=0.15)


def test_a_model_against_itself_and_against_a_worse_one():
    labels, good = scored(500, shift=1.5)
    same = stats.paired_comparison(labels, good, np.exp(good))  # the same ranking in other numbers
    assert same["diff"] == 0 and same["p"] == 1.0 and same["bootstrap_ci"] == (0.0, 0.0)
    worse = good + np.random.default_rng(9).normal(0, 1.5, good.size)
    out = stats.paired_comparison(labels, good, worse)
    assert out["auroc_a"] == pytest.approx(roc_auc_score(labels, good))
    assert out["auroc_b"] == pytest.approx(roc_auc_score(labels, worse))
    assert out["p"] < 0.05 and out["ci"][0] > 0 and out["bootstrap_ci"][0] > 0
    flipped = stats.paired_comparison(labels, worse, good)
    assert flipped["p"] == pytest.approx(out["p"]) and flipped["diff"] == pytest.approx(-out["diff"])


def test_paired_test_uses_the_pairing():
    # two noisy copies of one strong signal: close, strongly correlated AUROCs. An unpaired test
    # (variances added, no covariance) sees no difference; the paired one does.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    signal = rng.normal(labels * 1.2, 1.0)
    a, b = signal + rng.normal(0, 0.2, 2000), signal + rng.normal(0, 0.45, 2000)
    out = stats.paired_comparison(labels, a, b)
    _, cov = stats.delong_covariance(labels, np.stack([a, b]))
    assert out["p"] < 0.01 and abs(out["diff"] / np.sqrt(cov[0, 0] + cov[1, 1])) < 1.96
