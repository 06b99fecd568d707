"""Perturbations of uint8 RGB face crops (JPEG, blur, resize, noise at a severity; deterministic),
the grammar that names them (`jpeg=90,70 blur=1,2`), and a split's crops scored under them, every
crop decoded once for the whole grid, chunk by chunk, shared over torchrun's ranks.

    scores = perturbed_scores(score, read, crops, keys, parse_perturb(["jpeg=50"]), procs)
    # scores[j, i] = score([apply(*grid[j], read(crops[i]), mix_seed(seed, keys[i]))])
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from util.distributed import Processes, interleaved
from util.layouts import DataError
from util.run import mix_seed

CROP_SIZE = 256  # preprocess.py's crop side: the largest resize side parse_perturb accepts
CHUNK = 512      # crops decoded at a time (over all ranks): ~100 MB of 256x256 crops, as many again perturbed


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Re-encoded as JPEG at `quality` (1..100) by OpenCV, then decoded."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    _, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of std `sigma` px, a kernel of +-3 sigma (never truncated), borders reflected."""
    k = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(image, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)


def resize(image: np.ndarray, side: int) -> np.ndarray:
    """Down to side x side by area averaging (as a low-resolution video holds a face), bicubic back up."""
    h, w = image.shape[:2]
    if side > min(h, w):
        raise ValueError(f"resize={side}: larger than the {w}x{h} crop")
    small = cv2.resize(image, (int(side), int(side)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Additive Gaussian noise of std `sigma` of the [0, 1] intensity range, float32 draws from
    numpy's default_rng(seed) (a third of float64's time), clipped and rounded."""
    noisy = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)  # [H, W, 3]
    noisy *= np.float32(sigma * 255.0)
    noisy += image
    return np.rint(np.clip(noisy, 0, 255, out=noisy), out=noisy).astype(np.uint8)


# name -> (number type, low, high, low excluded, what the severity is)
SEVERITY = {"jpeg": (int, 1, 100, False, "quality"),
            "blur": (float, 0, 10, True, "sigma"),
            "resize": (int, 8, CROP_SIZE, False, "side"),
            "noise": (float, 0, 1, True, "sigma")}


def apply(name: str, severity: float, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Perturbation `name` at `severity` (checked by parse_perturb) on a uint8 RGB [H, W, 3] crop;
    `seed` matters for noise only. The same arguments give the same bytes."""
    image = np.ascontiguousarray(image)  # OpenCV needs a contiguous array (a permuted tensor is not)
    if name == "noise":
        return noise(image, severity, seed)
    return {"jpeg": jpeg, "blur": blur, "resize": resize}[name](image, severity)


def label(name: str, severity: float) -> str:
    """How a perturbation is written on the command line and in outputs: jpeg=90, noise=0.05."""
    return f"{name}={severity:g}"


def strength(name: str, severity: float) -> float:
    """Grows with the damage done (a lower JPEG quality or resize side, a larger sigma)."""
    return -severity if name in ("jpeg", "resize") else severity


def severity_of(token: str, name: str, text: str) -> float:
    kind, low, high, open_low, what = SEVERITY[name]
    allowed = f"{name} {what} must be {'a number' if kind is float else 'an integer'} in " + \
              (f"({low}, {high}]" if open_low else f"{low}..{high}")
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{token!r}: {allowed}, got {text!r}") from None
    if not (low < value <= high if open_low else low <= value <= high):
        raise ValueError(f"{token!r}: {allowed}, got {text}")
    return value


def parse_perturb(tokens: list[str]) -> list[tuple[str, float]]:
    """Tokens like `jpeg=90,70 blur=1,2 resize=112,64 noise=0.05,0.1` -> [(name, severity), ...]
    in the order given. An unknown name, a malformed token, a severity out of range or given twice
    is a ValueError of one line naming the token."""
    out = []
    for token in tokens:
        name, eq, values = token.partition("=")
        if name not in SEVERITY or not eq or not values:
            raise ValueError(f"{token!r}: a perturbation is NAME=V1,V2,... (NAME: {', '.join(SEVERITY)})")
        for value in (severity_of(token, name, v) for v in values.split(",")):
            if (name, value) in out:
                raise ValueError(f"{token!r}: {label(name, value)} is given twice")
            out.append((name, value))
    return out


# the robustness grid (after the authors' follow-up GenD): six JPEG qualities from none to heavy,
# blur sigma up to 3, resize to 112 and 64, noise up to 0.2 of the intensity range
DEFAULT_TOKENS = ["jpeg=100,80,60,40,20,10", "blur=1,2,3", "resize=112,64", "noise=0.05,0.1,0.2"]
DEFAULT_PERTURB = parse_perturb(DEFAULT_TOKENS)


def perturbed_scores(score: Callable[[list[np.ndarray]], np.ndarray], read: Callable[[Path], np.ndarray],
                     crops: list[Path], keys: list[str], grid: list[tuple[str, float]], procs: Processes,
                     seed: int = 0, chunk: int = CHUNK, threads: int = 1) -> np.ndarray:
    """float64 [len(grid), len(crops)]. score: perturbed crops -> one score each; read: a crop file ->
    uint8 RGB (DataError when unreadable); keys: each crop's name (path under the split) for its noise
    seed, the same whatever the chunk or rank. `threads` decode and perturb at once (OpenCV and numpy
    release the GIL). An unreadable crop or a perturbation it cannot take stops every rank."""
    out = np.empty((len(grid), len(crops)))
    errors = (DataError, ValueError)
    with ThreadPoolExecutor(threads) as pool:
        for start in tqdm(range(0, len(crops), chunk), desc="perturbed chunks", unit="chunk", disable=None):
            items = list(zip(crops[start:start + chunk], keys[start:start + chunk]))
            images: list[np.ndarray] = []  # this rank's share of the chunk, decoded once for the whole grid

            def decode(share: list) -> np.ndarray:
                images[:] = pool.map(read, [crop for crop, _ in share])
                return np.zeros(len(share))  # nothing to gather: the call keeps the ranks' errors in step

            interleaved(decode, items, procs, errors)
            for j, (name, severity) in enumerate(grid):
                def perturbed(share: list, name=name, severity=severity) -> np.ndarray:
                    seeds = [mix_seed(seed, key) for _, key in share]
                    done = pool.map(lambda image, s: apply(name, severity, image, s), images, seeds)
                    return score(list(done))
                out[j, start:start + len(items)] = interleaved(perturbed, items, procs, errors)
    return out
