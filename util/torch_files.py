"""Reading torch files with one clear error: what kind of file it is, checked on its first bytes and
zip index before torch reads it, and every failure of torch.load as one ValueError naming the file,
the fault and what to do."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a function which runs code (see util.authors.RestrictedUnpickler)."""


def check_torch_file(path: str | os.PathLike, negation: str, fix: str) -> str:
    """What kind of file torch is about to read: "torch" (torch.save: a zip, or a pickle before PyTorch
    1.6) or "torchscript" (torch.jit.save: OpenAI's archives). Checked on its first bytes and zip index,
    without reading the tensors: FileNotFoundError when missing; otherwise one ValueError naming the
    file, the fault (folder, empty, cut short, not a torch file: `negation`) and `fix`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; {fix}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a file; {fix}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is an empty file (0 bytes); {fix}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        try:  # the index sits at the end of a zip: a file cut short has none
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError):
            raise ValueError(f"{path} is truncated or corrupt (not a complete zip/torch file: {size:,} bytes and "
                             f"no zip index at the end, as after an interrupted download or copy); {fix}") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise ValueError(f"{path} is {negation}: a zip file, but not one torch wrote (no data.pkl in it); {fix}")
        return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else "torch"
    if head[:1] == b"\x80":  # a pickle: torch.save's format before PyTorch 1.6
        return "torch"
    looks = ", a text file" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else ""
    raise ValueError(f"{path} is {negation}: not a torch file at all (it starts with {head!r}{looks}); {fix}")


def torch_load(path: str | os.PathLike, negation: str, fix: str, **kwargs) -> Any:
    """check_torch_file, then torch.load to the CPU: every failure is one ValueError. A TorchScript
    archive is refused: OpenAI's CLIP weights are the only ones this project reads (read_state_dict)."""
    if check_torch_file(path, negation, fix) == "torchscript":
        raise ValueError(f"{path} is {negation}: a TorchScript archive (OpenAI's CLIP weights, or the authors' "
                         f"model.torchscript?); {fix}")
    return load_checked(path, negation, fix, **kwargs)




def load_checked(path: str | os.PathLike, negation: str, fix: str, **kwargs) -> Any:
    """torch.load of a file check_torch_file found to be torch.save's: every failure is one ValueError."""
    try:
        return torch.load(path, map_location="cpu", **kwargs)
    except RefusedPickle as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # torch's many ways of saying the bytes are damaged: EOFError, RuntimeError, OSError 22
        if "Unsupported global" in str(e):  # weights_only=True met a pickled object
            reason = next(line for line in str(e).splitlines() if "Unsupported global" in line).strip()
            raise ValueError(f"{path} is {negation}: it holds pickled Python objects besides tensors "
                             f"({reason}); {fix}") from None
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {first_line(e)}); {fix}") from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def describe(obj: Any) -> str:
    """What a loaded file holds, in a few words, for error messages."""
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:4]) + (", ..." if len(obj) > 4 else "")
        return f"a dict with keys {keys}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"
