"""This project's checkpoint format (best.pt / last.pt): only the trainable tensors, the config,
and the SHA-256 of the frozen rest, so a checkpoint is never applied to other base weights."""
from __future__ import annotations

import io
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from util.files import atomic_write
from util.torch_files import describe, torch_load

FORMAT = "clip-deepfake/1"
CHECKPOINT_FIX = ("write it again by re-running training (train.py), or pass another checkpoint "
                  "(runs/<name>/best.pt or last.pt)")


def base_sha256(detector: nn.Module, exclude: Iterable[str]) -> str:
    """SHA-256 over the names and fp32 values of every tensor not in `exclude`: the frozen base
    weights a checkpoint of the trainable tensors must be applied to."""
    exclude, h = set(exclude), hashlib.sha256()
    for name, tensor in sorted(detector.state_dict().items()):
        if name not in exclude:
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, detector: nn.Module, config: dict,
                    frozen_sha256: str | None = None, **extra) -> None:
    """Only the trainable tensors + config + SHA-256 of the frozen rest (under 1 MB for ViT-L/14
    LN-tuning), written atomically. `config` needs `clip` and `normalize`; plain types only, so the
    file loads with weights_only=True. `frozen_sha256`: that hash when the caller has it (a training
    run's frozen weights never change; hashing ViT-L/14's takes seconds). `extra` (optimizer state,
    step, ...) is stored alongside."""
    trainable = {n: p.detach().cpu().clone() for n, p in detector.named_parameters() if p.requires_grad}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": dict(config),
                "base_sha256": frozen_sha256 or base_sha256(detector, trainable),
                "state_dict": trainable, **extra}, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getbuffer())  # no copy: with --tuning full the file is the whole tower


def load_checkpoint(path: str | os.PathLike) -> dict:
    """This project's checkpoint (best.pt / last.pt); weights_only=True, so nothing in the file can run code."""
    ckpt = torch_load(path, "not a checkpoint of this project", CHECKPOINT_FIX, weights_only=True)
    return checked_checkpoint(ckpt, path)


def checked_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = "the authors' Lightning model.ckpt" if isinstance(ckpt, dict) and "pytorch-lightning_version" in ckpt \
            else describe(ckpt)
        raise ValueError(f"{path} is not a checkpoint of this project (format {FORMAT!r}): it holds {found}; "
                         f"{CHECKPOINT_FIX}")
    parts = {"state_dict": dict, "config": dict, "base_sha256": str}
    bad = next((k for k, kind in parts.items() if not isinstance(ckpt.get(k), kind)), None)
    if bad is None and "clip" not in ckpt["config"]:
        bad = "config['clip']"
    if bad is None and not all(isinstance(t, torch.Tensor) for t in ckpt["state_dict"].values()):
        bad = "state_dict"
    if bad:
        raise ValueError(f"{path} is a damaged checkpoint of this project: its {bad} is missing or malformed; "
                         f"{CHECKPOINT_FIX}")
    return ckpt


def apply_checkpoint(detector: nn.Module, ckpt: dict, clip: str = "the given CLIP weights") -> None:
    """Loads the trainable tensors after checking the frozen rest is what they were trained on."""
    unknown = set(ckpt["state_dict"]) - set(detector.state_dict())
    if unknown:
        raise ValueError(f"checkpoint tensors {sorted(unknown)[:3]} do not exist in the model built from {clip}")
    found = base_sha256(detector, ckpt["state_dict"])
    if found != ckpt["base_sha256"]:
        raise ValueError(f"checkpoint was trained on CLIP weights with SHA-256 {ckpt['base_sha256'][:16]}..., "
                         f"but {clip} has {found[:16]}...: pass the CLIP weights it was trained from (--clip)")
    detector.load_state_dict(ckpt["state_dict"], strict=False)


def read_if_ours(path: str | os.PathLike) -> dict | None:
    """The file as this project's checkpoint format, or None when it is something else (the authors'
    pickled config objects, damaged bytes, ...). mmap: the authors' 1.2 GB is not read to find out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None
