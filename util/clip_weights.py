"""OpenAI's CLIP weight files, by model name (downloaded and checked) or path -> {name: tensor}:
their TorchScript archives (tensors and TorchScript code, no pickled Python) or a plain state dict."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from util.checkpoint import FORMAT
from util.download import MODELS, OPENAI_URL, download
from util.torch_files import check_torch_file, describe, first_line, load_checked

OPENAI_FIX = ("pass OpenAI's CLIP weights: a model name such as ViT-L/14 (downloaded and checked) or the path of "
              "its .pt file (download it again if it was cut short)")


def read_state_dict(path: str | os.PathLike) -> dict:
    """An OpenAI TorchScript archive or a plain state dict file -> {name: tensor}."""
    negation = "not CLIP weights"
    if check_torch_file(path, negation, OPENAI_FIX) == "torchscript":
        # OpenAI's files are TorchScript archives: TorchScript code and tensors, no pickled Python.
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as e:
            raise ValueError(f"{path} is truncated or corrupt (a TorchScript archive torch cannot read: "
                             f"{first_line(e)}); {OPENAI_FIX}") from None
    sd = load_checked(path, negation, OPENAI_FIX, weights_only=True)
    if isinstance(sd, dict) and sd.get("format") == FORMAT:
        raise ValueError(f"{path} is a checkpoint of this project (its trained LayerNorms and head), not CLIP "
                         f"weights: pass it as the checkpoint, and the CLIP weights it was trained from as the CLIP")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} holds {describe(sd)}, not a state dict of tensors; {OPENAI_FIX}")
    return sd


def read_clip_weights(name_or_path: str | os.PathLike, download_root: str | os.PathLike | None = None,
                      text: bool = True) -> dict:
    """OpenAI's CLIP weights by model name (downloaded) or path, checked to hold a ViT CLIP: the image
    tower, and the text tower when `text`."""
    if name_or_path in MODELS:
        sha, _ = MODELS[name_or_path].split("/")
        path = download(f"{OPENAI_URL}/{MODELS[name_or_path]}", download_root, sha256=sha)
    elif os.path.exists(name_or_path) or Path(name_or_path).suffix in (".pt", ".pth", ".bin", ".ckpt"):
        path = Path(name_or_path)  # meant as a file: read_state_dict says what is wrong if it is missing or damaged
    else:
        raise ValueError(f"unknown CLIP model {name_or_path!r}: expected one of {list(MODELS)} or a path to a file")
    sd = read_state_dict(path)
    if "visual.layer1.0.conv1.weight" in sd:
        raise ValueError(f"{path} is a ResNet CLIP: only ViT CLIP models are built here; {OPENAI_FIX}")
    need = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding"]
    need += ["token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"] if text else []
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"{path} is a state dict of another model: missing {missing[0]}; {OPENAI_FIX}")
    return sd
