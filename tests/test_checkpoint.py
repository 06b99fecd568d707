"""util/checkpoint.py: ours round-trip and refuse other base weights; the authors' load exactly and run
nothing pickled in them; any other file given to a reader is one line naming it."""
import enum
import os
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

import clip_vit as cv
from util import checkpoint


def test_checkpoint_round_trip_and_base_check(tmp_path):
    detector = cv.build_detector("tiny")
    cv.set_trainable(detector, "ln")
    with torch.no_grad():
        detector.visual.ln_post.weight.add_(1.0)
        detector.head.bias.add_(1.0)
    checkpoint.save_checkpoint(tmp_path / "best.pt", detector, {"clip": "tiny", "normalize": True}, epoch=3)
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)  # plain types only
    assert ckpt["epoch"] == 3
    assert set(ckpt["state_dict"]) == {n for n, p in detector.named_parameters() if p.requires_grad}
    torch.testing.assert_close(cv.load_detector(tmp_path / "best.pt").state_dict(), detector.state_dict(),
                               rtol=0, atol=0)
    other = cv.tiny_visual(seed=1)  # the same tensors over other base weights: refused
    torch.save({"visual." + k: v for k, v in other.state_dict().items()}, tmp_path / "other.pt")
    with pytest.raises(ValueError):
        cv.load_detector(tmp_path / "best.pt", clip=str(tmp_path / "other.pt"))


# ---------------------------------------------------------------- the authors' model.ckpt

def to_hf(visual_sd: dict) -> dict:
    """OpenAI -> Hugging Face CLIPVisionModel names, written apart from the converter under test."""
    hf = {"embeddings.patch_embedding.weight": visual_sd["conv1.weight"],
          "embeddings.class_embedding": visual_sd["class_embedding"],
          "embeddings.position_embedding.weight": visual_sd["positional_embedding"],
          "embeddings.position_ids": torch.arange(visual_sd["positional_embedding"].shape[0])[None]}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    blocks = len({k.split(".")[2] for k in visual_sd if k.startswith("transformer.resblocks.")})
    for p in ("weight", "bias"):
        hf[f"pre_layrnorm.{p}"] = visual_sd[f"ln_pre.{p}"]
        hf[f"post_layernorm.{p}"] = visual_sd[f"ln_post.{p}"]
        for o, h in ((f"transformer.resblocks.{i}.", f"encoder.layers.{i}.") for i in range(blocks)):
            q, k, v = visual_sd[f"{o}attn.in_proj_{p}"].chunk(3)
            hf |= {f"{h}self_attn.{n}_proj.{p}": x for n, x in zip("qkv", (q, k, v))}
            hf |= {f"{h}{theirs}.{p}": visual_sd[f"{o}{ours}.{p}"] for ours, theirs in names.items()}
    return {"vision_model." + k: v for k, v in hf.items()}


# Their `src.config` as it is while their training writes model.ckpt: str enums and pydantic settings.
Head = enum.Enum("Head", {"linear": "linear", "LinearNorm": "LinearNorm", "Cosine": "cosine"}, type=str,
                 module="src.config", qualname="Head")


class BackboneArgs:  # stands for their pydantic settings: pickled by class name + attributes
    __module__ = "src.config"

    def __init__(self, img_size):
        self.img_size, self.merge_cls_token_with_patches = img_size, None


def authors_checkpoint(path: Path, payload=None, head="LinearNorm", tensors=None, **hyper_parameters):
    """(the detector it holds, path) of a model.ckpt with the authors' key names: the HF tower under
    PEFT's prefix in fp16, each LayerNorm as frozen original + tuned copy, their enums and settings."""
    torch.manual_seed(7)
    detector = cv.DeepfakeDetector(cv.tiny_visual(seed=6), normalize=head != "linear")
    sd = {}
    for key, value in to_hf(detector.visual.state_dict()).items():
        name = "feature_extractor.base_model.model." + key
        if "layer_norm" in key or "layrnorm" in key:
            stem, p = name.rsplit(".", 1)
            sd[f"{stem}.base_layer.{p}"] = torch.randn_like(value)  # frozen originals: must be ignored
            sd[f"{stem}.ln_tuning_layers.default.{p}"] = value
        else:
            sd[name] = value.half()  # the authors trained in mixed precision
    sd["model.linear.weight"], sd["model.linear.bias"] = detector.head.weight.data, detector.head.bias.data
    detector.visual.load_state_dict({k: v if "ln" in k else v.half().float()
                                     for k, v in detector.visual.state_dict().items()})
    ckpt = {"epoch": 9, "state_dict": sd | (tensors or {}), "pytorch-lightning_version": "2.4.0"}
    if head is not None:
        ckpt["hyper_parameters"] = {
            "head": Head(head), "payload": payload, "num_classes": 2, "inference_strategy": "softmax",
            "backbone_args": BackboneArgs(224), "peft_v2": None, "lr": 8e-5, **hyper_parameters}
    config = types.ModuleType("src.config")
    config.Head, config.BackboneArgs = Head, BackboneArgs
    with mock.patch.dict(sys.modules, {"src": types.ModuleType("src"), "src.config": config}):
        torch.save(ckpt, path)  # their package is importable while the file is written, never after
    return detector.eval(), path


@pytest.mark.parametrize("head, normalize", [("linear", False), ("LinearNorm", True), (None, True)])
def test_authors_checkpoint_loads_exactly(tmp_path, head, normalize):
    """`linear` reads raw ln_post features, `LinearNorm` (or no hyper_parameters) L2-normalised ones."""
    expected, path = authors_checkpoint(tmp_path / "model.ckpt", head=head)
    loaded = cv.load_detector(path)
    assert loaded.normalize is normalize
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected(images), rtol=0, atol=1e-6)
        expected.normalize = not normalize
        assert (loaded(images) - expected(images)).abs().max() > 1e-2  # the head's choice matters


