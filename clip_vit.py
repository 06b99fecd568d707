"""CLIP in plain PyTorch, OpenAI's weights, and the deepfake detector built on its image tower.

Read top to bottom (the order of OpenAI's own model.py, then clip.py, then simple_tokenizer.py):
  1. the model: OpenAI's modules and parameter names, so their checkpoints load with strict=True,
  2. the detector (ln_post class token -> L2 normalise -> Linear(width, 2)) and LN-tuning,
  3. build_model / build_visual / tiny models: every size inferred from the tensors,
  4. files and downloads: every file read is checked first (one ValueError naming the file, the
     fault and what to do), cached SHA-256-verified downloads, load(), image_transform(),
  5. the byte-level BPE tokenizer,
  6. this project's checkpoints (the trainable tensors + config + hash of the frozen rest),
  7. Hugging Face names and the authors' Lightning model.ckpt, read for what it says without
     importing or running anything of theirs; load_detector(), which takes any of them.

    >>> model = load("ViT-L/14")                       # downloads ~890 MB once into ~/.cache/clip
    >>> detector = load_detector("authors")            # the paper's released weights
    >>> p_fake = detector(images).softmax(-1)[:, 1]    # images: [N, 3, 224, 224], image_transform()
"""
from __future__ import annotations

import _compat_pickle
import gzip
import hashlib
import html
import http.client
import io
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import ftfy
import regex
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from layouts import atomic_write

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

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
MIRROR_ENV = "CLIP_MIRROR"  # a URL serving the files by name: <mirror>/ViT-L-14.pt, <mirror>/model.ckpt


# ==============================================================================================
# 1. The model
# ==============================================================================================

