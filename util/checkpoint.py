"""The detector's two checkpoint formats: this project's (best.pt / last.pt: the trainable tensors,
the config and the SHA-256 of the frozen rest, loaded with weights_only) and the authors' model.ckpt
(Lightning, PEFT around a Hugging Face CLIP), read without their code or running anything in it."""
import _compat_pickle
import hashlib
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from util.download import RefusedPickle, describe, read_torch_file
from util.files import atomic_write

FORMAT = "clip-deepfake/1"
CHECKPOINT_FIX = "pass best.pt or last.pt written by train.py (re-run training to write it again)"
DETECTOR_FIX = ("pass best.pt or last.pt written by train.py, the authors' model.ckpt, or 'authors' "
                "(a damaged download: delete the file and load 'authors' again)")


def base_sha256(detector: nn.Module, exclude: Iterable[str]) -> str:
    """SHA-256 of the names and fp32 values of every tensor not in `exclude`: the frozen base weights,
    so that a checkpoint is never applied to other ones."""
    exclude, h = set(exclude), hashlib.sha256()
    for name, tensor in sorted(detector.state_dict().items()):
        if name not in exclude:
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, detector: nn.Module, config: dict,
                    frozen_sha256: str | None = None, **extra) -> None:
    """The trainable tensors + `config` (needs `clip` and `normalize`) + SHA-256 of the frozen rest,
    written atomically; plain types only, so it loads with weights_only=True. `frozen_sha256`: pass
    it when known (hashing ViT-L/14 takes seconds). `extra` (optimizer state, step, ...) goes beside."""
    trainable = {n: p.detach().cpu().clone() for n, p in detector.named_parameters() if p.requires_grad}
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": dict(config),
                "base_sha256": frozen_sha256 or base_sha256(detector, trainable),
                "state_dict": trainable, **extra}, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getbuffer())  # no copy: with --tuning full the file is the whole tower


def load_checkpoint(path: str | os.PathLike) -> dict:
    """This project's checkpoint; weights_only=True, so nothing in the file can run code."""
    ckpt = read_torch_file(path, "a checkpoint of this project", CHECKPOINT_FIX, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this project: it holds {describe(ckpt)}; "
                         f"{CHECKPOINT_FIX}")
    return ckpt


def apply_checkpoint(detector: nn.Module, ckpt: dict, clip: str = "the given CLIP weights") -> None:
    """Loads the trainable tensors after checking the frozen rest is what they were trained on."""
    found = base_sha256(detector, ckpt["state_dict"])
    if found != ckpt["base_sha256"]:
        raise ValueError(f"checkpoint was trained on CLIP weights with SHA-256 {ckpt['base_sha256'][:16]}.., "
                         f"but {clip} has {found[:16]}..: pass the CLIP weights it was trained from (--clip)")
    detector.load_state_dict(ckpt["state_dict"], strict=False)


def read_if_ours(path: str | os.PathLike) -> dict | None:
    """The file as this project's checkpoint, or None when it is anything else. mmap: the authors'
    1.2 GB is not read to find out."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None


# ---------------------------------------------------------------- reading pickles without running them

class Placeholder(dict):
    """Stands for a pickled object whose class is never imported (the authors' config enums and
    objects): it keeps what the file says (the call's arguments, the attributes, the items), runs nothing."""

    def __new__(cls, *args, **kwargs):  # NEWOBJ calls only __new__; REDUCE calls the class: Enum(value)
        self = super().__new__(cls)
        self.args = args
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):  # an object's __dict__, (__dict__, slots), or pydantic's {"__dict__": ...}
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.update(state["__dict__"] if isinstance(state.get("__dict__"), dict) else state)


# Modules whose callables run code or reach the interpreter, files, processes or the network: no
# checkpoint has a reason to name one, so a pickle that does was made to run it.
CODE_RUNNING = frozenset(
    "builtins __builtin__ os posix nt sys subprocess importlib runpy code codeop shutil socket pickle "
    "_pickle marshal types ctypes codecs _codecs io _io operator functools pty multiprocessing threading "
    "_thread signal webbrowser asyncio inspect pdb timeit tempfile glob urllib http ftplib smtplib zipimport "
    "gc".split())


