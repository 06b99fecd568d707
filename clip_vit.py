"""CLIP in plain PyTorch (OpenAI's model.py, module for module, so their weights load with
strict=True) and the paper's detector on its image tower: ln_post class token -> L2 norm -> Linear.

    detector = load_detector("authors")            # or runs/<name>/best.pt
    p_fake = detector(images).softmax(-1)[:, 1]    # images [N, 3, 224, 224] from image_transform()
"""
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.transforms import v2

from util import checkpoint as ckpt_format
from util.download import AUTHORS_URL, download, read_clip_weights
from util.tokenizer import Tokenizer

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TUNING = ("ln", "linear-probe", "full")


class MLP(nn.Module):
    """c_fc -> QuickGELU(z) = z * sigmoid(1.702 z), as OpenAI trained it -> c_proj. Computed as silu(1.702 z)
    / 1.702 with both constants folded into the GEMMs' alpha and beta: one elementwise pass, not three."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # OpenAI's form: z = self.c_fc(x); return self.c_proj(z * torch.sigmoid(1.702 * z))
        shape = x.shape                                                                   # [N, 257, 1024]
        z = torch.addmm(self.c_fc.bias, x.reshape(-1, shape[-1]), self.c_fc.weight.t(),
                        beta=1.702, alpha=1.702)                                          # [N*257, 4096]
        h = F.silu(z)                                                                     # 1.702 QuickGELU(z)
        out = torch.addmm(self.c_proj.bias, h, self.c_proj.weight.t(), alpha=1 / 1.702)  # [N*257, 1024]
        return out.view(*shape[:-1], -1)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, run through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))  # loaded or init_weights()
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, first_only: bool = False) -> torch.Tensor:
        """first_only: only the first token (the class token) queries; its row alone is returned."""
        n, length, width = x.shape                                                        # [N, 257, 1024]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)                         # [N, 257, 3072]
        q, k, v = qkv.view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)           # [N, 16, 257, 64]
        q = q[:, :, :1] if first_only else q                                              # [N, 16, 1, 64]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)                     # [N, 16, 257, 64]
        return self.out_proj(x.transpose(1, 2).reshape(n, q.shape[2], width))            # [N, 257, 1024]


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.attn = Attention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, width * 4)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, first_only: bool = False) -> torch.Tensor:
        """first_only: only the class token's output (all tokens still serve as keys)."""
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
        """OpenAI's initialisation (the tiny random models of tests and smoke runs)."""
        attn_std, proj_std = self.width ** -0.5, self.width ** -0.5 * (2 * self.layers) ** -0.5
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
        tokens = (input_resolution // patch_size) ** 2 + 1
        self.positional_embedding = nn.Parameter(scale * torch.randn(tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        # The detector never uses proj; a Hugging Face CLIPVisionModel has none.
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post of the class token: the feature the detector is built on."""
        x = self.conv1(x.to(self.conv1.weight.dtype))                                     # [N, 1024, 16, 16]
        x = x.flatten(2).transpose(1, 2)                                                  # [N, 256, 1024]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)                  # [N, 1, 1024]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)            # [N, 257, 1024]
        # Only the class token leaves the tower, so the last block computes its row alone.
        # OpenAI's form: x = self.transformer(self.ln_pre(x)) -> [N, 257, 1024], then x[:, 0]
        x = self.transformer(self.ln_pre(x), first_only=True)                             # [N, 1, 1024]
        return self.ln_post(x[:, 0])                                                      # [N, 1024]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)                                                      # [N, 1024]
        return x @ self.proj if self.proj is not None else x                              # [N, 768]


class CLIP(nn.Module):
    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        scale = transformer_width ** -0.5
        self.text_projection = nn.Parameter(scale * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.visual.transformer.init_weights()
        self.transformer.init_weights()

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)                                                         # [N, 768]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding                        # [N, 77, 768]
        x = self.ln_final(self.transformer(x))                                            # [N, 77, 768]
        eot = text.argmax(dim=-1)  # the end-of-text token has the largest id in the vocabulary
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection                    # [N, 768]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()    # [N_img, N_txt]
        return logits_per_image, logits_per_image.t()


# ---------------------------------------------------------------- the detector and LN-tuning

class Head(nn.Linear):
    """Linear, in fp32 even under bf16 autocast: bf16 logits would round p_fake to a few hundred values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())                                             # [N, 2] fp32


class DeepfakeDetector(nn.Module):
    """CLIP image tower -> ln_post(class token) -> L2 normalise -> Linear(width, 2). Class 1 = fake.
    normalize=False feeds the raw ln_post features to the head (the paper's row without L2 norm)."""

    def __init__(self, visual: VisionTransformer, normalize: bool = True):
        super().__init__()
        self.visual = visual
        self.normalize = normalize
        self.head = Head(visual.width, 2)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.visual.forward_features(images).float()                                  # [N, 1024]
        return F.normalize(x, dim=-1) if self.normalize else x                            # on the unit sphere

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))                                           # [N, 2]


