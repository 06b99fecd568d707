"""util/precision.py: --precision's rules, the CPU check and its probe (run once), and bf16 against
fp32 on ViT-L/14's shape where this CPU has native bf16."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clip_vit as cv
from util import precision as P

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def fresh_check():
    """cpu_bf16 decides afresh in this test, and its faked answer is not cached for the tests after it."""
    P.cpu_bf16.cache_clear()
    yield
    P.cpu_bf16.cache_clear()


# (--precision, device, the CPU's bf16 instructions, bf16 probe seconds (fp32: 0.05), chosen, probed)
CASES = [
    ("auto", CUDA, {}, None, "bf16", False), ("fp32", CUDA, {}, None, "fp32", False),
    ("fp32", CPU, {"amx_bf16": True}, None, "fp32", False), ("bf16", CPU, {}, None, "bf16", False),
    ("auto", CPU, {}, None, "fp32", False),  # AVX2 only: bf16 is emulated, several times slower
    ("auto", CPU, {"amx_bf16": True, "avx512_bf16": True}, None, "bf16", False),  # AMX decides alone
    ("auto", CPU, {"avx512_bf16": True}, 0.02, "bf16", True),
    ("auto", CPU, {"avx512_bf16": True}, 0.04, "bf16", True),
    ("auto", CPU, {"avx512_bf16": True}, 0.045, "fp32", True),  # 1.11x: not enough
]


@pytest.mark.parametrize("flag, device, flags, bf16_seconds, chosen, probed", CASES)
def test_precision_follows_the_flag_the_device_and_the_cpu_with_one_probe(
        flag, device, flags, bf16_seconds, chosen, probed, monkeypatch, fresh_check):
    capabilities = {"architecture": "x86_64", "avx2": True, **flags}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    calls = []
    monkeypatch.setattr(P, "matmul_seconds", lambda dtype: calls.append(dtype) or
                        (0.05 if dtype == torch.float32 else bf16_seconds))
    for _ in range(2):
        assert P.resolve_precision(flag, device)[0] == chosen
    assert calls == ([torch.float32, torch.bfloat16] if probed else [])  # once per process, if at all


def test_the_probe_leaves_the_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    assert 0 < P.matmul_seconds(torch.float32, size=64, repeats=2) < 5
    assert torch.equal(torch.rand(1), expected)


def features_and_p_fake(detector: cv.DeepfakeDetector, images: torch.Tensor, precision: str):
    with torch.inference_mode(), P.autocast(CPU, precision):
        features = detector.features(images)                               # [N, 1024], unit norm
        logits = detector.head(features)                                   # [N, 2], bf16 under bf16
    return features.float(), logits.float().softmax(-1)[:, 1]              # [N, 1024], [N]


def test_bf16_forward_of_vit_l14_width_matches_fp32_on_this_cpu():
    native, why = P.cpu_bf16()
    if not native:
        pytest.skip(f"needs a CPU with native bf16: {why}")
    torch.manual_seed(0)
    # ViT-L/14's width, a third of its depth (the whole tower takes most of a minute on 2 cores)
    detector = cv.DeepfakeDetector(cv.tiny_visual(width=1024, layers=8, heads=16)).eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))       # [2, 3, 224, 224]
    fp32, p32 = features_and_p_fake(detector, images, "fp32")
    bf16, p16 = features_and_p_fake(detector, images, "bf16")
    # the bounds of test_cuda.py's test_bf16_forward_of_vit_l14_matches_fp32, which says why
    # (measured here: cosine 0.9999, p_fake within 2e-4)
    assert F.cosine_similarity(fp32, bf16, dim=-1).min().item() > 0.99
    assert (p32 - p16).abs().max().item() < 0.02, (p32, p16)
