"""Where the weights come from: files fetched once into a cache (SHA-256-checked, never half-written),
torch files read with one error naming the file, and OpenAI's CLIP weights by model name or path."""
import hashlib
import os
import pickle
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)  # OpenAI's files need it

# The path segment of each URL is the file's SHA-256: it doubles as the checksum.
OPENAI_URL = "https://openaipublic.azureedge.net/clip/models"
MODELS = {
    "ViT-B/32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
BPE_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
AUTHORS_URL = "https://huggingface.co/yermandy/deepfake-detection/resolve/main/model.ckpt"
OPENAI_FIX = f"pass OpenAI's CLIP weights: one of {list(MODELS)} (downloaded) or the path of its .pt file"


class DownloadError(OSError):
    """Offline, cut off, or the wrong bytes: an OSError, like every other failure from outside."""


class RefusedPickle(pickle.UnpicklingError):
    """A pickle naming a function that runs code (util.checkpoint.RestrictedUnpickler refuses it)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, root: str | os.PathLike | None = None, sha256: str | None = None) -> Path:
    """Fetch `url` into `root` (default ~/.cache/clip) once, again if its SHA-256 is wrong; renamed into
    place only once complete and checked. $CLIP_MIRROR, a URL serving the files by name
    (<mirror>/ViT-L-14.pt, <mirror>/model.ckpt), replaces the host."""
    root = Path(root or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip")
    root.mkdir(parents=True, exist_ok=True)
    target = root / url.rsplit("/", 1)[-1]
    if target.is_file():
        if sha256 is None or sha256_of(target) == sha256:
            return target
        print(f"{target} has the wrong SHA-256: downloading it again", file=sys.stderr)
    if mirror := os.environ.get("CLIP_MIRROR"):
        url = f"{mirror.rstrip('/')}/{target.name}"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if total is not None and bar.n != total:
            raise DownloadError(f"connection closed after {bar.n} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(f"SHA-256 {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, target)
    except Exception as e:  # URLError, HTTPException, a full disk, ...: nothing was saved
        raise DownloadError(f"could not download {url} ({getattr(e, 'reason', None) or e}); download it by "
                            f"hand and pass the file's path instead, or put it at {target}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ---------------------------------------------------------------- reading torch files

def reason(e: BaseException) -> str:
    """An exception in one line (torch's weights_only refusals take ten; the one that matters says
    "Unsupported"), up to its first full stop."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    line = next((line for line in lines if "Unsupported" in line), lines[0])
    return f"{type(e).__name__}: {line.split('. ')[0]}"[:200]


def describe(obj: Any) -> str:
    """What a loaded file holds, for error messages: its type, and a dict's first keys."""
    keys = f" with keys {', '.join(map(repr, list(obj)[:4]))}" if isinstance(obj, dict) and obj else ""
    return f"a {type(obj).__name__}{keys}"


def read_torch_file(path: str | os.PathLike, what: str, fix: str, **kwargs) -> Any:
    """torch.load to the CPU. FileNotFoundError when missing; anything else torch cannot read as
    `what` (a folder, cut short, not a torch file, a refused pickle) is one ValueError naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; {fix}")
    try:
        return torch.load(path, map_location="cpu", **kwargs)
    except RefusedPickle as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # EOFError, UnpicklingError, a zip without its index, IsADirectoryError, ...
        raise ValueError(f"{path} is not {what}, or is cut short ({reason(e)}); {fix}") from None


def read_clip_weights(name_or_path: str | os.PathLike, download_root: str | os.PathLike | None = None,
                      text: bool = True) -> dict:
    """OpenAI's CLIP weights by model name (downloaded) or path -> {name: tensor}."""
    path = Path(name_or_path)
    if name_or_path in MODELS:
        sha = MODELS[name_or_path].split("/")[0]
        path = download(f"{OPENAI_URL}/{MODELS[name_or_path]}", download_root, sha256=sha)
    try:  # OpenAI's files are TorchScript archives: code and tensors, no pickled Python
        sd = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except (RuntimeError, ValueError):  # not one: a plain state dict, or one line saying what is wrong
        sd = read_torch_file(path, "CLIP weights", OPENAI_FIX, weights_only=True)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} holds {describe(sd)}, not a state dict of tensors; {OPENAI_FIX}")
    need = ["visual.class_embedding", "token_embedding.weight"] if text else ["visual.class_embedding"]
    missing = [k for k in need if k not in sd]  # a ViT CLIP's image tower, and its text tower when `text`
    if missing:
        found = "a ResNet CLIP" if "visual.layer1.0.conv1.weight" in sd else "the state dict of another model"
        raise ValueError(f"{path} is {found} (no {missing[0]}); {OPENAI_FIX}")
    return sd
