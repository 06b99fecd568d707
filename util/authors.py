"""The authors' released model.ckpt (Lightning, PEFT around a Hugging Face CLIP), read for what its
tensors and hyper_parameters say without their code and without running anything pickled in it:
a restricted unpickler, Hugging Face -> OpenAI tensor names, and the config fields that change the
forward pass."""
from __future__ import annotations

import _compat_pickle
import os
import pickle
import re
from typing import Any

import torch

from util.download import AUTHORS_URL
from util.torch_files import RefusedPickle, describe, torch_load


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
    blocks = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    for i in range(blocks):
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


def authors_normalize(config: dict, sizes: dict, path: str | os.PathLike) -> bool:
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
        found = f"its state_dict holds {describe(sd)}" if isinstance(sd, dict) else f"it holds {describe(ckpt)}"
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
    "config": their hyper_parameters as plain values (authors_normalize reads them)}, read for
    what it says without their code and without running anything pickled in it
    (RestrictedUnpickler)."""
    ckpt = torch_load(path, NEITHER, fix, weights_only=False, pickle_module=_RestrictedPickleModule)
    sd = _authors_tensors(ckpt, path, fix)
    config = _plain(ckpt.get("hyper_parameters") or {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: hyper_parameters holds {describe(config)}, not the authors' config; {fix}")
    return {"state_dict": sd, "config": config}