def cast_for_inference(visual: VisionTransformer, dtype: torch.dtype) -> None:
    """The frozen matrices (patch embedding, attention, MLP) stored in `dtype` once, for a run that only
    scores under autocast to `dtype`: the very cast autocast makes of each weight on every call (no
    number changes). LayerNorms and embeddings stay fp32, as autocast keeps them."""
    visual.conv1.to(dtype)
    for block in visual.transformer.resblocks:
        block.attn.to(dtype)
        block.mlp.to(dtype)


def compile_tower(visual: VisionTransformer, frozen: bool) -> None:
    """torch.compile (inductor) of the tower's blocks, in place: state_dict keys and checkpoints stay.
    frozen (the run only scores): inductor's freezing takes the weights as constants and folds their
    bf16 casts once; it applies to what is compiled without grad (inference_mode), as evaluate.py scores."""
    visual.transformer.compile(options={"freezing": frozen})


def set_trainable(detector: DeepfakeDetector, tuning: str) -> int:
    """Which tensors train: "ln" = every LayerNorm + head (the paper), "linear-probe" = head only,
    "full" = everything. Returns the number of trainable parameters."""
    detector.requires_grad_(tuning == "full")
    if detector.visual.proj is not None:  # unused by the detector: no gradient reaches it (DDP would wait)
        detector.visual.proj.requires_grad_(False)
    if tuning == "ln":
        for module in detector.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
    detector.head.requires_grad_(True)
    return sum(p.numel() for p in detector.parameters() if p.requires_grad)


# ---------------------------------------------------------------- sizes from tensors

def _vision_sizes(sd: dict) -> dict:
    width, _, patch, _ = sd["visual.conv1.weight"].shape                                  # [1024, 3, 14, 14]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return dict(input_resolution=patch * grid, patch_size=patch, width=width,
                layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
                heads=width // 64)


def _build(module_fn, state_dict: dict) -> nn.Module:
    """On the meta device (no random init of 300M weights), adopting the tensors in fp32."""
    drop = {"input_resolution", "context_length", "vocab_size"}  # extra entries of OpenAI's archives
    sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items() if k not in drop}
    with torch.device("meta"):
        module = module_fn()
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def build_model(state_dict: dict) -> CLIP:
    """The whole CLIP from an OpenAI state dict (ViT-B/32, B/16, L/14, L/14@336px), sizes inferred."""
    sd, v = state_dict, _vision_sizes(state_dict)
    text_width = sd["ln_final.weight"].shape[0]
    return _build(lambda: CLIP(
        embed_dim=sd["text_projection"].shape[1], image_resolution=v["input_resolution"],
        vision_layers=v["layers"], vision_width=v["width"], vision_patch_size=v["patch_size"],
        context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=text_width, transformer_heads=text_width // 64,
        transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})), sd)


