"""Batches for N processes: every process loads its share of the single-process global batch, with
reproducible loader workers and an empty share shaped like the others."""
from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler, default_collate

from util.signals import ignore_stop_signals


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of n items cut into `parts` contiguous shares as evenly as possible, larger shares
    first (np.array_split's sizes); a share is empty when n < parts."""
    q, r = divmod(n, parts)
    return [q + 1] * r + [q] * (parts - r)


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's share of every global batch of an epoch.

    The epoch's order (`sampler`, over the whole dataset) is cut into global batches of
    `batch_size`, the last one partial, exactly as a single process cuts it; process `rank` of
    `world` takes its contiguous share of each (split_sizes: the last batch may leave a process
    fewer items, or none). So N processes see the single-process batches, whatever N. The first
    `skip` global batches are left out (resuming in the middle of an epoch) without being loaded."""

    def __init__(self, sampler: Sampler[int], batch_size: int, world: int = 1, rank: int = 0, skip: int = 0):
        self.sampler, self.batch_size, self.world, self.rank, self.skip = sampler, batch_size, world, rank, skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def shares(self, k: int) -> list[int]:
        """Every process's share size of global batch k (counting from the start of the epoch)."""
        return split_sizes(min(self.batch_size, len(self.sampler) - k * self.batch_size), self.world)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)  # the whole epoch: indices only, cheap
        for k in range(self.skip, self.skip + len(self)):
            batch = order[k * self.batch_size:(k + 1) * self.batch_size]
            sizes = self.shares(k)
            start = sum(sizes[:self.rank])
            yield batch[start:start + sizes[self.rank]]

    def __len__(self) -> int:
        return max(math.ceil(len(self.sampler) / self.batch_size) - self.skip, 0)


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: the worker ignores stop signals (the main process decides how to stop), and
    python and numpy get torch's seed of the worker (base seed + id), so that any transform that
    uses them is reproducible too."""
    ignore_stop_signals()
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def collate(batch: list, image_size: int = 224):
    """default_collate, and for an empty share of a global batch (GlobalBatchSampler) empty
    tensors of the right shapes, so that the process still takes part in the step."""
    if batch:
        return default_collate(batch)
    return torch.empty(0, 3, image_size, image_size), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
