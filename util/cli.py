"""Command-line pieces the scripts share: number and device flags, checked before any work."""
from __future__ import annotations

import argparse
from typing import Callable

import torch


def at_least(kind: type, minimum: float, above: bool = False) -> Callable[[str], float]:
    """argparse type: a `kind` number >= minimum (> minimum when `above`)."""
    def check(value):
        number = kind(value)  # ValueError -> argparse's "invalid int value"
        if number < minimum or above and number == minimum:
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum}, got {value}")
        return number
    check.__name__ = kind.__name__
    return check


def device_flag(value: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N of a GPU that is there."""
    if value in ("auto", "cpu"):
        return value
    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: no CUDA GPU on this machine; use --device cpu (or auto)")
    n = torch.cuda.device_count()
    if (device.index or 0) >= n:
        raise argparse.ArgumentTypeError(f"{value}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    return value


def resolve_device(flag: str, local_rank: int | None = None) -> torch.device:
    """--device's value as a device: auto = cuda when there is a GPU, else cpu. Under torchrun
    (`local_rank` given) a CUDA device is GPU LOCAL_RANK, whatever index the flag named."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(flag)
    if device.type == "cuda":
        index = local_rank if local_rank is not None else (device.index or 0)
        return torch.device("cuda", index)
    return device
