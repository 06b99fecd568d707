"""losses.py against direct double-loop computations of the paper's equations."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import alignment, slerp, slerp_augment, uniformity


def unit(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def uniformity_loop(f: torch.Tensor, t: float = 2.0) -> float:
    terms = []
    for i in range(len(f)):
        for j in range(i + 1, len(f)):
            terms.append(math.exp(-t * float(((f[i] - f[j]) ** 2).sum())))
    return math.log(sum(terms) / len(terms))


def alignment_loop(f: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    terms = []
    for i in range(len(f)):
        for j in range(i + 1, len(f)):
            if y[i] == y[j]:
                terms.append(float(torch.linalg.norm(f[i] - f[j])) ** alpha)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_double_loop(t):
    f = unit(9)
    assert uniformity(f, t=t).item() == pytest.approx(uniformity_loop(f, t), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0])
def test_alignment_matches_double_loop(alpha):
    f = unit(10, seed=1)
    y = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1, 1])
    assert alignment(f, y, alpha=alpha).item() == pytest.approx(alignment_loop(f, y, alpha), rel=1e-5)


def test_alignment_ignores_cross_class_pairs():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert alignment(f, torch.tensor([0, 0, 1])).item() == 0.0  # only same-label pair is identical
    assert alignment(f, torch.tensor([0, 1, 0])).item() == pytest.approx(2.0)  # ||(1,-1)||^2


def grads_finite(loss: torch.Tensor, x: torch.Tensor) -> bool:
    (g,) = torch.autograd.grad(loss, x, allow_unused=True)
    return bool(torch.isfinite(loss)) and (g is None or bool(torch.isfinite(g).all()))


@pytest.mark.parametrize("alpha", [2.0, 1.0, 0.5])
def test_degenerate_batches_are_finite(alpha):
    e = torch.eye(4)[0]
    cases = {
        "identical": (torch.stack([e, e, e]), torch.tensor([0, 0, 1])),
        "opposite": (torch.stack([e, -e, e, -e]), torch.tensor([0, 0, 1, 1])),
        "one per class": (unit(2).float(), torch.tensor([0, 1])),
        "one class": (unit(5).float(), torch.ones(5, dtype=torch.long)),
        "single sample": (unit(1).float(), torch.tensor([1])),
    }
    for name, (f, y) in cases.items():
        f = f.clone().requires_grad_(True)
        assert grads_finite(uniformity(f), f), name
        assert grads_finite(alignment(f, y, alpha=alpha), f), name
        assert grads_finite(slerp_augment(f, y, torch.Generator().manual_seed(0)).sum(), f), name
        b = f.detach().flip(0).clone().requires_grad_(True)
        assert grads_finite(slerp(f, b, torch.full((len(f),), 0.3)).sum(), f), name


def test_slerp_unit_norm_and_endpoints():
    a, b = unit(64, seed=2).float(), unit(64, seed=3).float()
    t = torch.rand(64, generator=torch.Generator().manual_seed(0))
    out = slerp(a, b, t)
    assert torch.allclose(out.norm(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    # the angle to a grows linearly with t (constant speed along the great circle)
    theta = torch.acos((a * b).sum(1))
    assert torch.allclose(torch.acos((a * out).sum(1).clamp(-1, 1)), t * theta, atol=1e-3)


def test_slerp_augment_stays_within_class():
    f = unit(12, d=8, seed=4).float()
    y = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 2])  # class 2 has a single sample
    out = slerp_augment(f, y, torch.Generator().manual_seed(1))
    assert out.shape == f.shape
    assert torch.allclose(out.norm(dim=1), torch.ones(12), atol=1e-5)
    assert torch.equal(out[11], f[11])  # alone in its class: unchanged
    for i in range(12):
        # out_i lies on the great circle between f_i and one same-class f_j: in their span
        candidates = [j for j in range(12) if y[j] == y[i]]
        residuals = []
        for j in candidates:
            basis = torch.linalg.qr(torch.stack([f[i], f[j]], dim=1).double())[0]
            r = out[i].double() - basis @ (basis.T @ out[i].double())
            residuals.append(float(r.norm()))
        assert min(residuals) < 1e-4, i
    assert not torch.allclose(out[:11], f[:11])  # it did move something


def test_slerp_augment_draws_its_numbers_from_the_generator_in_the_documented_order():
    # one permutation per class in ascending label order, then t for all samples, all from the given
    # CPU generator (never torch's global one), so the draws cannot depend on the device
    f, y = unit(10).float(), torch.tensor([0, 1] * 5)
    torch.manual_seed(0)
    a = slerp_augment(f, y, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = slerp_augment(f, y, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    partner = torch.arange(10)
    for c in (0, 1):
        idx = torch.nonzero(y == c).flatten()
        partner[idx] = idx[torch.randperm(len(idx), generator=g)]
    t = torch.rand(10, generator=g).double()
    f64 = f.double()
    for i in range(10):  # the slerp formula written out, in float64
        p = int(partner[i])
        if p == i:
            assert torch.allclose(a[i].double(), f64[i], atol=1e-5)
            continue
        theta = torch.acos((f64[i] * f64[p]).sum())
        want = (torch.sin((1 - t[i]) * theta) * f64[i] + torch.sin(t[i] * theta) * f64[p]) / torch.sin(theta)
        assert torch.allclose(a[i].double(), want, atol=1e-5), i