class MLP(nn.Module):
    """c_fc -> QuickGELU -> c_proj, where QuickGELU(x) = x * sigmoid(1.702 x) is what OpenAI trained
    with (not the exact GELU). Written as silu(1.702 x) / 1.702 with both constants folded into the
    GEMMs (addmm's alpha and beta cost nothing): one elementwise pass instead of three."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape                                                 # [N, 257, 1024]
        z = torch.addmm(self.c_fc.bias, x.reshape(-1, shape[-1]), self.c_fc.weight.t(),
                        beta=1.702, alpha=1.702)                        # 1.702 (x W + b): [N*257, 4096]
        h = F.silu(z)                                                   # 1.702 x sigmoid(1.702 x)
        out = torch.addmm(self.c_proj.bias, h, self.c_proj.weight.t(), alpha=1 / 1.702)  # [N*257, 1024]
        return out.view(*shape[:-1], -1)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, run through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, first_only: bool = False) -> torch.Tensor:
        """first_only: only the first token (the class token) queries; its row alone is returned."""
        n, length, width = x.shape                                         # [N, 257, 1024]
        if first_only:
            q = F.linear(x[:, :1], self.in_proj_weight[:width], self.in_proj_bias[:width])  # [N, 1, 1024]
            kv = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:])        # [N, 257, 2048]
            q = q.view(n, 1, self.heads, -1).transpose(1, 2)                                # [N, 16, 1, 64]
            k, v = kv.view(n, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4)             # 2 x [N, 16, 257, 64]
        else:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)                       # [N, 257, 3072]
            q, k, v = qkv.view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)         # 3 x [N, 16, 257, 64]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)      # [N, 16, 257, 64], strided views: no copies
        return self.out_proj(x.transpose(1, 2).reshape(n, q.shape[2], width))  # [N, 257, 1024]


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, width * 4)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """first_only: compute only the class token's output (all tokens still serve as keys)."""
        x = (x[:, :1] if first_only else x) + self.attn(self.ln_1(x), self.causal, first_only)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, causal) for _ in range(layers)])
        self.grad_checkpointing = False  # recompute each block in the backward: less memory, ~1.3x time

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """first_only: the last block computes only the first token's output, [N, 1, width]."""
        for i, block in enumerate(self.resblocks):
            last = first_only and i == self.layers - 1
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, last, use_reentrant=False)
            else:
                x = block(x, last)
        return x

    def init_weights(self) -> None:
        """OpenAI's initialisation (used by the tiny random models in tests and smoke runs)."""
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int | None):
        super().__init__()
        self.input_resolution, self.width = input_resolution, width
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        # The detector never uses proj; a Hugging Face CLIPVisionModel has none.
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post of the class token: the 1024-d feature the detector is built on."""
        x = self.conv1(x.to(self.conv1.weight.dtype))                   # [N, 1024, 16, 16]
        x = x.flatten(2).transpose(1, 2)                                # [N, 256, 1024]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, 1024]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, 257, 1024]
        # Only the class token leaves the tower, so the last block computes its row alone.
        x = self.transformer(self.ln_pre(x), first_only=True)           # [N, 1, 1024]
        return self.ln_post(x[:, 0])                                    # [N, 1024]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)                                    # [N, 1024]
        return x @ self.proj if self.proj is not None else x            # [N, 768]


class CLIP(nn.Module):
    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(transformer_width ** -0.5 * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.visual.transformer.init_weights()
        self.transformer.init_weights()

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)                                       # [N, 768]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding      # [N, 77, 768]
        x = self.ln_final(self.transformer(x))                          # [N, 77, 768]
        eot = text.argmax(dim=-1)  # the end-of-text token has the largest id in the vocabulary
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection  # [N, 768]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()  # [N_img, N_txt]
        return logits_per_image, logits_per_image.t()


# ==============================================================================================
# 2. The detector and LN-tuning
# ==============================================================================================

class DeepfakeDetector(nn.Module):
    """CLIP image tower -> ln_post(class token) -> L2 normalise -> Linear(width, 2). Class 1 = fake.

    normalize=False skips the L2 normalisation: the head then reads the raw ln_post features
    (the paper's "LN-tuning" row without "+ L2 norm"; the authors' `linear` head)."""

    def __init__(self, visual: VisionTransformer, normalize: bool = True):
        super().__init__()
        self.visual = visual
        self.normalize = normalize
        self.head = nn.Linear(visual.width, 2)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.visual.forward_features(images)                        # [N, 1024]
        return F.normalize(x, dim=-1) if self.normalize else x          # on the unit hypersphere

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))                         # [N, 2]


TUNING = ("ln", "linear-probe", "full")


def set_trainable(detector: DeepfakeDetector, tuning: str) -> int:
    """Which tensors train: "ln" = every LayerNorm's weight and bias + head (the paper), "linear-probe"
    = head only, "full" = everything. Returns the number of trainable parameters."""
    if tuning not in TUNING:
        raise ValueError(f"tuning must be one of {TUNING}, got {tuning!r}")
    detector.requires_grad_(tuning == "full")
    if detector.visual.proj is not None:  # unused by the detector: no gradient reaches it (DDP would wait for one)
        detector.visual.proj.requires_grad_(False)
    if tuning == "ln":
        for module in detector.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
    detector.head.requires_grad_(True)
    return sum(p.numel() for p in detector.parameters() if p.requires_grad)


def enable_ln_tuning(detector: DeepfakeDetector) -> int:
    return set_trainable(detector, "ln")


def build_detector(clip: str, normalize: bool = True, device: str | torch.device = "cpu",
                   download_root: str | os.PathLike | None = None) -> DeepfakeDetector:
    """`clip`: a model name ("ViT-L/14", downloaded), a path to OpenAI weights, or "tiny"."""
    if clip == "tiny":
        visual = tiny_visual()
    else:
        visual = build_visual(read_clip_weights(clip, download_root, text=False))
    return DeepfakeDetector(visual, normalize).to(device)


# ==============================================================================================
# 3. Sizes from tensors
# ==============================================================================================

def _count_blocks(state_dict: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def _prepare(state_dict: dict) -> dict:
    """fp32 floats; drops the non-parameter entries that OpenAI's TorchScript archives carry."""
    drop = {"input_resolution", "context_length", "vocab_size"}
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items() if k not in drop}


