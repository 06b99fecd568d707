"""CLIP in plain PyTorch (OpenAI's model.py, module for module) and the deepfake detector built on
its image tower: the paper's model.

  1. the model: OpenAI's modules and parameter names, so their checkpoints load with strict=True,
  2. the detector (ln_post class token -> L2 normalise -> Linear(width, 2)) and LN-tuning,
  3. build_model / build_visual / tiny models: every size inferred from the tensors,
  4. load / load_detector / tokenize / image_transform: thin entry points over util/ (downloads,
     file checks, the tokenizer, this project's and the authors' checkpoint formats).

    >>> model = load("ViT-L/14")                       # downloads ~890 MB once into ~/.cache/clip
    >>> detector = load_detector("authors")            # the paper's released weights
    >>> p_fake = detector(images).softmax(-1)[:, 1]    # images: [N, 3, 224, 224], image_transform()
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from util import authors, checkpoint as ckpt_format
from util.clip_weights import read_clip_weights
from util.download import AUTHORS_URL, download
from util.tokenizer import Tokenizer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

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
        # OpenAI's form: z = self.c_fc(x); return self.c_proj(z * torch.sigmoid(1.702 * z))
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
        # OpenAI's form: x = x + self.attn(self.ln_1(x)); first_only keeps its first row, x[:, :1]
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
        # OpenAI's form: x = self.transformer(self.ln_pre(x)) -> [N, 257, 1024], then x[:, 0]
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
# 4. Entry points: loading, tokens, pixels
# ==============================================================================================

def load(name_or_path: str, device: str | torch.device = "cpu", download_root: str | os.PathLike | None = None) -> CLIP:
    """CLIP by name (downloaded and cached) or from a local OpenAI archive / state-dict file, in fp32."""
    return build_model(read_clip_weights(name_or_path, download_root)).to(device).eval()


def load_detector(source: str | os.PathLike, clip: str | None = None, device: str | torch.device = "cpu",
                  download_root: str | os.PathLike | None = None) -> DeepfakeDetector:
    """Every kind of detector, in eval mode: this project's checkpoint (trained on `clip`, by default
    the CLIP its config names), the authors' model.ckpt by path, or "authors" (downloaded)."""
    fix = authors.DETECTOR_FIX
    if str(source) == "authors":
        source = download(AUTHORS_URL, download_root)
        fix = f"delete {source} and load 'authors' again to download it afresh"
    ckpt = ckpt_format.read_if_ours(source)
    if ckpt is None:
        theirs = authors.read_authors_checkpoint(source, fix)  # a clear error when it is not that either
        sd = theirs["state_dict"]
        normalize = authors.authors_normalize(theirs["config"], _vision_sizes(sd), source)
        detector = DeepfakeDetector(build_visual(sd), normalize)
        detector.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})  # copied to fp32
        return detector.to(device).eval()
    ckpt = ckpt_format.checked_checkpoint(ckpt, source)
    clip = clip or ckpt["config"]["clip"]
    detector = build_detector(clip, ckpt["config"].get("normalize", True), download_root=download_root)
    ckpt_format.apply_checkpoint(detector, ckpt, clip)
    return detector.to(device).eval()


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
