"""N processes (torchrun) and the device: rank, device, process group, the global batch in every
process, gradients averaged, a list scored over them."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def device_flag(value: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N of a GPU that is there."""
    n = torch.cuda.device_count()
    if value in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", value) and int(value[5:] or 0) < n:
        return value
    gpus = f"cuda:0 to cuda:{n - 1}" if n else "no CUDA GPU on this machine"
    raise argparse.ArgumentTypeError(f"{value!r} is not a device here: use auto, cpu or cuda:N ({gpus})")


def resolve_device(flag: str, local_rank: int | None = None) -> torch.device:
    """--device as a device (auto: cuda when there is a GPU); under torchrun cuda is GPU LOCAL_RANK."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(flag)
    if device.type == "cuda":
        return torch.device("cuda", local_rank if local_rank is not None else (device.index or 0))
    return device


@dataclass
class Processes:
    """This process's rank among `world` processes (1 without torchrun), and its device."""
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
    """stderr of ranks > 0: errors pass; tqdm, which draws only on a terminal, sees none."""

    def __init__(self, stream):
        self.stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def processes(device_flag: str, quiet: bool = False) -> Iterator[Processes]:
    """This process in torchrun's group (or alone); quiet: ranks > 0 print only errors."""
    rank, world, local_rank = torchrun_env()
    device = resolve_device(device_flag, local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = world > 1 and not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))
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
    """Rank 0 runs the block first (it downloads what is missing), then the others (from the cache)."""
    if procs.distributed and not procs.main:
        dist.barrier()
    yield
    if procs.distributed and procs.main:
        dist.barrier()


def split_sizes(n: int, parts: int) -> list[int]:
    """n items cut into `parts` contiguous shares as evenly as possible, larger shares first."""
    q, r = divmod(n, parts)
    return [q + 1] * r + [q] * (parts - r)


def gather_batch(x: torch.Tensor, shares: list[int]) -> torch.Tensor:
    """Every process's share of the global batch in rank order, with gradients: [sum(shares), ...].
    all_gather's backward sums every process's dL/df_r (world x the one-process gradient), which
    average_gradients divides by world."""
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(shares) - len(x)))  # all_gather needs equal sizes
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented one
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(padded)  # world x [max(shares), ...]
    return torch.cat([p[:n] for p, n in zip(parts, shares)])


def average_gradients(params: list[torch.Tensor], signum: int, procs: Processes) -> int:
    """One all_reduce: gradients averaged over the processes, and any process's stop signal."""
    if not procs.distributed:
        return signum
    signals = torch.zeros(procs.world, device=procs.device)            # [world]
    signals[procs.rank] = signum
    flat = torch.cat([p.grad.flatten() for p in params] + [signals])   # [n_params + world]
    dist.all_reduce(flat)
    grads = flat[:-procs.world] / procs.world
    for p, g in zip(params, grads.split([p.numel() for p in params])):
        p.grad = g.view_as(p)
    return int(flat[-procs.world:].max().item())


def interleaved(fn: Callable[[list], np.ndarray], items: list, procs: Processes,
                errors: tuple[type[Exception], ...] = (ValueError,)) -> np.ndarray:
    """fn(items) over the ranks (r takes r, r + world, ...); an error on one is raised on all."""
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