def _vision_sizes(sd: dict) -> dict:
    if "visual.conv1.weight" not in sd:
        found = "ResNet CLIP" if "visual.layer1.0.conv1.weight" in sd else f"keys like {list(sd)[:3]}"
        raise ValueError(f"expected a CLIP ViT state dict with 'visual.conv1.weight', found {found}")
    width, _, patch, _ = sd["visual.conv1.weight"].shape               # [1024, 3, 14, 14]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return dict(input_resolution=patch * grid, patch_size=patch, width=width,
                layers=_count_blocks(sd, "visual.transformer.resblocks."), heads=width // 64)


def _build(module_fn, sd: dict) -> nn.Module:
    """Builds on the meta device (no random init of 300M weights) and adopts the given tensors."""
    with torch.device("meta"):
        module = module_fn()
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def build_model(state_dict: dict) -> CLIP:
    """The whole CLIP from an OpenAI state dict (ViT-B/32, B/16, L/14, L/14@336px), sizes inferred.

    The returned model owns the given tensors (fp32 ones are used as they are, not copied)."""
    sd = _prepare(state_dict)
    v = _vision_sizes(sd)
    text_width = sd["ln_final.weight"].shape[0]
    sizes = dict(embed_dim=sd["text_projection"].shape[1], image_resolution=v["input_resolution"],
                 vision_layers=v["layers"], vision_width=v["width"], vision_patch_size=v["patch_size"],
                 context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
                 transformer_width=text_width, transformer_heads=text_width // 64,
                 transformer_layers=_count_blocks(sd, "transformer.resblocks."))
    return _build(lambda: CLIP(**sizes), sd)


def build_visual(state_dict: dict) -> VisionTransformer:
    """The image tower alone from the `visual.*` keys of a CLIP state dict (`visual.proj` optional)."""
    sd = {k[len("visual."):]: v for k, v in _prepare(state_dict).items() if k.startswith("visual.")}
    sizes = _vision_sizes({"visual." + k: v for k, v in sd.items()})
    output_dim = sd["proj"].shape[1] if "proj" in sd else None
    return _build(lambda: VisionTransformer(**sizes, output_dim=output_dim), sd)


def tiny_visual(width: int = 64, layers: int = 2, heads: int = 1, patch_size: int = 14,
                input_resolution: int = 224, output_dim: int | None = None, seed: int = 0) -> VisionTransformer:
    """A small randomly initialised image tower (head width 64) for tests and CPU smoke runs.
    The same seed always gives the same weights, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = VisionTransformer(input_resolution, patch_size, width, layers, heads, output_dim)
        visual.transformer.init_weights()
    return visual


def tiny_clip(seed: int = 0, vocab_size: int = 49408) -> CLIP:
    """A small randomly initialised CLIP, text tower included (zero-shot tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=14,
                    context_length=77, vocab_size=vocab_size, transformer_width=64, transformer_heads=1,
                    transformer_layers=2)


# ==============================================================================================
# 4. Files and downloads
# ==============================================================================================

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
    return _load_checked(path, negation, fix, **kwargs)


def _load_checked(path: str | os.PathLike, negation: str, fix: str, **kwargs) -> Any:
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
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {_first_line(e)}); {fix}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _describe(obj: Any) -> str:
    """What a loaded file holds, in a few words, for error messages."""
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:4]) + (", ..." if len(obj) > 4 else "")
        return f"a dict with keys {keys}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


class DownloadError(RuntimeError):
    pass


