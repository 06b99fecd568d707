"""The CUDA paths (skipped without a GPU): the tower equals OpenAI's, bf16 agrees with fp32, an LN-tuning
step changes only the LayerNorms and the head, scoring agrees with the CPU, and the bench's figures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clip_vit as cv
import data
import train
from tools import bench
from util.distributed import Processes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def true_fp32():
    """fp32 means fp32 here: no TF32 matmuls, which bench.main and train.py switch on for the process."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA)  # [n, 3, 224,224]


@torch.no_grad()
def test_tower_equals_openai_on_cuda(openai_clip):
    ours = cv.tiny_visual(width=128, layers=3, heads=2, output_dim=64).to(CUDA).eval()
    reference = openai_clip.model.VisionTransformer(224, 14, 128, 3, 2, 64).to(CUDA).eval()
    reference.load_state_dict(ours.state_dict())
    x = images(4)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)  # [4, 64]


@torch.no_grad()
def test_bf16_agrees_with_fp32_on_the_vit_l14_shape():
    # bf16 rounds each product's inputs to 8 bits of mantissa (accumulating in fp32); over 24 blocks
    # the feature's direction moves well under 0.1 rad, and p_fake (the logistic's slope is at most
    # 1/4, |w1 - w0| ~ 0.8 for the random head) by under 0.02. CPU bf16 on this shape: 2e-4.
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.tiny_visual(width=1024, layers=24, heads=16)).to(CUDA).eval()
    x = images(8)
    fp32, p32 = detector.features(x), detector(x).softmax(-1)[:, 1]          # [8, 1024], [8]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16, p16 = detector.features(x), detector(x).softmax(-1)[:, 1]      # the head in fp32 (fp32 out)
    assert F.cosine_similarity(fp32, bf16.float(), dim=-1).min().item() > 0.99
    assert (p32 - p16.float()).abs().max().item() < 0.02


def test_ln_tuning_step_changes_only_layernorms_and_head():
    cfg = train.TrainConfig(precision="bf16")  # bf16 autocast, as train.py on CUDA
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.tiny_visual()).to(CUDA)
    cv.set_trainable(detector, "ln")
    expected = {f"{name}.{p}" for name, module in detector.named_modules()
                if isinstance(module, nn.LayerNorm) or name == "head"
                for p, _ in module.named_parameters(recurse=False)}
    before = {name: p.detach().clone() for name, p in detector.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=cfg.lr)
    labels = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1], device=CUDA)  # two of each class: slerp mixes both
    procs = Processes(rank=0, world=1, device=CUDA)
    terms = train.train_step(detector.train(), optimizer, images(8), labels, 0, cfg.lr, cfg, procs)
    assert math.isfinite(terms["loss"])
    assert {name for name, p in detector.named_parameters() if not torch.equal(p, before[name])} == expected


def test_scoring_on_cuda_agrees_with_the_cpu():
    # predict: bf16 autocast on CUDA, fp32 on the CPU; a tiny tower's p_fake differ by ~1e-3
    crops = list(np.random.default_rng(0).integers(0, 256, (6, 256, 256, 3), dtype=np.uint8))  # RGB, 6 crops
    detector = cv.DeepfakeDetector(cv.tiny_visual())
    p_cpu = data.predict(detector, crops, torch.device("cpu"), batch_size=4)           # [6]
    p_cuda = data.predict(detector.to(CUDA), crops, CUDA, batch_size=4)               # [6]
    assert p_cuda.shape == (6,) and np.abs(p_cpu - p_cuda).max() < 0.02


def test_bench_cuda_figures(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cuda", "--model", "tiny", "--batch-size", "8", "--repeat", "2",
                "--parts", "forward,train_step,data", "--data-images", "16", "--json", str(out)])
    results = json.loads(out.read_text())
    assert set(results["precisions"]) == {"bf16"} and results["forward"]["dtype"] == "bfloat16"
    step = results["train_step"]
    assert step["batch_size"] == 8 and 0 < step["peak_memory_mb"] <= step["peak_memory_total_mb"]
    assert step["checkpointing"]["peak_memory_mb"] <= step["peak_memory_mb"]  # recomputed, not kept
    assert results["bottleneck"]["limited_by"] in ("gpu", "loader") and results["recipe_minutes"] > 0
