"""Uncertainty of an AUROC: rank AUROC, bootstrap and DeLong intervals, and a paired comparison.

Labels are 1 = fake (positive), 0 = real; a higher score means more likely fake. Numbers are
plain floats in [0, 1] (not %)."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

_CHUNK = 2_000_000  # resample x sample entries per vectorised block: bounds memory, not speed


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if not np.isin(labels, (0, 1)).all() or labels.shape != scores.shape[-1:]:
        raise ValueError(f"labels must be 0/1, one per score: got {labels.shape} labels for {scores.shape} scores")
    fake = labels.astype(bool)
    if fake.all() or not fake.any():
        raise ValueError(f"AUROC needs both classes: got {fake.sum()} fake and {(~fake).sum()} real samples")
    return fake, scores


def at_equal_error(fpr: np.ndarray, tpr: np.ndarray, values: np.ndarray) -> float:
    """`values` (one per point of a ROC curve, thresholds decreasing) at the equal error rate, where
    FNR = FPR. Along the curve FNR - FPR falls from 1 to -1; the crossing lies on the segment from
    the last point with FNR > FPR to the first with FNR <= FPR, and `values` is interpolated
    linearly along it. values = fpr gives the EER itself; values = the thresholds, the threshold there."""
    gap = (1.0 - tpr) - fpr                            # FNR - FPR, non-increasing along the curve
    k = int(np.argmax(gap <= 0))                       # first point at or past the crossing
    if k == 0 or gap[k] == 0:
        return float(values[k])
    share = gap[k - 1] / (gap[k - 1] - gap[k])         # how far along the segment it crosses
    return float(values[k - 1] + share * (values[k] - values[k - 1]))


def auroc(labels, scores) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic: the chance that a random fake scores
    above a random real, ties counting 1/2 (mid-ranks). Equals sklearn's roc_auc_score. ValueError
    when only one class is present."""
    fake, scores = _check(labels, scores)
    m, n = fake.sum(), (~fake).sum()
    return float((rankdata(scores)[fake].sum() - m * (m + 1) / 2) / (m * n))


