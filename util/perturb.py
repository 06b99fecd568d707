"""Perturbations of a face crop for robustness tests: JPEG, blur, resize and noise at a severity,
and the command-line grammar that names them (`jpeg=90,70 blur=1,2`).

Each takes a uint8 RGB [H, W, 3] crop (as read, before the CLIP transform) and returns one of
the same shape and dtype; all are deterministic (noise from the seed it is given)."""
from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np

CROP_SIZE = 256  # preprocess.py's crop side: the largest resize side parse_perturb accepts


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Re-encoded as JPEG at `quality` (1..100) by OpenCV, then decoded."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV cannot encode the crop as JPEG at quality {quality}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur_kernel(sigma: float) -> int:
    """Gaussian kernel side 2 * ceil(3 sigma) + 1: +-3 sigma, so the Gaussian is never truncated."""
    return 2 * math.ceil(3 * sigma) + 1


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of std `sigma` pixels (0 < sigma <= 10), kernel blur_kernel(sigma), borders
    reflected (OpenCV's BORDER_REFLECT_101)."""
    k = blur_kernel(sigma)
    return cv2.GaussianBlur(image, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)


def resize(image: np.ndarray, side: int) -> np.ndarray:
    """Down to side x side by area averaging (INTER_AREA, as a low-resolution video would hold the
    face), then back up to the crop's size by bicubic interpolation (INTER_CUBIC)."""
    h, w = image.shape[:2]
    if side > min(h, w):
        raise ValueError(f"resize={side}: larger than the {w}x{h} crop")
    small = cv2.resize(image, (int(side), int(side)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Additive Gaussian noise of std `sigma` in units of the [0, 1] intensity range (sigma * 255
    levels), drawn per pixel as float32 standard normals from numpy's default_rng(seed), then
    clipped to 0..255 and rounded. float32: a third of float64's time, the dearest perturbation."""
    noisy = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)  # [H, W, 3]
    noisy *= np.float32(sigma * 255.0)
    noisy += image
    return np.rint(np.clip(noisy, 0, 255, out=noisy), out=noisy).astype(np.uint8)


# name -> (number type, low, high, low excluded, what the severity is)
SEVERITY = {"jpeg": (int, 1, 100, False, "quality"),
            "blur": (float, 0, 10, True, "sigma"),
            "resize": (int, 8, CROP_SIZE, False, "side"),
            "noise": (float, 0, 1, True, "sigma")}


def crop_seed(base_seed: int, key: str) -> int:
    """The noise seed of one crop: a hash of the base seed and the crop's own name (e.g. its path
    under the split), so a crop gets the same noise whatever the order or number of processes."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{key}".encode()).digest()[:8], "little")


def apply(name: str, severity: float, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Perturbation `name` (jpeg, blur, resize, noise) at `severity` on a uint8 RGB [H, W, 3] crop;
    `seed` (crop_seed) matters for noise only. The same arguments give the same bytes. Names and
    severities are checked by parse_perturb (an unknown name here is a KeyError)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a perturbation takes a uint8 [H, W, 3] crop, got {image.dtype} {image.shape}")
    image = np.ascontiguousarray(image)  # OpenCV needs a contiguous array (a permuted tensor is not)
    if name == "noise":
        return noise(image, severity, seed)
    return {"jpeg": jpeg, "blur": blur, "resize": resize}[name](image, severity)


def label(name: str, severity: float) -> str:
    """How a perturbation is written on the command line and in outputs: jpeg=90, noise=0.05."""
    return f"{name}={severity:g}"


def strength(name: str, severity: float) -> float:
    """A number that grows with the damage done: a lower JPEG quality or resize side is stronger,
    a larger blur or noise sigma is stronger (for ordering severities from mild to strong)."""
    return -severity if name in ("jpeg", "resize") else severity


def _severity(token: str, name: str, text: str) -> float:
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
    in the order given (ints for jpeg and resize). An unknown name, a malformed token, a
    severity out of range or given twice is a ValueError of one line naming the token and what
    is allowed."""
    out = []
    for token in tokens:
        name, eq, values = token.partition("=")
        if name not in SEVERITY or not eq or not values:
            raise ValueError(f"{token!r}: a perturbation is NAME=V1,V2,... with NAME one of {', '.join(SEVERITY)}")
        for value in (_severity(token, name, v) for v in values.split(",")):
            if (name, value) in out:
                raise ValueError(f"{token!r}: {label(name, value)} is given twice")
            out.append((name, value))
    return out


# the robustness grid (after the authors' follow-up GenD): six JPEG qualities from none to heavy,
# blur sigma up to 3, resize to 112 and 64, noise up to 0.2 of the intensity range
DEFAULT_TOKENS = ["jpeg=100,80,60,40,20,10", "blur=1,2,3", "resize=112,64", "noise=0.05,0.1,0.2"]
DEFAULT_PERTURB = parse_perturb(DEFAULT_TOKENS)
