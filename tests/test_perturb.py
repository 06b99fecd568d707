"""util/perturb.py: each perturbation does what it names, the grammar's one-line errors, and a split
scored under a grid as each crop perturbed and scored directly, each crop read once."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from util import perturb
from util.distributed import Processes
from util.run import mix_seed

GRID = [("jpeg", 40), ("blur", 1.5), ("resize", 16), ("noise", 0.1)]
ALONE = Processes(0, 1, torch.device("cpu"))


@pytest.fixture
def crop() -> np.ndarray:
    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64)
    image[64:128, 96:200] = (250, 30, 60)
    image += np.random.default_rng(0).normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_every_perturbation_keeps_shape_dtype_and_bytes(crop):
    for name, severity in perturb.DEFAULT_PERTURB:
        out = perturb.apply(name, severity, crop, seed=5)
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert out.tobytes() == perturb.apply(name, severity, crop.copy(), seed=5).tobytes(), (name, severity)
    jpeg_errors = [np.abs(perturb.apply("jpeg", q, crop).astype(int) - crop).mean() for q in (100, 60, 10)]
    assert jpeg_errors[0] < jpeg_errors[1] < jpeg_errors[2]
    assert perturb.apply("blur", 2, crop[:200, :180]).shape == (200, 180, 3)  # not only squares
    assert perturb.apply("resize", 64, crop[:200, :180]).shape == (200, 180, 3)
    view = np.ascontiguousarray(crop.transpose(1, 0, 2)).transpose(1, 0, 2)  # same pixels, other strides
    assert np.array_equal(perturb.apply("blur", 1, view), perturb.apply("blur", 1, crop))


@pytest.mark.parametrize("sigma", [0.5, 1, 2.5])
def test_blur_is_a_gaussian_of_3_sigma(crop, sigma):
    """Against a separable Gaussian of +-3 sigma with reflected borders (edge pixel not repeated)."""
    r = math.ceil(3 * sigma)
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    padded = np.pad(crop.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = sum(g[i] * padded[i:i + 256] for i in range(2 * r + 1))
    expected = sum(g[i] * rows[:, i:i + 256] for i in range(2 * r + 1))
    assert np.abs(perturb.apply("blur", sigma, crop).astype(int) - expected).max() <= 1


def test_resize_is_area_down_then_bicubic_up(crop):
    small = crop.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))                    # 4x4 block means
    expected = cv2.resize(np.rint(small).astype(np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    assert np.abs(perturb.apply("resize", 64, crop).astype(int) - expected).max() <= 1
    with pytest.raises(ValueError):
        perturb.apply("resize", 256, crop[:200, :180])


def test_noise_is_seeded_gaussian_of_the_intensity_range():
    grey = np.full((64, 64, 3), 128, np.uint8)
    residual = perturb.apply("noise", 0.05, grey, seed=3).astype(float) - 128
    assert residual.std() == pytest.approx(0.05 * 255, rel=0.05) and abs(residual.mean()) < 0.5


def test_parse_perturb_and_strength():
    grid = perturb.parse_perturb(["resize=64,112", "blur=3,1", "jpeg=30,90"])
    assert grid == [("resize", 64), ("resize", 112), ("blur", 3.0), ("blur", 1.0), ("jpeg", 30), ("jpeg", 90)]
    assert sorted(grid, key=lambda p: (p[0], perturb.strength(*p))) == [  # mild to strong
        ("blur", 1.0), ("blur", 3.0), ("jpeg", 90), ("jpeg", 30), ("resize", 112), ("resize", 64)]
    tokens = ["jpeg=90", "noise=0.05", "blur=1.5"]
    assert [perturb.label(*p) for p in perturb.parse_perturb(tokens)] == tokens


@pytest.mark.parametrize("token", ["sharpen=2", "jpeg", "jpeg=", "jpeg=90,0", "jpeg=101", "jpeg=90.5",
                                   "blur=0", "blur=11", "resize=4", "resize=300", "noise=1.5", "noise=nan",
                                   "noise=x", "jpeg=90,50,90", "blur=1"])  # blur=1: after blur=1
def test_parse_errors_are_one_line_naming_the_token(token):
    with pytest.raises(ValueError) as error:
        perturb.parse_perturb(["blur=1", token])
    assert repr(token) in str(error.value) and "\n" not in str(error.value)


def score(images: list[np.ndarray]) -> np.ndarray:
    """A stand-in for the model: any number that moves with the pixels."""
    return np.array([im.mean() + im[::7, ::5].std() for im in images])


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


@pytest.fixture
def crops(tmp_path) -> tuple[list[Path], list[str]]:
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"src/v{k // 3}/{k}.png" for k in range(7)]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 40, 3)).astype(np.uint8))
    return paths, [path.relative_to(tmp_path).as_posix() for path in paths]


def test_scores_equal_perturbing_each_crop_directly_each_read_once(crops):
    paths, keys = crops
    reads = []
    results = [perturb.perturbed_scores(score, lambda p: reads.append(p) or read(p), paths, keys, GRID, ALONE,
                                        seed=3, chunk=c, threads=t) for c, t in ((1, 1), (3, 2), (100, 4))]
    assert sorted(reads) == sorted(paths * 3)  # once per call, not once per perturbation
    for j, (name, s) in enumerate(GRID):
        expected = score([perturb.apply(name, s, read(p), mix_seed(3, k)) for p, k in zip(paths, keys)])
        assert all(np.array_equal(r[j], expected) for r in results), (name, s)
    reordered = perturb.perturbed_scores(score, read, paths[::-1], keys[::-1], GRID, ALONE, seed=3)
    assert np.array_equal(results[0], reordered[:, ::-1])  # the noise follows the crop, not its position
    seed_0 = perturb.perturbed_scores(score, read, paths, keys, GRID, ALONE)
    assert not np.array_equal(results[0][3], seed_0[3])