def cache_dir(download_root: str | os.PathLike | None = None) -> Path:
    if download_root is not None:
        return Path(download_root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, root: str | os.PathLike | None = None, sha256: str | None = None) -> Path:
    """Fetch `url` into the cache once; a cached file with a wrong SHA-256 is fetched again.

    Bytes go to a temporary file that is renamed only after the hash matched, so an interrupted
    or corrupt download never leaves a file that looks finished. $CLIP_MIRROR replaces the host:
    the file is then fetched from <mirror>/<file name>."""
    root = cache_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / url.rsplit("/", 1)[-1]
    if target.is_file():
        if sha256 is None or _sha256(target) == sha256:
            return target
        print(f"{target} has the wrong SHA-256: downloading it again", file=sys.stderr)
    if mirror := os.environ.get(MIRROR_ENV):
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
            raise OSError(f"connection closed after {bar.n} of {total} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}: nothing was saved")
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {url} ({reason}); download it by hand and pass the file's "
                            f"path instead, or put it at {target}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


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
                             f"{_first_line(e)}); {OPENAI_FIX}") from None
    sd = _load_checked(path, negation, OPENAI_FIX, weights_only=True)
    if isinstance(sd, dict) and sd.get("format") == FORMAT:
        raise ValueError(f"{path} is a checkpoint of this project (its trained LayerNorms and head), not CLIP "
                         f"weights: pass it as the checkpoint, and the CLIP weights it was trained from as the CLIP")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} holds {_describe(sd)}, not a state dict of tensors; {OPENAI_FIX}")
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


def load(name_or_path: str, device: str | torch.device = "cpu", download_root: str | os.PathLike | None = None) -> CLIP:
    """CLIP by name (downloaded and cached) or from a local OpenAI archive / state-dict file, in fp32."""
    return build_model(read_clip_weights(name_or_path, download_root)).to(device).eval()


def image_transform(size: int = 224):
    """CLIP's preprocessing: shortest side to `size` (bicubic), centre crop, scale to [0, 1],
    normalise. Takes a PIL image, an HWC uint8 array or a CHW uint8 tensor."""
    from torchvision.transforms import v2  # imported here: the model itself does not need torchvision
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


# ==============================================================================================
# 5. The tokenizer: byte-level BPE over OpenAI's vocabulary
# ==============================================================================================

@lru_cache()
def _byte_alphabet() -> dict[int, str]:
    """Maps each of the 256 bytes to a printable unicode character, so BPE never sees whitespace
    or control bytes: printable Latin-1 bytes stand for themselves, the rest for chr(256 + n)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in keep)
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """OpenAI's CLIP tokenizer: cleaned, lower-cased text, split by a regex, each piece BPE-merged.
    Vocabulary: 256 byte symbols, the same with an end-of-word mark, the merges, two specials."""

    PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                            regex.IGNORECASE)
    N_MERGES = 49152 - 256 - 2  # OpenAI uses the first 48,894 merges of the file: vocabulary of 49,408

    def __init__(self, bpe_path: str | os.PathLike | None = None):
        path = bpe_path or download(BPE_URL, sha256=BPE_SHA256)
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1:self.N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        symbols = list(_byte_alphabet().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_decoder = {c: b for b, c in _byte_alphabet().items()}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self._cache = {"<|startoftext|>": ["<|startoftext|>"], "<|endoftext|>": ["<|endoftext|>"]}

    def bpe(self, piece: str) -> list[str]:
        """Repeatedly merges the adjacent pair with the lowest merge rank."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        alphabet = _byte_alphabet()
        ids = []
        for piece in self.PATTERN.findall(_clean(text)):
            piece = "".join(alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(piece))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False,
             tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """Texts -> LongTensor [N, context_length]: <|startoftext|> ids <|endoftext|>, zero padded."""
    tokenizer = tokenizer or Tokenizer()
    texts = [texts] if isinstance(texts, str) else texts
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [tokenizer.sot, *tokenizer.encode(text), tokenizer.eot]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {i} has {len(ids)} tokens, more than the context length {context_length}; "
                                 f"shorten it or pass truncate=True")
            ids = ids[:context_length - 1] + [tokenizer.eot]
        result[i, :len(ids)] = torch.tensor(ids)
    return result


# ==============================================================================================
# 6. This project's checkpoints
# ==============================================================================================

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