def resample_units(labels, groups=None, n_boot: int = 2000, seed: int = 0,
                   stratified: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's resamples, drawn once from `seed` (numpy's default_rng): (unit, draws).

    The units resampled are the groups (e.g. the video of each frame: frames of one video are not
    independent, so whole videos are drawn), or the samples themselves when groups is None.
    unit [n] numbers each sample's unit 0..U-1 (np.unique order of groups); draws [n_boot, U] are
    the units of each resample, with replacement. Resample b is every sample of unit draws[b, 0],
    then of draws[b, 1], ... Stratified (the default): fake units are drawn among the fake ones
    and real among the real, so every resample keeps each class's number of units and both
    classes; this needs each group to be of one class (a video is). Unstratified: U draws among
    all units."""
    labels = np.asarray(labels)
    if groups is None:
        unit = np.arange(labels.size)
    else:
        _, unit = np.unique(np.asarray(groups), return_inverse=True)
    n_units = unit.max(initial=-1) + 1
    rng = np.random.default_rng(seed)
    if not stratified:
        return unit, rng.integers(0, n_units, size=(n_boot, n_units))
    unit_fake, unit_real = np.zeros(n_units, bool), np.zeros(n_units, bool)
    unit_fake[unit[labels == 1]] = True
    unit_real[unit[labels == 0]] = True
    if (unit_fake & unit_real).any():
        raise ValueError("a stratified bootstrap needs each group to hold one class; "
                         f"{(unit_fake & unit_real).sum()} groups hold both (use stratified=False)")
    strata = [np.flatnonzero(~unit_fake), np.flatnonzero(unit_fake)]  # real units, fake units
    return unit, np.concatenate([s[rng.integers(0, s.size, size=(n_boot, s.size))] for s in strata], axis=1)


def _weighted_aurocs(fake: np.ndarray, scores: np.ndarray, counts: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """AUROC of scores [k, n] in each resample given as counts [B, U] (times each unit is drawn; a
    sample weighs its unit's count): [k, B], NaN where a resample lacks a class. Sorted once per
    model; each fake counts the real weight below its tie group plus half of that within it,
    read off the running sum of real weight at the group's two edges."""
    out = np.empty((scores.shape[0], counts.shape[0]))
    for i, s in enumerate(scores):
        order = np.argsort(s, kind="stable")
        s, f, w = s[order], fake[order], counts[:, unit[order]]               # w: [B, n] int32, sorted
        first = np.r_[True, s[1:] != s[:-1]]                                   # [n] opens a tie group
        edges = np.r_[np.flatnonzero(first), s.size]                           # [G+1] group boundaries
        group = np.cumsum(first)[f] - 1                                        # [m] tie group of each fake
        reals = np.zeros((w.shape[0], s.size + 1), w.dtype)                    # int32: exact, and fast
        np.cumsum(w * ~f, axis=1, out=reals[:, 1:])                            # [B, n+1] real weight before j
        twice_below = reals[:, edges[group]] + reals[:, edges[group + 1]]      # [B, m] 2 x (below + ties / 2)
        fakes = w[:, f]                                                        # [B, m]
        pairs = np.einsum("bm,bm->b", fakes, twice_below, dtype=np.float64, casting="unsafe") / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = pairs / (fakes.sum(1, dtype=np.float64) * reals[:, -1])
    return out


def bootstrap_aurocs(labels, scores, groups=None, n_boot: int = 2000, seed: int = 0,
                     stratified: bool = True) -> np.ndarray:
    """The AUROC of every resample of resample_units(labels, groups, n_boot, seed, stratified),
    computed all at once from weights (no loop over resamples). scores [n] -> [n_kept];
    scores [k, n] (k models on the same samples) -> [k, n_kept], every model on the same
    resamples (a paired bootstrap). Unstratified resamples with one class only have no AUROC
    and are dropped (n_kept < n_boot); stratified ones never lack a class."""
    fake, scores = _check(labels, scores)
    unit, draws = resample_units(fake, groups, n_boot, seed, stratified)
    n_units, rows = draws.shape[1], max(1, _CHUNK // fake.size)
    blocks = []
    for b in range(0, n_boot, rows):
        block = draws[b:b + rows]                                              # [R, U]
        offsets = block + n_units * np.arange(len(block))[:, None]
        counts = np.bincount(offsets.ravel(), minlength=block.size).reshape(block.shape)  # [R, U]
        counts = counts.astype(np.int32)
        blocks.append(_weighted_aurocs(fake, np.atleast_2d(scores), counts, unit))        # [k, R]
    aurocs = np.concatenate(blocks, axis=1)                                    # [k, n_boot]
    aurocs = aurocs[:, ~np.isnan(aurocs).any(0)]
    return aurocs if scores.ndim == 2 else aurocs[0]


def bootstrap_auroc_ci(labels, scores, groups=None, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95, stratified: bool = True) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC: the (1-level)/2 and (1+level)/2 quantiles
    (numpy's linear interpolation) of bootstrap_aurocs. Stratified by class by default; with
    `groups` (the video of each frame) whole groups are resampled (a cluster bootstrap), as
    frame-level intervals need. The same arguments give the same interval."""
    aurocs = bootstrap_aurocs(labels, scores, groups, n_boot, seed, stratified)
    if aurocs.size == 0:
        raise ValueError("no bootstrap resample holds both classes")
    return _percentile_ci(aurocs, level)


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def delong_covariance(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's estimate for k models scored on the same samples, scores [k, n] (or [n]):
    (aurocs [k], covariance [k, k]). From the structural components in O(n log n) by mid-ranks:
    v10 = share of reals below each fake, v01 = share of fakes above each real (ties 1/2);
    cov = cov(v10) / n_fake + cov(v01) / n_real. Assumes independent samples (one per video)."""
    fake, scores = _check(labels, scores)
    scores = np.atleast_2d(scores)
    m, n = fake.sum(), (~fake).sum()
    ranks = rankdata(scores, axis=1)                                           # [k, n_all]
    v10 = (ranks[:, fake] - rankdata(scores[:, fake], axis=1)) / n             # [k, m]
    v01 = 1 - (ranks[:, ~fake] - rankdata(scores[:, ~fake], axis=1)) / m       # [k, n]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n      # [k, k]
    return v10.mean(1), cov


def delong_variance(labels, scores) -> float:
    """DeLong's variance of one model's AUROC (delong_covariance with k = 1)."""
    return float(delong_covariance(labels, scores)[1][0, 0])


def _normal_ci(value: float, variance: float, level: float) -> tuple[float, float]:
    half = norm.ppf((1 + level) / 2) * np.sqrt(max(variance, 0.0))
    return float(value - half), float(value + half)


def delong_auroc_ci(labels, scores, level: float = 0.95) -> tuple[float, float]:
    """AUROC +- z * sqrt(DeLong's variance), z the normal quantile of `level`, clipped to [0, 1]."""
    lo, hi = _normal_ci(auroc(labels, scores), delong_variance(labels, scores), level)
    return max(lo, 0.0), min(hi, 1.0)


def paired_comparison(labels, scores_a, scores_b, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Two models scored on the same samples (one score per video): is A's AUROC above B's?

    Method, to quote: "The difference of AUROCs was tested with DeLong's paired test, which
    estimates the covariance of the two AUROCs from the same videos; its 95% CI is the difference
    +- 1.96 standard errors. A paired percentile bootstrap (2,000 class-stratified resamples of
    the videos, both models on each) gives a second CI." Returns auroc_a, auroc_b, diff (= a - b),
    ci (DeLong, at `level`), p (two-sided DeLong p-value; 1 when the two models order every
    sample alike) and bootstrap_ci (n_boot resamples from `seed`)."""
    aurocs, cov = delong_covariance(labels, np.stack([scores_a, scores_b]))
    diff, variance = float(aurocs[0] - aurocs[1]), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if variance > 1e-15:
        p = float(2 * norm.sf(abs(diff) / np.sqrt(variance)))
    else:  # no spread of the difference: equal models (diff 0) or a sure one
        p = 1.0 if abs(diff) < 1e-12 else 0.0
    boot = bootstrap_aurocs(labels, np.stack([scores_a, scores_b]), n_boot=n_boot, seed=seed)
    return {"auroc_a": float(aurocs[0]), "auroc_b": float(aurocs[1]), "diff": diff,
            "ci": _normal_ci(diff, variance, level), "p": p,
            "bootstrap_ci": _percentile_ci(boot[0] - boot[1], level)}