def build_visual(state_dict: dict) -> VisionTransformer:
    """The image tower alone from the `visual.*` keys of a CLIP state dict (`visual.proj` optional)."""
    sd = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    output_dim = sd["proj"].shape[1] if "proj" in sd else None
    return _build(lambda: VisionTransformer(**_vision_sizes(state_dict), output_dim=output_dim), sd)


def tiny_visual(width: int = 64, layers: int = 2, heads: int = 1, patch_size: int = 14,
                input_resolution: int = 224, output_dim: int | None = None,
                seed: int = 0) -> VisionTransformer:
    """A small random image tower (head width 64) for tests and smoke runs; the global RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = VisionTransformer(input_resolution, patch_size, width, layers, heads, output_dim)
        visual.transformer.init_weights()
    return visual


def tiny_clip(seed: int = 0) -> CLIP:
    """A small random CLIP, text tower included (zero-shot smoke runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(embed_dim=32, image_resolution=224, vision_layers=2, vision_width=64,
                    vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=64,
                    transformer_heads=1, transformer_layers=2)


# ---------------------------------------------------------------- entry points

def build_detector(clip: str, normalize: bool = True, device: str | torch.device = "cpu",
                   download_root: str | os.PathLike | None = None) -> DeepfakeDetector:
    """`clip`: a model name ("ViT-L/14", downloaded), a path to OpenAI weights, or "tiny"."""
    visual = tiny_visual() if clip == "tiny" else build_visual(read_clip_weights(clip, download_root, False))
    return DeepfakeDetector(visual, normalize).to(device)


def load(name_or_path: str, device: str | torch.device = "cpu",
         download_root: str | os.PathLike | None = None) -> CLIP:
    """CLIP by name (downloaded and cached) or from a local OpenAI archive / state-dict file, in fp32."""
    return build_model(read_clip_weights(name_or_path, download_root)).to(device).eval()


def load_detector(source: str | os.PathLike, clip: str | None = None, device: str | torch.device = "cpu",
                  download_root: str | os.PathLike | None = None) -> DeepfakeDetector:
    """A detector in eval mode: this project's checkpoint (on `clip`, by default the CLIP its config
    names), the authors' model.ckpt by path, or "authors" (downloaded)."""
    if str(source) == "authors":
        source = download(AUTHORS_URL, download_root)
    ours = ckpt_format.read_if_ours(source)
    if ours is None:  # the authors' format, or one line saying the file is neither
        theirs = ckpt_format.read_authors_checkpoint(source)
        sd = theirs["state_dict"]
        normalize = ckpt_format.authors_normalize(theirs["config"], _vision_sizes(sd), source)
        detector = DeepfakeDetector(build_visual(sd), normalize)
        detector.head.load_state_dict({"weight": sd["head.weight"], "bias": sd["head.bias"]})  # to fp32
    else:
        clip = clip or ours["config"]["clip"]
        detector = build_detector(clip, ours["config"].get("normalize", True), download_root=download_root)
        ckpt_format.apply_checkpoint(detector, ours, clip)
    return detector.to(device).eval()


def tokenize(texts: str | list[str], context_length: int = 77,
             tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """Texts -> LongTensor [N, context_length]: <|startoftext|> ids <|endoftext|>, zero padded."""
    tokenizer = tokenizer or Tokenizer()
    texts = [texts] if isinstance(texts, str) else texts
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [tokenizer.sot, *tokenizer.encode(text), tokenizer.eot]
        if len(ids) > context_length:
            raise ValueError(f"text {i} has {len(ids)} tokens, more than the context length {context_length}")
        result[i, :len(ids)] = torch.tensor(ids)
    return result


def image_transform(size: int = 224) -> v2.Compose:
    """CLIP's preprocessing of a PIL image, HWC uint8 array or CHW uint8 tensor: shortest side to
    `size` (bicubic), centre crop, [0, 1], normalise."""
    bicubic = v2.InterpolationMode.BICUBIC
    return v2.Compose([v2.ToImage(), v2.Resize(size, interpolation=bicubic, antialias=True),
                       v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(OPENAI_MEAN, OPENAI_STD)])