def test_authors_backbone_and_input_size_agreeing_with_the_tensors_are_honoured():
    with torch.device("meta"):  # the released file's own settings: ViT-L/14 at 224 px
        visual = cv.VisionTransformer(224, 14, 1024, 24, 16, 768)
    sizes = cv._vision_sizes({"visual." + k: v for k, v in visual.state_dict().items()})
    config = {"head": "linear", "backbone": "openai/clip-vit-large-patch14", "img_size": [224, 224]}
    assert checkpoint.authors_normalize(config, sizes, "model.ckpt") is False


def test_their_code_importable_here_is_never_run(tmp_path, monkeypatch, capsys):
    """Their config module is named in the pickle, never imported: a `src/config.py` here does not run."""
    expected, path = authors_checkpoint(tmp_path / "model.ckpt", head="linear")
    marker = tmp_path / "ran"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.py").write_text(f"print('their code ran')\nopen({str(marker)!r}, 'w')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = cv.load_detector(path)
    assert not marker.exists() and "src" not in sys.modules and "ran" not in capsys.readouterr().out
    with torch.no_grad():
        images = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(loaded(images), expected(images), rtol=0, atol=1e-6)


class Calls:  # pickles as function(*args): what a file made to run code holds
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function", [subprocess.Popen, eval, os.system])
def test_authors_checkpoint_calling_code_is_refused(tmp_path, function):
    marker = tmp_path / "ran"
    command = {eval: f"open({str(marker)!r}, 'w')", subprocess.Popen: ["touch", str(marker)],
               os.system: f"touch {marker}"}[function]
    _, path = authors_checkpoint(tmp_path / "model.ckpt", payload=Calls(function, command))
    with pytest.raises(ValueError) as e:
        cv.load_detector(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_authors_download_through_mirror(tmp_path, monkeypatch, serve):
    expected, path = authors_checkpoint(tmp_path / "model.ckpt")
    monkeypatch.setenv("CLIP_MIRROR", serve({"model.ckpt": path.read_bytes()}).url)
    loaded = cv.load_detector("authors", download_root=tmp_path / "cache")
    assert (tmp_path / "cache" / "model.ckpt").is_file()
    assert torch.equal(loaded.head.weight, expected.head.weight)


LORA = ("feature_extractor.base_model.model.vision_model.encoder.layers.0."
        "self_attn.q_proj.lora_A.default.weight")
REFUSED = {  # an authors' checkpoint this project cannot run as they did -> what the line names
    "unknown head": (dict(head="cosine"), "head"),
    "not a CLIP": (dict(backbone="facebook/dinov3-vitl16-pretrain-lvd1689m"), "backbone"),
    "backbone against tensors": (dict(backbone="openai/clip-vit-large-patch14"), "backbone"),
    "input size": (dict(backbone_args=BackboneArgs(336)), "img_size"),
    "zoom": (dict(custom_preprocessing={"zoom_factor": 1.3}), "zoom_factor"),
    "classes": (dict(num_classes=5), "num_classes"),
    "LoRA tensors": (dict(tensors={LORA: torch.zeros(1, 64)}), LORA),
}


@pytest.mark.parametrize("case", REFUSED)
def test_authors_settings_this_project_cannot_run_are_refused(tmp_path, case):
    kwargs, field = REFUSED[case]
    _, path = authors_checkpoint(tmp_path / "model.ckpt", **kwargs)
    with pytest.raises(ValueError) as e:
        cv.load_detector(path)
    assert str(e.value).startswith(str(path)) and field in str(e.value) and "\n" not in str(e.value)


def ours(path: Path) -> Path:
    checkpoint.save_checkpoint(path, cv.build_detector("tiny"), {"clip": "tiny", "normalize": True})
    return path


def halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


FILES = {  # what a file holds -> its writer
    "ours": ours,
    "authors": lambda path: authors_checkpoint(path),
    "openai": lambda path: torch.save(cv.tiny_clip(seed=2).state_dict(), path),
    "torchscript": lambda path: torch.jit.script(torch.nn.Linear(3, 2)).save(str(path)),
    "other model": lambda path: torch.save({"linear.weight": torch.zeros(2, 3)}, path),
    "random": lambda path: path.write_bytes(bytes(range(7, 256)) * 9),
    "empty": lambda path: path.write_bytes(b""),
    "folder": lambda path: path.mkdir(),
    "missing": lambda path: None,
    "cut ours": lambda path: halve(ours(path)),
    "cut authors": lambda path: halve(authors_checkpoint(path)[1]),
}
READERS = {  # reader -> the kinds of file it reads
    "load_checkpoint": (checkpoint.load_checkpoint, {"ours"}),
    "load_detector": (cv.load_detector, {"ours", "authors"}),
    "read_authors_checkpoint": (checkpoint.read_authors_checkpoint, {"authors"}),
    "clip_vit.load": (lambda path: cv.load(str(path)), {"openai"}),
}


@pytest.mark.parametrize("reader, kind", [(r, k) for r in READERS for k in FILES if k not in READERS[r][1]])
def test_any_other_file_is_one_line_naming_it(tmp_path, reader, kind):
    read, _ = READERS[reader]
    path = tmp_path / "file.pt"
    FILES[kind](path)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        read(path)
    assert isinstance(e.value, FileNotFoundError) == (kind == "missing")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
