"""util/precision.py: --precision's rules, the CPU check and its probe (run once), autocast, and bf16
against fp32 on ViT-L/14's shape where this CPU has native bf16."""
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


def never(*args):
    raise AssertionError("called")


def answer(native: bool, why: str = "why"):
    return lambda: (native, why)


def test_auto_follows_the_cpu_and_cuda_is_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16", answer(False, "no bf16 here"))
    assert P.resolve_precision("auto", CPU) == ("fp32", "auto: no bf16 here")
    monkeypatch.setattr(P, "cpu_bf16", answer(True, "this CPU has AMX-BF16"))
    assert P.resolve_precision("auto", CPU) == ("bf16", "auto: this CPU has AMX-BF16")
    monkeypatch.setattr(P, "cpu_bf16", never)  # a GPU run never looks at the CPU
    assert P.resolve_precision("auto", CUDA) == ("bf16", "auto: CUDA")


def test_an_explicit_flag_is_taken_as_asked(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16", never)
    assert P.resolve_precision("fp32", CPU) == ("fp32", "asked for")
    assert P.resolve_precision("fp32", CUDA) == ("fp32", "asked for")
    assert P.resolve_precision("bf16", CUDA) == ("bf16", "asked for")
    monkeypatch.setattr(P, "cpu_bf16", answer(True))
    assert P.resolve_precision("bf16", CPU) == ("bf16", "asked for")
    monkeypatch.setattr(P, "cpu_bf16", answer(False, "this CPU has no native bf16 matrix instructions"))
    assert P.resolve_precision("bf16", CPU) == (
        "bf16", "asked for, but slow: this CPU has no native bf16 matrix instructions")


def capabilities(monkeypatch, **flags):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"architecture": "x86_64", "avx2": True, **flags})


def test_without_bf16_instructions_fp32_and_no_probe(monkeypatch, fresh_check):
    capabilities(monkeypatch)  # an AVX2-only CPU, where bf16 is emulated and several times slower
    monkeypatch.setattr(P, "matmul_seconds", never)
    assert P.cpu_bf16() == (False, "this CPU has no native bf16 matrix instructions")
    assert P.resolve_precision("auto", CPU)[0] == "fp32"


def test_amx_decides_without_a_probe(monkeypatch, fresh_check):
    capabilities(monkeypatch, amx_bf16=True, avx512_bf16=True)
    monkeypatch.setattr(P, "matmul_seconds", never)
    assert P.cpu_bf16() == (True, "this CPU has AMX-BF16")


@pytest.mark.parametrize("bf16_seconds, native", [(0.02, True), (0.04, True), (0.045, False), (0.3, False)])
def test_avx512_bf16_is_decided_by_the_probe_once(monkeypatch, fresh_check, bf16_seconds, native):
    capabilities(monkeypatch, avx512_bf16=True)
    calls = []

    def seconds(dtype):
        calls.append(dtype)
        return 0.05 if dtype == torch.float32 else bf16_seconds

    monkeypatch.setattr(P, "matmul_seconds", seconds)
    chosen, why = P.cpu_bf16()
    assert chosen is native  # bf16 only when >= 1.2x as fast: 1.25x and 2.5x are, 1.11x is not
    assert why.startswith("this CPU has AVX512-BF16") and f"{0.05 / bf16_seconds:.1f}x" in why
    assert P.resolve_precision("auto", CPU)[0] == ("bf16" if native else "fp32")
    assert P.cpu_bf16() == (chosen, why)
    assert calls == [torch.float32, torch.bfloat16]  # one probe for the process, however often asked


def test_matmul_seconds_times_the_dtype_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the probe times fp32 even inside autocast
        seconds = P.matmul_seconds(torch.float32, size=64, repeats=2)
    assert 0 < seconds < 5
    assert torch.equal(torch.rand(1), expected)


def test_autocast_is_bf16_only_for_bf16():
    a = torch.randn(4, 8)
    with P.autocast(CPU, "bf16"):
        assert (a @ a.t()).dtype == torch.bfloat16
    with P.autocast(CPU, "fp32"):
        assert (a @ a.t()).dtype == torch.float32


def tiny_detector() -> cv.DeepfakeDetector:
    torch.manual_seed(0)  # the head's initialisation
    return cv.DeepfakeDetector(cv.tiny_visual()).eval()


def test_a_bf16_training_step_on_the_cpu_is_deterministic():
    # resuming a run reproduces it bit for bit only if the same step gives the same gradients
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # [4, 3, 224, 224]
    grads = []
    for _ in range(2):
        detector = tiny_detector().train()
        cv.set_trainable(detector, "ln")
        with P.autocast(CPU, "bf16"):
            logits = detector(images)                                      # [4, 2], bf16
        F.cross_entropy(logits.float(), torch.tensor([0, 1, 1, 0])).backward()
        grads.append([p.grad for p in detector.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def features_and_p_fake(detector: cv.DeepfakeDetector, images: torch.Tensor, precision: str):
    with torch.inference_mode(), P.autocast(CPU, precision):
        features = detector.features(images)                               # [N, 1024], unit norm
        logits = detector.head(features)                                   # [N, 2], bf16 under bf16
    return features.float(), logits.float().softmax(-1)[:, 1]              # [N, 1024], [N]


def test_bf16_forward_of_vit_l14_matches_fp32_on_this_cpu():
    native, why = P.cpu_bf16()
    if not native:
        pytest.skip(f"needs a CPU with native bf16: {why}")
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.tiny_visual(width=1024, layers=24, heads=16)).eval()  # ViT-L/14's shape
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))       # [2, 3, 224, 224]
    fp32, p32 = features_and_p_fake(detector, images, "fp32")
    bf16, p16 = features_and_p_fake(detector, images, "bf16")
    # the bounds of test_cuda.py's test_bf16_forward_of_vit_l14_matches_fp32, which says why
    # (measured here: cosine 0.9999, p_fake within 2e-4)
    assert F.cosine_similarity(fp32, bf16, dim=-1).min().item() > 0.99
    assert (p32 - p16).abs().max().item() < 0.02, (p32, p16)
