"""The paper's feature-space losses and latent augmentation, on the L2-normalised features f [N, D]:

    uniformity(f)        log 1/P sum_{i<j} exp(-t ||f_i - f_j||^2),     P = N(N-1)/2, t = 2
    alignment(f, y)      1/|S| sum_{(i,j) in S} ||f_i - f_j||^alpha,    S = {i < j: y_i = y_j}, alpha = 2
    slerp(a, b, t)       sin((1-t)θ)/sinθ · a + sin(tθ)/sinθ · b,        θ the angle between a and b
    slerp_augment(f, y)  f_i <- slerp(f_i, f_π(i), t_i),                 π a random permutation within
                                                                         each class, t_i ~ U(0, 1)

The first two are Wang & Isola's (2020). All run in fp32 whatever the autocast dtype: 1 - 1e-7 and
small squared distances do not survive bf16. A batch without a pair gives 0, still in the graph.
"""
import math

import torch
import torch.nn.functional as F


def _squared_distances(f: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    # From the difference itself, not |a|^2 + |b|^2 - 2ab, which cancels for near-identical features.
    return (f[i] - f[j]).pow(2).sum(dim=1)                                      # [P]


def uniformity(features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    f = features.float()                                                        # [N, D]
    if len(f) < 2:
        return f.sum() * 0.0
    sq = _squared_distances(f, *torch.triu_indices(len(f), len(f), 1, device=f.device))  # [P]
    return torch.logsumexp(-t * sq, dim=0) - math.log(len(sq))                 # no underflow of exp


def alignment(features: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Pooled over all same-label pairs of the batch (real pairs and fake pairs together)."""
    f, labels = features.float(), labels.to(features.device)                    # [N, D], [N]
    i, j = torch.triu_indices(len(f), len(f), 1, device=f.device)               # [P], [P]
    same = labels[i] == labels[j]
    if not same.any():
        return f.sum() * 0.0
    sq = _squared_distances(f, i[same], j[same])                                # [S]
    # ||.||^alpha = (||.||^2)^(alpha/2); identical pairs get value 0 and gradient 0 instead of the
    # infinite slope of the root at 0 (the double where keeps NaN out of the backward pass too).
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).pow(alpha / 2), 0.0).mean()


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """a, b [N, D]; t [N] or a float in [0, 1] (0 gives a, 1 gives b). cos θ = a·b of the normalised
    rows: for the paper's unit features the same; for raw ones (the --no-norm ablation) our choice.
    The clamp keeps sinθ >= ~5e-4: finite values and gradients for identical and opposite rows."""
    a, b = a.float(), b.float()
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    t = t[:, None] if t.ndim == 1 else t                                        # [N, 1]
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1, keepdim=True)  # [N, 1]
    theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))                          # [N, 1]
    sin = torch.sin(theta)
    return torch.sin((1 - t) * theta) / sin * a + torch.sin(t * theta) / sin * b  # [N, D]


def slerp_augment(features: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Training only. A sample alone in its class keeps its feature. The random numbers (one
    permutation per class in ascending label order, then t for all N) are drawn on the CPU from
    `generator` (default: torch's global one), so they do not depend on the device."""
    n, labels = len(features), labels.detach().cpu()
    partner, alone = torch.arange(n), torch.ones(n, dtype=torch.bool)          # [N], [N]
    for c in torch.unique(labels).tolist():                                     # sorted
        idx = torch.nonzero(labels == c).flatten()                              # [n_c]
        if len(idx) > 1:
            partner[idx] = idx[torch.randperm(len(idx), generator=generator)]
            alone[idx] = False
    t = torch.rand(n, generator=generator)                                      # [N]
    device = features.device
    mixed = slerp(features, features[partner.to(device)], t.to(device))         # [N, D]
    return torch.where(alone.to(device)[:, None], features.float(), mixed)
