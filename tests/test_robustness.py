"""Tests for util/robustness.py: the scores of perturbed crops against perturbing and scoring each
crop directly, each crop read once whatever the chunk, the noise a function of the crop's key,
errors, and two torchrun processes giving the one process's scores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from util import perturb
from util.distributed import Processes
from util.layouts import DataError
from util.robustness import perturbed_scores

ROOT = Path(__file__).resolve().parents[1]
GRID = [("jpeg", 40), ("blur", 1.5), ("resize", 16), ("noise", 0.1)]
ALONE = Processes(0, 1, torch.device("cpu"))


def score(images: list[np.ndarray]) -> np.ndarray:
    """A stand-in for the model: any number that moves with the pixels."""
    return np.array([float(im.astype(np.float64).mean() + im[::7, ::5].astype(np.float64).std()) for im in images])


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


@pytest.fixture
def crops(tmp_path) -> tuple[list[Path], list[str]]:
    """7 crop files of 40x40 coloured noise and their keys (path under the split)."""
    rng = np.random.default_rng(0)
    paths, keys = [], []
    for k in range(7):
        path = tmp_path / f"src/v{k // 3}/{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 40, 3)).astype(np.uint8))
        paths.append(path)
        keys.append(path.relative_to(tmp_path).as_posix())
    return paths, keys


def test_equal_to_scoring_each_perturbed_crop_directly(crops):
    paths, keys = crops
    out = perturbed_scores(score, read, paths, keys, GRID, ALONE, seed=3, chunk=3)
    assert out.shape == (len(GRID), len(paths))
    for j, (name, severity) in enumerate(GRID):
        rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
        expected = score([perturb.apply(name, severity, im, perturb.crop_seed(3, key)) for im, key in zip(rgb, keys)])
        assert np.array_equal(out[j], expected), (name, severity)
    assert not np.array_equal(out[3], perturbed_scores(score, read, paths, keys, GRID, ALONE, seed=4)[3])


def test_each_crop_read_once_whatever_the_chunk_or_threads(crops):
    paths, keys = crops
    reads = []

    def counted(path):
        reads.append(path)
        return read(path)
    results = [perturbed_scores(score, counted, paths, keys, GRID, ALONE, chunk=c, threads=t)
               for c, t in ((1, 1), (3, 2), (100, 4))]
    assert sorted(reads) == sorted(paths * 3)  # once per call, not once per perturbation
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_noise_follows_the_crop_not_its_position(crops):
    paths, keys = crops
    forward = perturbed_scores(score, read, paths, keys, [("noise", 0.2)], ALONE)
    backward = perturbed_scores(score, read, paths[::-1], keys[::-1], [("noise", 0.2)], ALONE)
    assert np.array_equal(forward, backward[:, ::-1])
    assert perturbed_scores(score, read, [], [], GRID, ALONE).shape == (4, 0)


def test_errors(crops):
    paths, keys = crops

    def unreadable(path):
        raise DataError(f"cannot read crop {path} as an image")
    with pytest.raises(DataError, match="cannot read crop"):
        perturbed_scores(score, unreadable, paths, keys, GRID, ALONE)
    with pytest.raises(ValueError, match="resize=64: larger than the 40x40 crop"):
        perturbed_scores(score, read, paths, keys, [("resize", 64)], ALONE)


SCRIPT = """
import sys
import numpy as np
sys.path[:0] = [{root!r}, {tests!r}]
from pathlib import Path
from util.distributed import processes
from util.robustness import perturbed_scores
from test_robustness import GRID, score, read

paths = sorted(Path({folder!r}).rglob("*.png"))
keys = [p.name for p in paths]
reads = []
with processes("cpu", quiet=True) as procs:
    out = perturbed_scores(score, lambda p: reads.append(p.name) or read(p), paths, keys, GRID, procs, chunk=3)
    np.save(Path({folder!r}) / f"rank{{procs.rank}}.npy", out)
    (Path({folder!r}) / f"reads{{procs.rank}}.txt").write_text(" ".join(reads))
"""


def test_two_torchrun_processes_share_the_crops(crops, tmp_path):
    paths, _ = crops
    script = tmp_path / "two.py"
    script.write_text(SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), folder=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ordered = sorted(paths)
    alone = perturbed_scores(score, read, ordered, [p.name for p in ordered], GRID, ALONE)
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), alone)  # every rank gets the whole result
    # chunks of 3: rank 0 reads items 0 and 2 of each chunk, rank 1 item 1; nobody reads a crop twice
    reads = [(tmp_path / f"reads{rank}.txt").read_text().split() for rank in (0, 1)]
    names = [p.name for p in ordered]
    assert reads[0] == [names[i] for i in (0, 2, 3, 5, 6)] and reads[1] == [names[i] for i in (1, 4)]
