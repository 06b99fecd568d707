"""Tests for util/perturb.py: each perturbation against OpenCV or NumPy applied directly,
determinism, and the one-line errors of parse_perturb."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from util import perturb


@pytest.fixture
def crop() -> np.ndarray:
    """A smooth RGB 256x256 crop with some edges: blocks of colour over a gradient."""
    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64)
    image[64:128, 96:200] = (250, 30, 60)
    image += np.random.default_rng(0).normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_every_perturbation_keeps_shape_and_dtype(crop):
    for name, severity in perturb.DEFAULT_PERTURB:
        out = perturb.apply(name, severity, crop, seed=1)
        assert out.shape == crop.shape and out.dtype == np.uint8, (name, severity)
    assert perturb.apply("blur", 2, crop[:200, :180]).shape == (200, 180, 3)  # not only squares
    assert perturb.apply("resize", 64, crop[:200, :180]).shape == (200, 180, 3)


def test_jpeg_as_opencv_encodes_it(crop):
    bgr = crop[:, :, ::-1].copy()
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), 30])
    expected = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    assert ok and np.array_equal(perturb.apply("jpeg", 30, crop), expected)
    errors = [np.abs(perturb.apply("jpeg", q, crop).astype(int) - crop).mean() for q in (100, 60, 10)]
    assert errors[0] < errors[1] < errors[2]


def gaussian_blur_numpy(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian of +-3 sigma, reflected borders (edge pixel not repeated), in float."""
    r = math.ceil(3 * sigma)
    t = np.arange(-r, r + 1)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(g[i] * padded[i:i + image.shape[0]] for i in range(2 * r + 1))
    return sum(g[i] * rows[:, i:i + image.shape[1]] for i in range(2 * r + 1))


@pytest.mark.parametrize("sigma", [0.5, 1, 2.5])
def test_blur_is_a_gaussian_of_3_sigma(crop, sigma):
    assert perturb.blur_kernel(sigma) == 2 * math.ceil(3 * sigma) + 1
    ours = perturb.apply("blur", sigma, crop).astype(int)
    assert np.abs(ours - gaussian_blur_numpy(crop, sigma)).max() <= 1


