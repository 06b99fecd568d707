"""Saliency maps of face crops: which regions raise the detector's p_fake, by HiResCAM (the
element-wise form of Grad-CAM) on the patch tokens entering the last transformer block, computed
by pytorch-grad-cam (`grad-cam` on PyPI) as that library does it for ViTs.

    maps = saliency_maps(detector, images)     # images: [N, 3, 224, 224] as the detector takes them
    maps.shape                                 # (N, 224, 224), float32 in [0, 1]

The activations are the tokens the last block reads (the output of its ln_1, [N, 257, W]) without
the class token, as a 16 x 16 grid of W channels. HiResCAM (Draelos & Carin 2020) multiplies them
element-wise by the target's gradient and sums over the channels: each grid cell's own
contribution to the target, to first order. The map is passed through a ReLU (only what raises
the target), scaled to [0, 1] and resized to the input. Grad-CAM proper (each channel weighted by
its gradient averaged over the grid) failed the sanity check of tests/test_saliency.py on this
tower: for a tiny detector trained to find a bright patch in one quadrant, its maps of fake crops
put about a quarter of their mass there (chance), where HiResCAM's put nearly all of it.

The target is the fake class's log-odds, logit_fake - logit_real: p_fake = sigmoid(log-odds), so
a region that raises it raises p_fake, and unlike p_fake its gradient does not vanish where p_fake
is near 0 or 1. This detector's last block computes only the class token's output, but the patch
tokens reach it as keys and values of its attention, so their gradient is the attention's.

Cost: the graph starts at the last block (every weight frozen and the block's input a fresh
leaf while the maps are made), so besides one forward pass there is one backward pass through a
single block and the head, per batch of crops.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Iterator

import numpy as np
import torch
from torch import nn


def fake_log_odds(logits: torch.Tensor) -> torch.Tensor:
    """The CAM's target for one crop: logit_fake - logit_real of its logits [2] (class 1 = fake)."""
    return logits[1] - logits[0]


@contextlib.contextmanager
def graph_from(block: nn.Module, model: nn.Module) -> Iterator[None]:
    """Inside, autograd records only from `block` on: every parameter of `model` is frozen and
    the block's input becomes a new leaf that requires grad, so a backward pass runs through the
    block and what follows it, not the whole tower. Parameters, their gradients (none are made)
    and the training mode are as before afterwards."""
    trainable = [p.requires_grad for p in model.parameters()]
    training = model.training
    model.requires_grad_(False)
    handle = block.register_forward_pre_hook(lambda module, args: (args[0].detach().requires_grad_(), *args[1:]))
    try:
        with torch.inference_mode(False), torch.enable_grad():  # whatever the caller's mode
            yield
    finally:
        handle.remove()
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
        model.train(training)


def saliency_maps(detector: nn.Module, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """HiResCAM of each image for the fake class: float32 [N, H, W] in [0, 1] at the images' size,
    1 where the patch tokens most raise p_fake (all 0 when nothing raises it).

    `detector`: logits [N, 2] from images [N, 3, H, W] (class 1 = fake), with its ViT image tower
    at `detector.visual` (blocks at `.transformer.resblocks`, token grid from
    `.positional_embedding`): clip_vit.DeepfakeDetector. `images`: as the detector takes them
    (CLIP-transformed crops), moved to the detector's device batch by batch. The maps are of the
    detector in eval mode, in fp32, and it is left as it was (training mode, requires_grad, no
    .grad); callable under torch.inference_mode() or no_grad().

    pytorch-grad-cam computes the map (its HiResCAM class and vit_reshape_transform, on the last
    block's ln_1); it is used without `with`, whose exit would swallow an IndexError."""
    from pytorch_grad_cam import HiResCAM  # imported here: with its dependencies, seconds of start-up
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    if len(images) == 0:
        return np.zeros((0, *images.shape[-2:]), dtype=np.float32)
    block = detector.visual.transformer.resblocks[-1]
    grid = math.isqrt(detector.visual.positional_embedding.shape[0] - 1)  # 16 for 224 px, 14-px patches
    maps = []
    with graph_from(block, detector):
        cam = HiResCAM(detector, [block.ln_1], partial(vit_reshape_transform, height=grid, width=grid))
        try:
            for batch in images.split(batch_size):
                maps.append(cam(batch, [fake_log_odds] * len(batch)))   # [B, H, W]
        finally:
            cam.activations_and_grads.release()
    return np.concatenate(maps).astype(np.float32)
