"""Scoring a split's crops under perturbations (util.perturb): every crop decoded once, every
(perturbation, severity) applied to it and scored, chunk by chunk so that memory holds one chunk
of crops at a time, the crops shared over torchrun's ranks as util.distributed.interleaved shares
them.

    scores = perturbed_scores(score, read, crops, keys, [("jpeg", 50), ("blur", 2.0)], procs)
    # scores[j, i]: score([perturb.apply(*grid[j], read(crops[i]), crop_seed(seed, keys[i]))])
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from util import perturb
from util.distributed import Processes, interleaved
from util.layouts import DataError

CHUNK = 512  # crops decoded at a time (over all ranks): ~100 MB of 256x256 crops, as many again perturbed


def perturbed_scores(score: Callable[[list[np.ndarray]], np.ndarray], read: Callable[[Path], np.ndarray],
                     crops: list[Path], keys: list[str], grid: list[tuple[str, float]], procs: Processes,
                     seed: int = 0, chunk: int = CHUNK, threads: int = 1) -> np.ndarray:
    """The score of every crop under every (name, severity) of `grid`: float64 [len(grid), len(crops)].

    score: perturbed uint8 RGB [H, W, 3] crops -> one score each (data.predict on the arrays);
    read: a crop file -> uint8 RGB [H, W, 3] (DataError when unreadable); keys: each crop's name
    for its noise seed (perturb.crop_seed(seed, key)), e.g. its path under the split, so that a
    crop gets the same noise whatever the chunk, rank or number of ranks. `threads` decode and
    perturb a chunk at once (OpenCV and numpy release the GIL). An unreadable crop or a
    perturbation the crop cannot take (a resize larger than it) stops every rank with its error."""
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
                    seeds = [perturb.crop_seed(seed, key) for _, key in share]
                    return score(list(pool.map(lambda image, s: perturb.apply(name, severity, image, s),
                                               images, seeds)))
                out[j, start:start + len(items)] = interleaved(perturbed, items, procs, errors)
    return out