def test_resize_is_area_down_then_bicubic_up(crop):
    small = crop.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))                    # 4x4 block means
    expected = cv2.resize(np.rint(small).astype(np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    assert np.abs(perturb.apply("resize", 64, crop).astype(int) - expected).max() <= 1
    assert np.array_equal(perturb.apply("resize", 256, crop), crop)
    with pytest.raises(ValueError, match="larger than the 180x200 crop"):
        perturb.apply("resize", 256, crop[:200, :180])


def test_noise_is_seeded_gaussian_clipped_and_rounded(crop):
    out = perturb.apply("noise", 0.1, crop, seed=7).astype(int)
    # the same float32 draws, the sum in float64: float32's rounding may move a value at .5 by one level
    drawn = np.random.default_rng(7).standard_normal(crop.shape, dtype=np.float32).astype(np.float64)
    expected = np.rint(np.clip(crop + 25.5 * drawn, 0, 255)).astype(int)
    assert np.abs(out - expected).max() <= 1 and (out == expected).mean() > 0.999
    grey = np.full((64, 64, 3), 128, np.uint8)
    residual = perturb.apply("noise", 0.05, grey, seed=3).astype(float) - 128
    assert residual.std() == pytest.approx(0.05 * 255, rel=0.05) and abs(residual.mean()) < 0.5


def test_same_seed_same_bytes(crop):
    for name, severity in perturb.DEFAULT_PERTURB:
        assert perturb.apply(name, severity, crop, seed=5).tobytes() == \
            perturb.apply(name, severity, crop.copy(), seed=5).tobytes()
    assert not np.array_equal(perturb.apply("noise", 0.1, crop, seed=5), perturb.apply("noise", 0.1, crop, seed=6))
    assert np.array_equal(perturb.apply("blur", 2, crop, seed=5), perturb.apply("blur", 2, crop, seed=6))


def test_crop_seed_depends_on_the_crop_only():
    a = perturb.crop_seed(0, "Deepfakes/000_003/0.png")
    assert a == perturb.crop_seed(0, "Deepfakes/000_003/0.png")  # same in any process, any order
    others = perturb.crop_seed(1, "Deepfakes/000_003/0.png"), perturb.crop_seed(0, "Deepfakes/000_003/9.png")
    assert len({a, *others}) == 3
    assert 0 <= a < 2 ** 64


def test_non_contiguous_and_bad_inputs(crop):
    view = np.ascontiguousarray(crop.transpose(1, 0, 2)).transpose(1, 0, 2)  # same pixels, other strides
    assert np.array_equal(perturb.apply("blur", 1, view), perturb.apply("blur", 1, crop))
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        perturb.apply("blur", 1, crop.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        perturb.apply("blur", 1, crop[:, :, 0])


def test_parse_perturb():
    assert perturb.parse_perturb(["jpeg=90,70,50,30", "blur=1,2,3", "resize=112,64", "noise=0.05,0.1"]) == [
        ("jpeg", 90), ("jpeg", 70), ("jpeg", 50), ("jpeg", 30), ("blur", 1.0), ("blur", 2.0), ("blur", 3.0),
        ("resize", 112), ("resize", 64), ("noise", 0.05), ("noise", 0.1)]
    assert perturb.parse_perturb([]) == []
    assert [perturb.label(n, s) for n, s in perturb.parse_perturb(["jpeg=90", "noise=0.05", "blur=1.5"])] == \
        ["jpeg=90", "noise=0.05", "blur=1.5"]


def test_strength_orders_mild_to_strong():
    grid = perturb.parse_perturb(["jpeg=30,90,60", "resize=64,112", "blur=3,1", "noise=0.2,0.05"])
    ordered = sorted(grid, key=lambda p: (p[0], perturb.strength(*p)))
    assert ordered == [("blur", 1.0), ("blur", 3.0), ("jpeg", 90), ("jpeg", 60), ("jpeg", 30),
                       ("noise", 0.05), ("noise", 0.2), ("resize", 112), ("resize", 64)]


def test_default_grid():
    grid = perturb.DEFAULT_PERTURB
    assert [s for n, s in grid if n == "jpeg"] == [100, 80, 60, 40, 20, 10]
    assert [s for n, s in grid if n == "blur"] == [1, 2, 3]
    assert [s for n, s in grid if n == "resize"] == [112, 64]
    assert [s for n, s in grid if n == "noise"] == [0.05, 0.1, 0.2]


@pytest.mark.parametrize("token, message", [
    ("sharpen=2", "'sharpen=2': a perturbation is NAME=V1,V2,... with NAME one of jpeg, blur, resize, noise"),
    ("jpeg", "'jpeg': a perturbation is NAME=V1,V2,... with NAME one of jpeg, blur, resize, noise"),
    ("jpeg=", "'jpeg=': a perturbation is NAME=V1,V2,... with NAME one of jpeg, blur, resize, noise"),
    ("jpeg=90,0", "'jpeg=90,0': jpeg quality must be an integer in 1..100, got 0"),
    ("jpeg=101", "'jpeg=101': jpeg quality must be an integer in 1..100, got 101"),
    ("jpeg=90.5", "'jpeg=90.5': jpeg quality must be an integer in 1..100, got '90.5'"),
    ("blur=0", "'blur=0': blur sigma must be a number in (0, 10], got 0"),
    ("blur=11", "'blur=11': blur sigma must be a number in (0, 10], got 11"),
    ("resize=4", "'resize=4': resize side must be an integer in 8..256, got 4"),
    ("resize=300", "'resize=300': resize side must be an integer in 8..256, got 300"),
    ("noise=1.5", "'noise=1.5': noise sigma must be a number in (0, 1], got 1.5"),
    ("noise=nan", "'noise=nan': noise sigma must be a number in (0, 1], got nan"),
    ("noise=x", "'noise=x': noise sigma must be a number in (0, 1], got 'x'"),
    ("jpeg=90,50,90", "'jpeg=90,50,90': jpeg=90 is given twice"),
    ("blur=1", "'blur=1': blur=1 is given twice"),  # after blur=1 in the list below
])
def test_parse_errors_are_one_line(token, message):
    with pytest.raises(ValueError) as error:
        perturb.parse_perturb(["blur=1", token])
    assert str(error.value) == message and "\n" not in str(error.value)
