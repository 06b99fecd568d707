"""Feature-space losses and the latent augmentation of the paper.

All functions take the L2-normalised detector features f [N, D] (one row per image) and work in
float32 whatever the autocast dtype is, because 1 - 1e-7 and small squared distances do not
survive bfloat16.

    uniformity(f)            log mean_{i<j} exp(-t ||f_i - f_j||^2)              (Wang & Isola 2020)
    alignment(f, y)          mean_{i<j, y_i = y_j} ||f_i - f_j||^alpha           (label-aware)
    slerp(a, b, t)           sin((1-t)θ)/sinθ · a + sin(tθ)/sinθ · b
    slerp_augment(f, y)      every feature -> slerp towards a random same-class partner
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair_indices(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of every pair i < j of n items, each [n(n-1)/2]."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def _squared_distances(features: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    # ||f_i - f_j||^2 from the difference itself (not |a|^2 + |b|^2 - 2ab, which cancels
    # catastrophically for near-identical features); its gradient 2(f_i - f_j) is finite everywhere.
    diff = features[i] - features[j]  # [P, D]
    return diff.pow(2).sum(dim=1)  # [P]


def uniformity(features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Uniformity loss of Wang & Isola (2020), over all pairs of the batch:

        L_uniform = log( 1/P · sum_{i<j} exp(-t · ||f_i - f_j||_2^2) ),   P = N(N-1)/2,  t = 2

    Computed as logsumexp(-t d) - log P (no underflow of exp for far-apart features).
    features: [N, D]. Returns a scalar; 0 (still attached to the graph) when N < 2.
    """
    f = features.float()
    n = f.shape[0]
    if n < 2:
        return f.sum() * 0.0  # no pair: nothing to spread out
    i, j = _pair_indices(n, f.device)
    sq = _squared_distances(f, i, j)  # [P]
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def alignment(features: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Label-aware alignment loss of Wang & Isola (2020):

        L_align = 1/|S| · sum_{(i,j) in S} ||f_i - f_j||_2^alpha,   S = {(i, j): i < j, y_i = y_j},  alpha = 2

    The mean is over all same-label pairs of the batch pooled together (real pairs and fake pairs).
    features: [N, D], labels: [N]. Returns a scalar; 0 (still attached to the graph) when no two
    samples share a label.
    """
    f = features.float()
    n = f.shape[0]
    i, j = _pair_indices(n, f.device)
    same = labels.to(f.device)[i] == labels.to(f.device)[j]  # [P]
    i, j = i[same], j[same]
    if i.numel() == 0:
        return f.sum() * 0.0
    sq = _squared_distances(f, i, j)  # [S] = ||f_i - f_j||^2
    if alpha == 2.0:
        dist_alpha = sq  # no sqrt: d/dx sqrt(x) is infinite at x = 0 (identical features)
    else:
        # ||.||^alpha = (||.||^2)^(alpha/2); identical pairs get value 0 and gradient 0 instead of
        # inf/NaN (the double where keeps the NaN out of the backward pass too).
        nonzero = sq > 0
        safe = torch.where(nonzero, sq, torch.ones_like(sq))
        dist_alpha = torch.where(nonzero, safe.pow(alpha / 2), torch.zeros_like(sq))
    return dist_alpha.mean()


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """Spherical linear interpolation between rows of a and b:

        slerp(a, b, t) = sin((1-t)θ)/sinθ · a + sin(tθ)/sinθ · b,   θ = acos(clamp(a·b, -1+1e-7, 1-1e-7))

    a, b: [N, D] unit vectors; t: [N] or a float in [0, 1]. Returns [N, D] float32 unit vectors
    (t = 0 gives a, t = 1 gives b). θ is the angle between a and b: for the unit features of the
    paper cos θ = a·b; for non-unit inputs (--no-norm ablation) we take the cosine of the angle
    (**ours**, the paper only uses unit features). The clamp keeps sinθ >= ~5e-4, so values and
    gradients stay finite for identical and for opposite vectors (where slerp is undefined: the
    result is then cos(πt)·a, finite but not unit).
    """
    a, b = a.float(), b.float()
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.ndim == 1:
        t = t[:, None]  # [N, 1]
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1, keepdim=True)  # [N, 1]
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))  # [N, 1]
    sin = torch.sin(theta)
    return torch.sin((1 - t) * theta) / sin * a + torch.sin(t * theta) / sin * b


def slerp_augment(
    features: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Latent slerp augmentation (training only):

        f_i <- slerp(f_i, f_π(i), t_i),   π a random permutation within the class of i,  t_i ~ U(0, 1)

    Every class with >= 2 samples in the batch is permuted; a sample alone in its class keeps its
    feature unchanged. Labels are unchanged. The random numbers (one permutation per class in
    ascending label order, then t for all N samples) are drawn on the CPU from `generator`
    (default: torch's global CPU generator), so they do not depend on the device.
    features: [N, D], labels: [N]. Returns [N, D] float32.
    """
    n = features.shape[0]
    labels_cpu = labels.detach().cpu()
    partner = torch.arange(n)  # [N]
    augmented = torch.zeros(n, dtype=torch.bool)  # [N]
    for c in torch.unique(labels_cpu).tolist():  # sorted
        idx = torch.nonzero(labels_cpu == c).flatten()  # [n_c]
        if idx.numel() < 2:
            continue
        partner[idx] = idx[torch.randperm(idx.numel(), generator=generator)]
        augmented[idx] = True
    t = torch.rand(n, generator=generator)  # [N]
    device = features.device
    mixed = slerp(features, features[partner.to(device)], t.to(device))  # [N, D]
    return torch.where(augmented.to(device)[:, None], mixed, features.float())
