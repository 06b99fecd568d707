"""util/checkpoint.py: this project's checkpoints round-trip and refuse other base weights."""

import pytest
import torch

import clip_vit as cv
from util import checkpoint


def test_checkpoint_round_trip_and_base_check(tmp_path):
    detector = cv.build_detector("tiny")
    cv.set_trainable(detector, "ln")
    with torch.no_grad():
        for p in detector.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    checkpoint.save_checkpoint(tmp_path / "best.pt", detector, {"clip": "tiny", "normalize": True}, epoch=3)
    ckpt = checkpoint.load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == 3 and set(ckpt["state_dict"]) == {n for n, p in detector.named_parameters() if p.requires_grad}
    loaded = cv.load_detector(tmp_path / "best.pt")
    for (n, a), b in zip(detector.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    # the same tensors over other base weights are refused
    other = cv.DeepfakeDetector(cv.tiny_visual(seed=1))
    with pytest.raises(ValueError, match="trained on CLIP weights with SHA-256 .* pass the CLIP weights"):
        checkpoint.apply_checkpoint(other, ckpt, "tiny seed 1")
    torch.save(other.visual.state_dict() | {}, tmp_path / "other.pt")
    torch.save({"visual." + k: v for k, v in other.visual.state_dict().items()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="different|SHA-256"):
        cv.load_detector(tmp_path / "best.pt", clip=str(tmp_path / "other.pt"))


def test_vit_l14_checkpoint_is_small(tmp_path):
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.VisionTransformer(224, 14, 1024, 24, 16, 768))
    cv.set_trainable(detector, "ln")
    checkpoint.save_checkpoint(tmp_path / "l14.pt", detector, {"clip": "ViT-L/14", "normalize": True})
    assert (tmp_path / "l14.pt").stat().st_size < 1_000_000
