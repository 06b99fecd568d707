"""torchrun: this process's rank and device, the process group, and moving results between ranks.
Without torchrun (WORLD_SIZE unset) everything here is a no-op on one process."""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

from util.cli import resolve_device


@dataclass
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) for a plain `python`."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


class ErrorsOnly:
    """stderr of ranks > 0: what they write (errors) passes; tqdm, which draws only on a terminal,
    sees none, so one progress bar (rank 0's) is shown."""

    def __init__(self, stream):
        self.stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def processes(device_flag: str, quiet: bool = False) -> Iterator[Processes]:
    """This process under torchrun (or alone): its rank, the world size and its device (--device;
    with CUDA under torchrun, GPU LOCAL_RANK). Joins the process group (nccl on CUDA, gloo on the
    CPU; an hour's timeout, as rank 0 may validate or load alone while the others wait) and leaves
    it on exit. quiet: ranks > 0 print nothing but errors, and a rank whose peer died says so
    rather than with a collective's traceback."""
    rank, world, local_rank = torchrun_env()
    device = resolve_device(device_flag, local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    rank = dist.get_rank() if world > 1 else 0
    stdout, stderr = sys.stdout, sys.stderr
    if quiet and rank > 0:
        sys.stdout, sys.stderr = open(os.devnull, "w"), ErrorsOnly(sys.stderr)
    try:
        yield Processes(rank, world, device)
    except RuntimeError as e:
        if not quiet or rank == 0:
            raise
        raise ConnectionError(f"rank {rank} stopped, most likely because another rank failed "
                              f"(see its error): {str(e).splitlines()[0][:160]}") from None
    finally:
        if quiet and rank > 0:
            sys.stdout.close()
            sys.stdout, sys.stderr = stdout, stderr
        if created:
            dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first(procs: Processes) -> Iterator[None]:
    """Rank 0 runs the block first (it downloads what is missing), then the others (from the cache),
    rather than every rank downloading the same files at once."""
    if procs.distributed and not procs.main:
        dist.barrier()
    yield
    if procs.distributed and procs.main:
        dist.barrier()


def gather_batch(x: torch.Tensor, shares: list[int]) -> torch.Tensor:
    """Every process's share of the global batch, concatenated in rank order: [sum(shares), ...].

    Differentiable: the backward of all_gather sums the gradients that all processes send to each
    share. Every process computes the same global loss L, so process r's features f_r get
    world x dL/df_r and its encoder gradient is world x (its share of dL/dθ); DDP averages over
    the processes (/ world): sum_r dL/dθ|r = dL/dθ, the single-process gradient. The head (and
    slerp) run on the gathered batch in every process, so each already has the whole dL/dW_head
    and the average of `world` equal copies is that gradient again. No rescaling is needed."""
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(shares) - len(x)))  # all_gather needs equal sizes
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented one
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(padded)  # world x [max(shares), ...]
    return torch.cat([p[:n] for p, n in zip(parts, shares)])


def interleaved(fn: Callable[[list], np.ndarray], items: list, procs: Processes,
                errors: tuple[type[Exception], ...] = (ValueError,)) -> np.ndarray:
    """fn(items) computed over the ranks: rank r takes items r, r + world, ... and every rank gets
    the whole result in order. An error of `errors` on any rank is raised on all of them (the
    first rank's), so that they stay in step."""
    if not procs.distributed:
        return fn(items)
    error = None
    try:
        share = fn(items[procs.rank::procs.world])
    except errors as e:
        share, error = np.zeros(0), e
    parts: list = [None] * procs.world
    dist.all_gather_object(parts, (share, None if error is None else (type(error), str(error))))
    failed = [e for _, e in parts if e]
    if failed:
        kind, message = failed[0]
        raise kind(message)
    out = np.empty(len(items))
    for rank, (p, _) in enumerate(parts):
        out[rank::procs.world] = p
    return out
