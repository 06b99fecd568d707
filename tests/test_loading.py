"""util/loading.py: every process's share of the single-process global batches, and the loader's
empty share."""
import math
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import data
from util.layouts import load_videos
from util.loading import GlobalBatchSampler, seed_worker, split_sizes


def epoch_order(n: int, seed: int = 5, epoch: int = 1) -> DistributedSampler:
    """The single-process order of an epoch over n items (data.make_sampler's, without images)."""
    sampler = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def test_global_batches_are_the_single_process_batches_cut_into_shares():
    one = epoch_order(50)
    n, order = len(one), list(one)
    # 2 processes: each global batch is the single-process batch, cut into contiguous shares
    ranks = [GlobalBatchSampler(one, 8, world=2, rank=r) for r in range(2)]
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == len(ranks[0]) == math.ceil(n / 8)
    assert all(x + y == order[8 * k:8 * (k + 1)] for k, (x, y) in enumerate(zip(a, b)))
    a, b = sum(a, []), sum(b, [])
    assert sorted(a + b) == list(range(n)) and len(a) == len(b) == n // 2
    # uneven shares (7 = 4 + 3) and a last batch of one image: the second process gets none
    assert n % 7 == 1 and split_sizes(7, 2) == [4, 3] and split_sizes(1, 2) == [1, 0]
    a, b = (list(GlobalBatchSampler(one, 7, world=2, rank=r)) for r in range(2))
    assert [len(x) for x in a] == [4] * 7 + [1] and [len(y) for y in b] == [3] * 7 + [0]
    assert [x + y for x, y in zip(a, b)] == [order[7 * k:7 * (k + 1)] for k in range(8)]
    assert GlobalBatchSampler(one, 7, world=2).shares(7) == [1, 0]
    # resuming: the first 2 global batches skipped without being listed again
    skip = GlobalBatchSampler(one, 8, skip=2)
    assert sum(list(skip), []) == order[16:] and len(skip) == len(list(skip)) == math.ceil(n / 8) - 2
    skip2 = [GlobalBatchSampler(one, 7, world=2, rank=r, skip=3) for r in range(2)]
    assert [x + y for x, y in zip(*skip2)] == [order[7 * k:7 * (k + 1)] for k in range(3, 8)]


def test_a_balanced_order_is_cut_by_the_same_rule():
    bal = data.BalancedSampler(torch.tensor([0] * 10 + [1] * 40), seed=0)
    bal.set_epoch(0)
    drawn = list(bal)
    a, b = (list(GlobalBatchSampler(bal, 8, world=2, rank=r)) for r in range(2))
    assert [x + y for x, y in zip(a, b)] == [drawn[8 * k:8 * (k + 1)] for k in range(len(a))]  # the same rule


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_tree) -> Path:
    return make_tree(tmp_path_factory.mktemp("loading"), size=64, frames=(0, 2, 9, 10, 18))


def test_loader_gives_an_empty_share_the_image_shape(tree):
    ds = data.FrameDataset(load_videos(tree), data.eval_transform(32))
    order = data.make_sampler(ds, seed=0)
    n = len(ds)  # 50: with batch 7 the last global batch is one image, none for the second process
    batches = GlobalBatchSampler(order, 7, world=2, rank=1, skip=n // 7)
    (images, labels, videos), = list(data.make_loader(ds, batch_sampler=batches, image_size=32))
    assert images.shape == (0, 3, 32, 32) and labels.shape == videos.shape == (0,)
    assert labels.dtype == torch.long


def test_a_worker_seeds_python_and_numpy_from_torch_and_ignores_stop_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        torch.manual_seed(2**32 + 7)  # a worker's seed: python and numpy take it modulo 2**32
        seed_worker(0)
        drawn = random.random(), np.random.rand()
        random.seed(7)
        np.random.seed(7)
        assert drawn == (random.random(), np.random.rand())
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