class RestrictedUnpickler(pickle.Unpickler):
    """Only ALLOWED globals are resolved, so nothing in the file, the authors' package or a `src/`
    folder here can run. Any other global (their `src.config.Head`, ...) becomes an inert Placeholder;
    one of a CODE_RUNNING module (os.system, builtins.eval, ...) is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "Size"),
        ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
        ("builtins", "set"), ("builtins", "frozenset"), ("_codecs", "encode"), ("torch", "device"),
        *(("torch", dtype) for dtype in "float32 float16 bfloat16 float64 int64 int32 uint8 bool".split()),
    }

    def find_class(self, module: str, name: str):
        # Names as Python 3 knows them: protocol-2 pickles carry Python 2's (commands.Popen).
        py3 = _compat_pickle.IMPORT_MAPPING.get(module, module), name
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), py3)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module.split(".")[0] in CODE_RUNNING:
            raise RefusedPickle(f"refusing to unpickle {module}.{name}: the file names a function that runs "
                                f"code, which no checkpoint needs; use a file from a source you trust")
        return type(name, (Placeholder,), {"__module__": module})  # the class the file names, inert


class RestrictedPickle:
    """What torch.load's `pickle_module` expects: Unpickler and load."""
    Unpickler = RestrictedUnpickler
    load = staticmethod(lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load())


def _plain(x: Any) -> Any:
    """A pickled value with its Placeholders replaced by what they say: an enum member (pickled as
    Class(value)) by its value, an object by its attributes, a dict subclass by its items."""
    if isinstance(x, Placeholder) and not x and len(x.args) == 1:
        return _plain(x.args[0])
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ---------------------------------------------------------------- the authors' model.ckpt

AUTHORS_PREFIX = "feature_extractor.base_model.model."  # PEFT's wrapper around a Hugging Face CLIP
_LN = r"(?:\.base_layer|\.ln_tuning_layers\.default)?"  # PEFT's LN-tuning: frozen original, tuned copy
AUTHORS_KEY = re.compile(  # every tensor of an LN-tuned tower: anything else (an adapter) is refused
    r"vision_model\.(?:embeddings\.(?:class_embedding|(?:patch|position)_embedding\.weight|position_ids)"
    rf"|(?:pre_layrnorm|post_layernorm){_LN}\.(?:weight|bias)"
    rf"|encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|layer_norm[12]{_LN}|mlp\.fc[12])"
    r"\.(?:weight|bias))"
    r"|visual_projection\.weight")  # CLIPVisionModelWithProjection's, unused by the detector

# What their config (src/config.py, enum values as pickled) can change in the forward pass. head: `linear`
# feeds the raw ln_post features to the head, `LinearNorm` (the released model) L2-normalised ones.
AUTHORS_HEADS = {"linear": False, "LinearNorm": True}
CLIP_BACKBONES = {  # their Backbone values (Hugging Face names) -> (width, blocks, patch, input size)
    "openai/clip-vit-base-patch16": (768, 12, 16, 224), "openai/clip-vit-base-patch32": (768, 12, 32, 224),
    "openai/clip-vit-large-patch14": (1024, 24, 14, 224),
    "openai/clip-vit-large-patch14-336": (1024, 24, 14, 336),
}
INPUT_SIZE_FIELDS = ("backbone_args.img_size", "img_size", "image_size", "input_size", "input_resolution")
FORWARD_FIELDS = {  # field: (the values this project reproduces; None = not set), what another value does
    "num_classes": ((None, 2), "is not this detector's 2 classes (real, fake)"),
    "inference_strategy": ((None, "softmax"), "is not the softmax this project scores with"),
    "backbone_args.merge_cls_token_with_patches": ((None,), "mixes patch tokens into the feature"),
    "peft_v2.lora": ((None,), "adds LoRA adapters to the tower; this project runs LN-tuned towers only"),
    "custom_preprocessing.zoom_factor": ((None, 1), "zooms the images; this project does not"),
    "custom_preprocessing.image_size": ((None,), "resizes the images; this project does not"),
    "custom_preprocessing.flip_left_right": ((None, False), "mirrors the images; this project does not"),
}