def save_checkpoint(path: str | os.PathLike, detector: DeepfakeDetector, config: dict,
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
    return _checked_checkpoint(ckpt, path)


def _checked_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = "the authors' Lightning model.ckpt" if isinstance(ckpt, dict) and "pytorch-lightning_version" in ckpt \
            else _describe(ckpt)
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


def apply_checkpoint(detector: DeepfakeDetector, ckpt: dict, clip: str = "the given CLIP weights") -> None:
    """Loads the trainable tensors after checking the frozen rest is what they were trained on."""
    unknown = set(ckpt["state_dict"]) - set(detector.state_dict())
    if unknown:
        raise ValueError(f"checkpoint tensors {sorted(unknown)[:3]} do not exist in the model built from {clip}")
    found = base_sha256(detector, ckpt["state_dict"])
    if found != ckpt["base_sha256"]:
        raise ValueError(f"checkpoint was trained on CLIP weights with SHA-256 {ckpt['base_sha256'][:16]}..., "
                         f"but {clip} has {found[:16]}...: pass the CLIP weights it was trained from (--clip)")
    detector.load_state_dict(ckpt["state_dict"], strict=False)


# ==============================================================================================
# 7. Hugging Face names, the authors' model.ckpt, and load_detector
# ==============================================================================================

def convert_hf_vision_state_dict(state_dict: dict) -> dict:
    """Hugging Face CLIPVisionModel names (`vision_model.*`, q/k/v apart) -> OpenAI `visual.*` names."""
    sd = {k[len("vision_model."):]: v for k, v in state_dict.items() if k.startswith("vision_model.")}
    if "embeddings.patch_embedding.weight" not in sd:
        raise ValueError("expected Hugging Face CLIP vision keys like 'vision_model.embeddings.patch_embedding.weight'")
    out = {
        "visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["embeddings.class_embedding"],
        "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
    }
    for hf, ours in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        out |= {f"visual.{ours}.{p}": sd[f"{hf}.{p}"] for p in ("weight", "bias")}
    for i in range(_count_blocks(sd, "encoder.layers.")):
        hf, ours = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[ours + f"attn.in_proj_{p}"] = torch.cat([sd[hf + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
            out[ours + f"attn.out_proj.{p}"] = sd[hf + f"self_attn.out_proj.{p}"]
            out[ours + f"ln_1.{p}"] = sd[hf + f"layer_norm1.{p}"]
            out[ours + f"ln_2.{p}"] = sd[hf + f"layer_norm2.{p}"]
            out[ours + f"mlp.c_fc.{p}"] = sd[hf + f"mlp.fc1.{p}"]
            out[ours + f"mlp.c_proj.{p}"] = sd[hf + f"mlp.fc2.{p}"]
    if "visual_projection.weight" in state_dict:  # CLIPVisionModelWithProjection
        out["visual.proj"] = state_dict["visual_projection.weight"].t()
    return out


# ---------------------------------------------------------------- reading pickles without running them

class Placeholder:
    """Stands in for a pickled object whose class is never imported here (the authors' config enums
    and objects): it records what the file says (module, name, arguments, state, items) and runs nothing."""

    def __new__(cls, *args, **kwargs):  # NEWOBJ calls only __new__; REDUCE calls the class: Enum(value)
        self = super().__new__(cls)
        self.args, self.state, self.items, self.list = args, None, {}, []
        return self

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # a pickled dict subclass
        self.items[key] = value

    def append(self, value):  # a pickled list subclass
        self.list.append(value)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__}{self.args}>"


class RefusedPickle(pickle.UnpicklingError):
    pass


# Modules whose callables run code or reach the interpreter, files, processes or the network. A
# checkpoint has no reason to name any of them, so a pickle that does was made to run it: refused.
CODE_RUNNING = frozenset({
    "builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "importlib", "runpy", "code", "codeop",
    "shutil", "socket", "pickle", "_pickle", "marshal", "types", "ctypes", "codecs", "_codecs", "io", "_io",
    "operator", "functools", "pty", "multiprocessing", "threading", "_thread", "signal", "webbrowser", "asyncio",
    "inspect", "pdb", "timeit", "tempfile", "glob", "urllib", "http", "ftplib", "smtplib", "zipimport", "gc",
})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers, and reads every other object for what it says.

    Only ALLOWED globals are ever resolved, so nothing is imported: nothing in the file, in the
    authors' package or in whatever `src/` folder is importable here can run. A global of a module
    in CODE_RUNNING (os.system, builtins.eval, subprocess.Popen, ...) is refused; any other (the
    authors' `src.config.Head`, ...) becomes an inert Placeholder carrying its module and name."""

    ALLOWED = {
        ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("builtins", "set"),
        ("builtins", "frozenset"), ("_codecs", "encode"), ("torch", "device"),
        *(("torch", str(d).split(".")[1]) for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                    torch.int64, torch.int32, torch.uint8, torch.bool)),
    }

    def find_class(self, module: str, name: str):
        # Names as Python 3 knows them: protocol-2 pickles carry Python 2's (subprocess.Popen as commands.Popen).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name),
                                                       (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] in CODE_RUNNING:
            raise RefusedPickle(f"refusing to unpickle {module}.{name}: the file names a function that runs code, "
                                f"which no checkpoint needs; use a file from a source you trust")
        return type(name, (Placeholder,), {"__module__": module})  # the class the file names, inert


class _RestrictedPickleModule:
    """What torch.load's `pickle_module` argument expects: a module-like with Unpickler and load."""
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def _plain(x: Any) -> Any:
    """A pickled value with its Placeholders replaced by what they say: an enum member (pickled as
    Class(value)) by its value, an object by its attributes, a dict or list subclass by its items."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if not isinstance(x, Placeholder):
        return x
    if len(x.args) == 1 and x.state is None and not x.items and not x.list:
        return _plain(x.args[0])
    state = x.state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slot values)
        state = {**(state[0] or {}), **(state[1] or {})}
    if isinstance(state, dict) and isinstance(state.get("__dict__"), dict):  # a pydantic model
        state = state["__dict__"]
    content = {**(state if isinstance(state, dict) else {}), **x.items}
    if content:
        return _plain(content)
    return [_plain(v) for v in x.list] if x.list else x


# ---------------------------------------------------------------- the authors' model.ckpt

NEITHER = "neither a checkpoint of this project nor the authors' model.ckpt"
AUTHORS_FIX = f"download the authors' model.ckpt again ({AUTHORS_URL}) and pass it, or pass 'authors'"
DETECTOR_FIX = ("pass best.pt or last.pt written by train.py (re-run training if it was cut short), "
                "the authors' model.ckpt, or 'authors' to download it")
AUTHORS_PREFIX = "feature_extractor.base_model.model."  # PEFT's wrapper around a Hugging Face CLIP
_LN = r"(?:\.base_layer|\.ln_tuning_layers\.default)?"  # PEFT's LN-tuning: the frozen original and the tuned copy
AUTHORS_KEY = re.compile(
    r"vision_model\.(?:embeddings\.(?:class_embedding|patch_embedding\.weight|position_embedding\.weight|position_ids)"
    rf"|(?:pre_layrnorm|post_layernorm){_LN}\.(?:weight|bias)"
    rf"|encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|layer_norm[12]{_LN}|mlp\.fc[12])\.(?:weight|bias))"
    r"|visual_projection\.weight")

# The forward pass their config can change, from the fields of their src/config.py (enum values as
# pickled). head: `linear` feeds the raw ln_post features to the head, `LinearNorm` L2-normalises them.
AUTHORS_HEADS = {"linear": False, "LinearNorm": True}
AUTHORS_DEFAULT_HEAD = "LinearNorm"  # their released model, and the paper's method
CLIP_BACKBONES = {  # their Backbone values (Hugging Face names) -> (width, blocks, patch, input size)
    "openai/clip-vit-base-patch16": (768, 12, 16, 224), "openai/clip-vit-base-patch32": (768, 12, 32, 224),
    "openai/clip-vit-large-patch14": (1024, 24, 14, 224), "openai/clip-vit-large-patch14-336": (1024, 24, 14, 336),
}
INPUT_SIZE_FIELDS = ("backbone_args.img_size", "img_size", "image_size", "input_size", "input_resolution")
FORWARD_FIELDS = {  # field: (the values this project reproduces; None = not set), what any other value does
    "num_classes": ((None, 2), "is not this detector's 2 classes (real, fake)"),
    "inference_strategy": ((None, "softmax"), "is not the softmax this project scores with"),
    "backbone_args.merge_cls_token_with_patches": ((None,), "mixes patch tokens into the feature; "
                                                            "this project reads the class token alone"),
    "peft_v2.lora": ((None,), "adds LoRA adapters to the tower; this project runs LN-tuned towers only"),
    "custom_preprocessing.zoom_factor": ((None, 1), "zooms the images before the model; this project does not"),
    "custom_preprocessing.image_size": ((None,), "resizes the images before the model; this project does not"),
    "custom_preprocessing.flip_left_right": ((None, False), "mirrors the images before the model; "
                                                            "this project does not"),
}


def _field(config: dict, dotted: str) -> Any:
    """config["a"]["b"] for "a.b"; None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def _refusal(path: str | os.PathLike, field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{path}: hyper_parameters {field}={value!r} {why}")


def _authors_normalize(config: dict, sizes: dict, path: str | os.PathLike) -> bool:
    """Reads every field of the authors' config that changes the forward pass: honours the head
    (returns whether features are L2-normalised), checks the backbone and input size against the
    tensors, and refuses any setting this project does not reproduce. Absent fields mean the
    released model's values (head LinearNorm; backbone and input size as the tensors say)."""
    head = config.get("head", AUTHORS_DEFAULT_HEAD)
    if not isinstance(head, str) or head not in AUTHORS_HEADS:
        raise _refusal(path, "head", head, f"is not a head this project runs (it runs {list(AUTHORS_HEADS)}: "
                                           f"linear on the raw ln_post features, or on L2-normalised ones)")
    tower = (sizes["width"], sizes["layers"], sizes["patch_size"], sizes["input_resolution"])
    described = f"a ViT of width {tower[0]}, {tower[1]} blocks, {tower[2]}-px patches, {tower[3]} px input"
    backbone = config.get("backbone")
    if backbone is not None:
        if not isinstance(backbone, str) or backbone not in CLIP_BACKBONES:
            raise _refusal(path, "backbone", backbone, f"is not a CLIP ViT image tower, the only kind this project "
                                                       f"builds ({list(CLIP_BACKBONES)})")
        if CLIP_BACKBONES[backbone] != tower:
            raise _refusal(path, "backbone", backbone, f"disagrees with the file's tensors, which are {described}: "
                                                       f"the file contradicts itself; {AUTHORS_FIX}")
    for field in INPUT_SIZE_FIELDS:
        value = _field(config, field)
        if value is not None and any(v != tower[3] for v in (value if isinstance(value, list) else [value])):
            raise _refusal(path, field, value, f"is not the input size of the file's tower ({described}: its "
                                               f"position embedding holds a {tower[3] // tower[2]}-patch square grid)")
    for field, (allowed, why) in FORWARD_FIELDS.items():
        value = _field(config, field)
        if value not in allowed:
            raise _refusal(path, field, value, why)
    return AUTHORS_HEADS[head]


def _authors_tensors(ckpt: Any, path: str | os.PathLike, fix: str) -> dict:
    """Their Lightning state_dict -> OpenAI-named visual tensors + `head.*`. Every tensor of the tower and
    head is accounted for: one this project does not run (an adapter, another head) is refused."""
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    tower = f"{AUTHORS_PREFIX}vision_model."
    if not isinstance(sd, dict) or "model.linear.weight" not in sd or not any(k.startswith(tower) for k in sd):
        found = f"its state_dict holds {_describe(sd)}" if isinstance(sd, dict) else f"it holds {_describe(ckpt)}"
        raise ValueError(f"{path} is {NEITHER}: expected keys '{tower}*' and "
                         f"'model.linear.weight', but {found}; {fix}")
    unknown = [k for k in sd if k.startswith(AUTHORS_PREFIX) and not AUTHORS_KEY.fullmatch(k[len(AUTHORS_PREFIX):])
               or k.startswith("model.") and k not in ("model.linear.weight", "model.linear.bias")]
    if unknown:
        raise ValueError(f"{path} holds tensors this project does not run, such as {unknown[0]} (an adapter or "
                         f"another head): only LN-tuned CLIP towers with a linear head load here")
    # Of each LayerNorm's frozen original (base_layer) and tuned copy, the tuned copy is the one that runs.
    hf = {k[len(AUTHORS_PREFIX):].replace(".ln_tuning_layers.default.", "."): v for k, v in sd.items()
          if k.startswith(AUTHORS_PREFIX) and ".base_layer." not in k}
    try:
        out = convert_hf_vision_state_dict(hf)
        out["head.weight"], out["head.bias"] = sd["model.linear.weight"], sd["model.linear.bias"]
    except KeyError as e:
        raise ValueError(f"{path} is an incomplete authors' checkpoint: it lacks the tensor {e}; {fix}") from None
    width = out["visual.conv1.weight"].shape[0]
    if tuple(out["head.weight"].shape) != (2, width):
        raise ValueError(f"{path}: model.linear.weight is {list(out['head.weight'].shape)}, not this detector's "
                         f"[2, {width}] head (real, fake); {fix}")
    return out


def read_authors_checkpoint(path: str | os.PathLike, fix: str = AUTHORS_FIX) -> dict:
    """The authors' Lightning model.ckpt -> {"state_dict": OpenAI-named visual tensors + `head.*`,
    "normalize": whether their head L2-normalises}, read for what its tensors and hyper_parameters say
    without their code and without running anything pickled in it (see RestrictedUnpickler)."""
    ckpt = torch_load(path, NEITHER, fix, weights_only=False, pickle_module=_RestrictedPickleModule)
    sd = _authors_tensors(ckpt, path, fix)
    config = _plain(ckpt.get("hyper_parameters") or {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: hyper_parameters holds {_describe(config)}, not the authors' config; {fix}")
    return {"state_dict": sd, "normalize": _authors_normalize(config, _vision_sizes(sd), path)}


def _read_if_ours(path: str | os.PathLike) -> dict | None:
    """The file as this project's checkpoint format, or None when it is something else (the authors'
    pickled config objects, damaged bytes, ...). mmap: the authors' 1.2 GB is not read to find out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None


def load_detector(source: str | os.PathLike, clip: str | None = None, device: str | torch.device = "cpu",
                  download_root: str | os.PathLike | None = None) -> DeepfakeDetector:
    """Every kind of detector, in eval mode: this project's checkpoint (trained on `clip`, by default
    the CLIP its config names), the authors' model.ckpt by path, or "authors" (downloaded)."""
    fix = DETECTOR_FIX
    if str(source) == "authors":
        source = download(AUTHORS_URL, download_root)
        fix = f"delete {source} and load 'authors' again to download it afresh"
    ckpt = _read_if_ours(source)
    if ckpt is None:
        authors = read_authors_checkpoint(source, fix)  # a clear error when it is not that either
        sd = authors["state_dict"]
        detector = DeepfakeDetector(build_visual(sd), normalize=authors["normalize"])
        detector.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})  # copied to fp32
        return detector.to(device).eval()
    ckpt = _checked_checkpoint(ckpt, source)
    clip = clip or ckpt["config"]["clip"]
    detector = build_detector(clip, ckpt["config"].get("normalize", True), download_root=download_root)
    apply_checkpoint(detector, ckpt, clip)
    return detector.to(device).eval()
