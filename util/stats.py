"""Uncertainty of an AUROC: the class-stratified bootstrap, DeLong's covariance, the paired test of two
models, and the equal-error crossing. Labels 1 = fake; one AUROC formula: _twice_below's pair count."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_CHUNK = 2_000_000  # resample x sample entries per vectorised block: bounds memory, not speed


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if not np.isin(labels, (0, 1)).all() or labels.shape != scores.shape[-1:]:
        raise ValueError(f"labels must be 0/1, one per score: got {labels.shape} labels for {scores.shape}")
    fake = labels.astype(bool)
    if fake.all() or not fake.any():
        raise ValueError(f"AUROC needs both classes: got {fake.sum()} fake and {(~fake).sum()} real samples")
    return fake, scores


def at_equal_error(fpr: np.ndarray, tpr: np.ndarray, values: np.ndarray) -> float:
    """`values` (one per ROC point, thresholds decreasing) interpolated where FNR - FPR crosses 0:
    values = fpr gives the EER; values = the thresholds, the threshold there."""
    gap = (1.0 - tpr) - fpr                            # FNR - FPR, non-increasing along the curve
    k = int(np.argmax(gap <= 0))                       # first point at or past the crossing
    if k == 0 or gap[k] == 0:
        return float(values[k])
    share = gap[k - 1] / (gap[k - 1] - gap[k])         # how far along the segment it crosses
    return float(values[k - 1] + share * (values[k] - values[k - 1]))


def _twice_below(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Twice the weight of the other class below each `positive` sample, ties counting half, per row
    of weights [B, n]: ([B, m] in score order, their indices), read off one sort's running sums."""
    order = np.argsort(scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[:, order]            # w: [B, n]
    first = np.r_[True, s[1:] != s[:-1]]                                     # [n] opens a tie group
    edges = np.r_[np.flatnonzero(first), s.size]                             # [G+1] group boundaries
    group = np.cumsum(first)[pos] - 1                                        # [m] tie group of each positive
    other = np.zeros((w.shape[0], s.size + 1), w.dtype)                      # int32 weights: exact, and fast
    np.cumsum(w * ~pos, axis=1, out=other[:, 1:])                            # [B, n+1] other weight before j
    return other[:, edges[group]] + other[:, edges[group + 1]], order[pos]   # [B, m], [m]


def resample_units(labels, groups=None, n_boot: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's resamples from `seed`: (unit [n], draws [n_boot, U]). Units are the groups (a
    video's frames are not independent) or the samples; real units are drawn among the real, fake
    among the fake, so each resample keeps both classes' counts."""
    labels = np.asarray(labels)
    unit = np.arange(labels.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    unit_fake, unit_real = np.zeros(unit.max() + 1, bool), np.zeros(unit.max() + 1, bool)
    unit_fake[unit[labels == 1]] = True
    unit_real[unit[labels == 0]] = True
    if (unit_fake & unit_real).any():
        raise ValueError(f"a stratified bootstrap needs each group to hold one class; "
                         f"{(unit_fake & unit_real).sum()} groups hold both")
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(~unit_fake), np.flatnonzero(unit_fake)]  # real units, fake units
    return unit, np.concatenate([s[rng.integers(0, s.size, size=(n_boot, s.size))] for s in strata], axis=1)


def bootstrap_aurocs(labels, scores, groups=None, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The AUROC of every resample, from each sample's weight (times its unit is drawn): scores [n] ->
    [n_boot]; scores [k, n] (k models on the same samples) -> [k, n_boot] on the same resamples."""
    fake, scores = _check(labels, scores)
    unit, draws = resample_units(fake, groups, n_boot, seed)
    n_units, rows = draws.shape[1], max(1, _CHUNK // fake.size)
    blocks = []
    for b in range(0, n_boot, rows):
        block = draws[b:b + rows]                                                  # [R, U]
        offsets = block + n_units * np.arange(len(block))[:, None]
        counts = np.bincount(offsets.ravel(), minlength=block.size).reshape(block.shape)
        w = counts.astype(np.int32)[:, unit]                                       # [R, n] sample weights
        real_w = (w * ~fake).sum(1, dtype=np.float64)                              # [R]
        out = np.empty((len(np.atleast_2d(scores)), len(block)))
        for i, s in enumerate(np.atleast_2d(scores)):
            twice, index = _twice_below(s, fake, w)                                # [R, m]
            fakes = w[:, index]                                                    # [R, m]
            pairs = np.einsum("bm,bm->b", fakes, twice, dtype=np.float64, casting="unsafe") / 2
            out[i] = pairs / (fakes.sum(1, dtype=np.float64) * real_w)
        blocks.append(out)                                                         # [k, R]
    aurocs = np.concatenate(blocks, axis=1)                                        # [k, n_boot]
    return aurocs if scores.ndim == 2 else aurocs[0]


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_auroc_ci(labels, scores, groups=None, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC; with `groups` whole groups are resampled."""
    return _percentile_ci(bootstrap_aurocs(labels, scores, groups, n_boot, seed), level)


def delong_covariance(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's estimate for scores [k, n]: (aurocs [k], covariance [k, k]) from v10 (share of reals
    below each fake) and v01 (of fakes above each real): cov(v10) / n_fake + cov(v01) / n_real."""
    fake, scores = _check(labels, scores)
    scores, ones = np.atleast_2d(scores), np.ones((1, fake.size), np.int64)
    m, n = fake.sum(), (~fake).sum()
    v10, v01 = np.empty((len(scores), m)), np.empty((len(scores), n))
    for i, s in enumerate(scores):
        for part, positive, others in ((v10, fake, n), (v01, ~fake, m)):
            twice, index = _twice_below(s, positive, ones)
            below = np.empty(fake.size)
            below[index] = twice[0] / (2 * others)                             # [n_all], at the positives
            part[i] = below[positive]
    v01 = 1 - v01                                                              # fakes above each real
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n     # [k, k]
    return v10.mean(1), cov


def paired_comparison(labels, scores_a, scores_b, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Two models on the same videos: AUROCs, diff, DeLong's ci and p, paired bootstrap_ci."""
    aurocs, cov = delong_covariance(labels, np.stack([scores_a, scores_b]))
    diff, variance = float(aurocs[0] - aurocs[1]), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if variance > 1e-15:
        p = math.erfc(abs(diff) / math.sqrt(2 * variance))   # 2 x the normal tail beyond |z|
    else:  # no spread of the difference: equal models (diff 0) or a sure one
        p = 1.0 if abs(diff) < 1e-12 else 0.0
    half = NormalDist().inv_cdf((1 + level) / 2) * math.sqrt(max(variance, 0.0))
    boot = bootstrap_aurocs(labels, np.stack([scores_a, scores_b]), n_boot=n_boot, seed=seed)
    return {"auroc_a": float(aurocs[0]), "auroc_b": float(aurocs[1]), "diff": diff,
            "ci": (diff - half, diff + half), "p": p,
            "bootstrap_ci": _percentile_ci(boot[0] - boot[1], level)}