def convert_hf_vision_state_dict(state_dict: dict) -> dict:
    """Hugging Face CLIPVisionModel names (`vision_model.*`, q/k/v apart) -> OpenAI `visual.*` names;
    KeyError when a tensor is missing."""
    sd = {k[len("vision_model."):]: v for k, v in state_dict.items() if k.startswith("vision_model.")}
    out = {"visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["embeddings.class_embedding"],
           "visual.positional_embedding": sd["embeddings.position_embedding.weight"]}
    for hf, ours in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        out |= {f"visual.{ours}.{p}": sd[f"{hf}.{p}"] for p in ("weight", "bias")}
    blocks = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in range(blocks):
        hf, ours = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[ours + f"attn.in_proj_{p}"] = torch.cat([sd[hf + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
            out |= {f"{ours}{o}.{p}": sd[f"{hf}{h}.{p}"] for o, h in names.items()}
    return out


def _field(config: dict, dotted: str) -> Any:
    """config["a"]["b"] for "a.b"; None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def authors_normalize(config: dict, sizes: dict, path: str | os.PathLike) -> bool:
    """Whether the authors' head L2-normalises, after checking every field of their config that changes
    the forward pass: backbone and input size agree with the tensors (`sizes`, as clip_vit infers them),
    every other setting is the released model's (absent = released)."""
    tower = (sizes["width"], sizes["layers"], sizes["patch_size"], sizes["input_resolution"])
    described = f"a ViT of width {tower[0]}, {tower[1]} blocks, {tower[2]}-px patches, {tower[3]} px input"
    input_size = ((None, tower[3], [tower[3]] * 2),
                  f"is not the input size of the file's tensors ({described})")
    checks = {  # field: (the values this project reproduces, what any other value does)
        "head": ((None, *AUTHORS_HEADS), f"is not a head this project runs ({list(AUTHORS_HEADS)})"),
        "backbone": ((None, *[name for name, shape in CLIP_BACKBONES.items() if shape == tower]),
                     f"is not the CLIP ViT the file's tensors hold ({described})"),
        **dict.fromkeys(INPUT_SIZE_FIELDS, input_size), **FORWARD_FIELDS}
    for field, (allowed, why) in checks.items():
        if _field(config, field) not in allowed:
            raise ValueError(f"{path}: hyper_parameters {field}={_field(config, field)!r} {why}")
    return AUTHORS_HEADS[config.get("head") or "LinearNorm"]


def _authors_tensors(ckpt: Any, path: str | os.PathLike) -> dict:
    """Their Lightning state_dict -> OpenAI-named visual tensors + `head.*`. Every tensor of the tower
    and head is accounted for: one this project does not run (an adapter, another head) is refused."""
    sd, tower = ckpt.get("state_dict") if isinstance(ckpt, dict) else None, f"{AUTHORS_PREFIX}vision_model."
    if not (isinstance(sd, dict) and "model.linear.weight" in sd and any(k.startswith(tower) for k in sd)):
        found = describe(sd if isinstance(sd, dict) else ckpt)
        raise ValueError(f"{path} is neither a checkpoint of this project nor the authors' model.ckpt: "
                         f"expected '{tower}*' and 'model.linear.weight', found {found}; {DETECTOR_FIX}")
    head, prefix = ("model.linear.weight", "model.linear.bias"), AUTHORS_PREFIX
    unknown = [k for k in sd if (k.startswith("model.") and k not in head)
               or (k.startswith(prefix) and not AUTHORS_KEY.fullmatch(k.removeprefix(prefix)))]
    if unknown:
        raise ValueError(f"{path} holds tensors this project does not run, such as {unknown[0]} (an adapter "
                         f"or another head): only LN-tuned CLIP towers with a linear head load here")
    # Of each LayerNorm's frozen original (base_layer) and tuned copy, the tuned copy is the one that runs.
    hf = {k[len(AUTHORS_PREFIX):].replace(".ln_tuning_layers.default.", "."): v for k, v in sd.items()
          if k.startswith(AUTHORS_PREFIX) and ".base_layer." not in k}
    try:
        return convert_hf_vision_state_dict(hf) | {"head.weight": sd["model.linear.weight"],
                                                   "head.bias": sd["model.linear.bias"]}
    except KeyError as e:
        raise ValueError(f"{path} is an incomplete authors' checkpoint (no {e}); {DETECTOR_FIX}") from None


def read_authors_checkpoint(path: str | os.PathLike) -> dict:
    """The authors' Lightning model.ckpt -> {"state_dict": OpenAI-named visual tensors + `head.*`,
    "config": their hyper_parameters as plain values (authors_normalize reads them)}, read through
    RestrictedUnpickler: nothing pickled in it runs."""
    what = "a checkpoint of this project or the authors' model.ckpt"
    ckpt = read_torch_file(path, what, DETECTOR_FIX, weights_only=False, pickle_module=RestrictedPickle)
    sd = _authors_tensors(ckpt, path)
    config = _plain(ckpt.get("hyper_parameters") or {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: its hyper_parameters hold {describe(config)}, not the authors' config")
    return {"state_dict": sd, "config": config}
