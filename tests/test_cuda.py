"""The CUDA code paths: bf16 autocast against fp32, one LN-tuning step, scoring against the CPU, a
one-process NCCL DDP step, and bench.py's CUDA figures. Every test is skipped without a CUDA GPU.

    python -m pytest -q tests/test_cuda.py
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import _video_utils as U
from tools import bench
import clip_vit as cv
import data
import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda", 0)
ROOT = Path(bench.__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def true_fp32():
    """fp32 means fp32 here: no TF32 (10-bit mantissa) matmuls or convolutions, which bench.main and
    train.py switch on for the whole process."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tiny_detector(seed: int = 0, **sizes) -> cv.DeepfakeDetector:
    torch.manual_seed(seed)  # the head's initialisation
    return cv.DeepfakeDetector(cv.tiny_visual(seed=seed, **sizes))


def random_images(n: int, device: torch.device) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)  # [n, 3, 224, 224]


@torch.no_grad()
def test_bf16_forward_of_vit_l14_matches_fp32():
    # bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per operation, products accumulated in
    # fp32); over 24 residual blocks and the final LayerNorm the feature's direction drifts by well
    # under 1e-1 rad, so a cosine > 0.99 per row. p_fake = softmax(head(f)) moves by at most
    # |w1 - w0| |df| / 4 (the logistic's slope is <= 1/4; |w1 - w0| ~ 0.8 for the random head), so
    # < 0.02 follows from |df| < 0.1. Measured with CPU bf16 autocast on this shape and seed: cosine
    # 0.9999, p_fake within 2e-4; the bounds leave room for other GPUs' kernels.
    detector = tiny_detector(width=1024, layers=24, heads=16, patch_size=14).to(CUDA).eval()  # ViT-L/14's shape
    images = random_images(8, CUDA)
    fp32 = detector.features(images)                                       # [8, 1024], unit norm
    p32 = detector.head(fp32).softmax(-1)[:, 1]                            # [8]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = detector.features(images)                                   # [8, 1024]
        logits = detector.head(bf16)                                       # [8, 2], bf16
    cosine = F.cosine_similarity(fp32, bf16.float(), dim=-1)               # [8]
    assert cosine.min().item() > 0.99, cosine
    p16 = logits.float().softmax(-1)[:, 1]                                 # [8]
    assert (p32 - p16).abs().max().item() < 0.02, (p32, p16)


def test_ln_tuning_step_changes_only_layernorms_and_head():
    cfg = train.TrainConfig()
    detector = tiny_detector().to(CUDA)
    cv.set_trainable(detector, "ln")
    detector.train()
    expected = {f"{name}.{p}" for name, module in detector.named_modules()
                if isinstance(module, nn.LayerNorm) or name == "head" for p, _ in module.named_parameters(recurse=False)}
    before = {name: p.detach().clone() for name, p in detector.named_parameters()}
    forward = train.TrainForward(detector, cfg.slerp)
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    images = random_images(8, CUDA)
    labels = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1], device=CUDA)  # two of each class: slerp mixes both
    parts = train.train_step(forward, optimizer, images, labels, shares=None, generator=train.step_generator(cfg.seed, 0),
                             lr=cfg.lr, cfg=cfg, precision="bf16")  # bf16 autocast, as train.py on CUDA
    assert torch.isfinite(parts["loss"]).item()
    changed = {name for name, p in detector.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == expected


def test_scoring_on_cuda_matches_the_cpu():
    # predict runs bf16 autocast on CUDA and fp32 on the CPU; a tiny tower's p_fake differ by ~1e-3
    rng = np.random.default_rng(0)
    crops = [cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 2)
             for _ in range(6)]                                             # RGB uint8 [256, 256, 3] each
    cpu_model = tiny_detector()
    cuda_model = copy.deepcopy(cpu_model).to(CUDA)
    p_cpu = data.predict(cpu_model, crops, torch.device("cpu"), batch_size=4)  # [6]
    p_cuda = data.predict(cuda_model, crops, CUDA, batch_size=4)               # [6]
    assert p_cpu.shape == p_cuda.shape == (6,)
    assert np.abs(p_cpu - p_cuda).max() < 0.02


DDP_STEP = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import clip_vit as cv, train

dist.init_process_group("nccl", rank=0, world_size=1)
try:
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    cfg = train.TrainConfig()
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.tiny_visual()).to(device)
    cv.set_trainable(detector, "ln")
    model = DDP(train.TrainForward(detector, cfg.slerp), device_ids=[device.index])
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=cfg.lr)
    images = torch.randn(8, 3, 224, 224, device=device)
    labels = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1], device=device)
    # shares: the torchrun path (features and labels gathered, flags all-reduced), through NCCL;
    # the backward's gradient all-reduce goes through NCCL too
    parts = train.train_step(model, optimizer, images, labels, shares=[8], generator=train.step_generator(cfg.seed, 0),
                             lr=cfg.lr, cfg=cfg, precision="bf16")
    torch.cuda.synchronize()
    print("loss", parts["loss"].item())
finally:
    dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="torch built without NCCL")
def test_one_process_nccl_ddp_step():
    # in a subprocess with a timeout: a hung NCCL rendezvous must not block the suite
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(U.free_port()), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-c", DDP_STEP], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    loss = float(done.stdout.split("loss")[-1])
    assert math.isfinite(loss)


def test_bench_cuda_figures(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--device", "cuda", "--model", "tiny", "--batch-size", "8", "--repeat", "2",
                "--parts", "forward,train_step,data", "--data-images", "16", "--json", str(out)])
    results = json.loads(out.read_text())
    f, step, data = results["forward"], results["train_step"], results["data"]
    assert f["dtype"] == "bfloat16"
    assert f["gemm_fraction"] == pytest.approx(f["tflop_per_s"] / f["gemm_tflop_per_s"])
    assert step["batch_size"] == 8 and step["images_per_s"] == pytest.approx(8 / step["seconds"])
    # CUDA counts every live tensor: the step's peak is above the weights it started from
    assert 0 < step["peak_memory_mb"] <= step["peak_memory_total_mb"]
    assert step["checkpointing"]["peak_memory_mb"] <= step["peak_memory_mb"]  # recomputed, not kept
    loader_faster = data["loader_images_per_s"] >= step["images_per_s"]
    assert results["bottleneck"]["limited_by"] == ("gpu" if loader_faster else "loader")
    assert results["recipe_minutes"] == pytest.approx(
        results["recipe"]["epochs"] * 115_200 / min(step["images_per_s"], data["loader_images_per_s"]) / 60)
