"""losses.py against the paper's equations written as double loops (values and gradients, float64)."""
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from losses import alignment, slerp, slerp_augment, uniformity


def unit(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def uniformity_loop(f: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    terms = [torch.exp(-t * (f[i] - f[j]).pow(2).sum()) for i, j in combinations(range(len(f)), 2)]
    return torch.log(sum(terms) / len(terms))


def alignment_loop(f: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    terms = [(f[i] - f[j]).norm() ** alpha for i, j in combinations(range(len(f)), 2) if y[i] == y[j]]
    return sum(terms) / len(terms)


def value_and_grad(loss_fn, f: torch.Tensor) -> tuple[float, torch.Tensor]:
    f = f.clone().requires_grad_(True)
    loss = loss_fn(f)
    return loss.item(), torch.autograd.grad(loss, f)[0].double()


@pytest.mark.parametrize("name, param", [("uniformity", 2.0), ("uniformity", 0.5), ("alignment", 2.0),
                                         ("alignment", 1.0), ("alignment", 3.0)])
def test_losses_equal_double_loops(name, param):
    f, y = unit(10, seed=1), torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1, 1])
    ours = {"uniformity": lambda x: uniformity(x, t=param),
            "alignment": lambda x: alignment(x, y, alpha=param)}[name]
    loop = {"uniformity": uniformity_loop, "alignment": alignment_loop}[name]
    value, grad = value_and_grad(ours, f)
    want, want_grad = value_and_grad(lambda x: loop(x, y, param), f)
    assert value == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_slerp_equals_the_great_circle():
    a, b = unit(64, seed=2), unit(64, seed=3)
    t = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = torch.acos((a * b).sum(1))
    # the point at angle t·θ from a, in the plane of a and b: a cos(tθ) + u sin(tθ), u ⟂ a
    u = F.normalize(b - (a * b).sum(1, keepdim=True) * a, dim=1)
    want = a * torch.cos(t * theta)[:, None] + u * torch.sin(t * theta)[:, None]
    for t, want in ((t, want), (0.0, a), (1.0, b)):
        torch.testing.assert_close(slerp(a, b, t).double(), want, rtol=0, atol=1e-5)


def test_slerp_augment_moves_each_feature_towards_a_same_class_partner():
    f = unit(12, d=8, seed=4)
    y = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 2])  # class 2 has a single sample
    torch.manual_seed(0)
    out = slerp_augment(f, y, torch.Generator().manual_seed(1)).double()
    torch.manual_seed(1)  # the global RNG is never used: the generator alone decides
    assert torch.equal(out, slerp_augment(f, y, torch.Generator().manual_seed(1)).double())
    assert torch.equal(out[11], f[11].float().double())  # alone in its class: unchanged
    for i in range(11):  # out_i lies on the great circle between f_i and one same-class f_j
        residuals = []
        for j in (j for j in range(12) if y[j] == y[i]):
            basis = torch.linalg.qr(torch.stack([f[i], f[j]], dim=1))[0]
            residuals.append(float((out[i] - basis @ (basis.T @ out[i])).norm()))
        assert min(residuals) < 1e-5, i
    assert (out[:11] - f[:11]).norm(dim=1).gt(1e-3).sum() >= 8  # and moved


DEGENERATE = {"identical": ([[1.0, 0], [1, 0], [1, 0]], [0, 0, 1]), "one sample": ([[0.6, 0.8]], [1]),
              "opposite": ([[1.0, 0], [-1, 0]] * 2, [0, 0, 1, 1]),
              "one per class": ([[1.0, 0], [0, 1]], [0, 1])}
LOSSES = {"uniformity": lambda f, y: uniformity(f), "alignment": lambda f, y: alignment(f, y),
          "alignment 0.5": lambda f, y: alignment(f, y, alpha=0.5),
          "slerp_augment": lambda f, y: slerp_augment(f, y, torch.Generator().manual_seed(0)).sum(),
          "slerp": lambda f, y: slerp(f, f.detach().flip(0), 0.3).sum()}


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("loss", LOSSES)
def test_degenerate_batches_give_finite_values_and_gradients(case, loss):
    f, y = (torch.tensor(x) for x in DEGENERATE[case])
    value, grad = value_and_grad(lambda x: LOSSES[loss](x, y), f)
    assert torch.isfinite(torch.tensor(value)) and torch.isfinite(grad).all()
