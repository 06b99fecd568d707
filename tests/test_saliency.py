"""util/saliency.py: the maps depend on the model and on the input (Adebayo et al. 2018): on a tiny
detector trained by train.py on crops that differ only by a bright square planted in the top-left
quadrant of every fake one, a fake crop's map peaks on the square, and re-randomising the tuned
weights changes the map."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

import clip_vit
import data
import train
from util.layouts import load_videos
from util.saliency import fake_log_odds, saliency_maps

SIZE, CROP = 224, 64  # the detector's input and the tree's crop sides, px
SOURCES = ("youtube", "Deepfakes")


def square(crop_file) -> tuple[int, int, int, int]:
    """The planted square of a fake crop (its pixels are 250 in every channel, the noise below
    220) at the detector's input size: (y0, x0, y1, x1)."""
    ys, xs = np.nonzero((cv2.imread(str(crop_file)) == 250).all(-1))
    k = SIZE / CROP
    return int(ys.min() * k), int(xs.min() * k), int((ys.max() + 1) * k), int((xs.max() + 1) * k)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, make_tree, fast_flags):
    """A tiny detector trained through train.py (LN-tuning, the paper's losses and augmentations),
    6 epochs of 4 steps; the val split's fake crops as it takes them, and each one's square."""
    root = tmp_path_factory.mktemp("planted")
    tree = make_tree(root / "data", sources=SOURCES, videos_per_source=4, frames=(0, 1, 2, 3), size=CROP,
                     planted=True)
    train.main(["--data", str(tree), "--out", str(root / "runs"), "--name", "planted", *fast_flags,
                "--sources", *SOURCES, "--epochs", "6", "--lr", "1e-1", "--min-lr", "1e-2"])
    detector = clip_vit.load_detector(root / "runs" / "planted" / "best.pt")
    val = load_videos(tree, "ff++", "val", SOURCES)
    fakes, reals = ([f for v in val if v.label == label for f in v.frames] for label in (1, 0))
    p_fake, p_real = (data.predict(detector, files, torch.device("cpu")) for files in (fakes, reals))
    assert p_fake.min() > 0.7 and p_real.max() < 0.3, f"train.py did not learn the square: {p_fake}, {p_real}"
    transform = data.eval_transform(SIZE)
    images = torch.stack([transform(data.read_rgb(f)) for f in fakes])  # [16, 3, 224, 224]
    return detector, images, [square(f) for f in fakes]


def quadrant_mass(maps: np.ndarray) -> np.ndarray:
    """Each map's share of its mass in the top-left quadrant: [N]."""
    half = SIZE // 2
    return maps[:, :half, :half].sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)


def test_fake_crop_map_peaks_on_the_planted_square(planted):
    detector, fakes, squares = planted
    maps = saliency_maps(detector, fakes)
    assert maps.shape == (len(fakes), SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() == pytest.approx(1, abs=1e-3)
    assert (quadrant_mass(maps) > 0.6).all(), quadrant_mass(maps)  # chance is 1/4
    cell = 14  # the tower's patch size: a map is resolved to one token
    for m, (y0, x0, y1, x1) in zip(maps, squares):  # the peak follows the square: the map depends on the input
        y, x = np.unravel_index(m.argmax(), m.shape)
        assert y0 - cell <= y < y1 + cell and x0 - cell <= x < x1 + cell, ((y, x), (y0, x0))


def test_re_randomised_tuned_weights_change_the_map(planted):
    """Over five re-randomisations of the tuned tensors: one random tower may by chance respond to
    the square as well (it is the crops' most salient structure), so the check is on the median."""
    detector, fakes, _ = planted
    trained = saliency_maps(detector, fakes)
    correlations, masses = [], []
    for seed in range(5):
        randomised = copy.deepcopy(detector)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for module in randomised.modules():  # the tuned tensors: every LayerNorm, and the head
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1, 0.5)
                    module.bias.normal_(0, 0.5)
            randomised.head.reset_parameters()
        random = saliency_maps(randomised, fakes)
        correlations.append(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(trained, random)]))
        masses.append(quadrant_mass(random).mean())
    assert np.median(correlations) < 0.3, correlations
    assert np.median(masses) < 0.5 < quadrant_mass(trained).mean(), masses


def test_detector_is_left_as_it_was_and_the_graph_starts_at_the_last_block():
    detector = clip_vit.DeepfakeDetector(clip_vit.tiny_visual())
    clip_vit.set_trainable(detector, "ln")
    detector.train()
    flags = [p.requires_grad for p in detector.parameters()]
    first, last = detector.visual.transformer.resblocks[0], detector.visual.transformer.resblocks[-1]
    recorded = []
    handle = first.register_forward_hook(lambda module, args, out: recorded.append(out.requires_grad))
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    maps = saliency_maps(detector, images, batch_size=2)
    handle.remove()
    assert recorded == [False, False]  # two batches; no graph below the last block
    assert maps.shape == (3, SIZE, SIZE)
    assert detector.training and [p.requires_grad for p in detector.parameters()] == flags
    assert all(p.grad is None for p in detector.parameters())
    assert not last._forward_pre_hooks and not last.ln_1._forward_hooks
    np.testing.assert_allclose(saliency_maps(detector, images, batch_size=32), maps, atol=1e-5)
    assert saliency_maps(detector, images[:0]).shape == (0, SIZE, SIZE)
    with torch.inference_mode():  # as evaluate.py scores
        np.testing.assert_allclose(saliency_maps(detector, images.clone()), maps, atol=1e-5)


def test_target_is_the_fake_log_odds():
    logits = torch.tensor([0.5, 2.0])
    assert fake_log_odds(logits).item() == pytest.approx(1.5)
    assert torch.sigmoid(fake_log_odds(logits)) == pytest.approx(logits.softmax(-1)[1])
