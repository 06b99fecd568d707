"""util/authors.py: the authors' model.ckpt loads without their code and runs nothing pickled in it."""
import contextlib
import enum
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import clip_vit as cv
from util import authors


def to_hf(visual_sd: dict) -> dict:
    """OpenAI -> Hugging Face CLIPVisionModel names, written independently of the converter under test."""
    hf = {"vision_model.embeddings.patch_embedding.weight": visual_sd["conv1.weight"],
          "vision_model.embeddings.class_embedding": visual_sd["class_embedding"],
          "vision_model.embeddings.position_embedding.weight": visual_sd["positional_embedding"],
          "vision_model.embeddings.position_ids": torch.arange(visual_sd["positional_embedding"].shape[0])[None]}
    for p in ("weight", "bias"):
        hf[f"vision_model.pre_layrnorm.{p}"] = visual_sd[f"ln_pre.{p}"]
        hf[f"vision_model.post_layernorm.{p}"] = visual_sd[f"ln_post.{p}"]
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in visual_sd:
        o, h = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = visual_sd[o + f"attn.in_proj_{p}"].chunk(3)
            hf |= {h + f"self_attn.q_proj.{p}": q, h + f"self_attn.k_proj.{p}": k, h + f"self_attn.v_proj.{p}": v,
                   h + f"self_attn.out_proj.{p}": visual_sd[o + f"attn.out_proj.{p}"],
                   h + f"layer_norm1.{p}": visual_sd[o + f"ln_1.{p}"], h + f"layer_norm2.{p}": visual_sd[o + f"ln_2.{p}"],
                   h + f"mlp.fc1.{p}": visual_sd[o + f"mlp.c_fc.{p}"], h + f"mlp.fc2.{p}": visual_sd[o + f"mlp.c_proj.{p}"]}
        i += 1
    return hf


def test_hf_conversion_round_trip():
    visual = cv.tiny_visual(seed=5).eval()
    rebuilt = cv.build_visual(authors.convert_hf_vision_state_dict(to_hf(visual.state_dict()))).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(visual.forward_features(images), rebuilt.forward_features(images))
    with pytest.raises(ValueError, match="Hugging Face CLIP vision keys"):
        authors.convert_hf_vision_state_dict({"visual.conv1.weight": torch.zeros(1)})


@contextlib.contextmanager
def authors_package():
    """Their `src.config` as it exists while their training writes model.ckpt: str-valued enums (the
    values of their Head and Backbone) and a plain settings object. Gone again afterwards, from
    sys.modules and sys.path alike, so the loader under test never has it."""
    src, config = types.ModuleType("src"), types.ModuleType("src.config")
    config.Head = enum.Enum("Head", {"linear": "linear", "LinearNorm": "LinearNorm", "Cosine": "cosine"},
                            type=str, module="src.config", qualname="Head")
    config.Backbone = enum.Enum("Backbone", {"CLIP_L_14": "openai/clip-vit-large-patch14",
                                             "DINOv3_ViT_L": "facebook/dinov3-vitl16-pretrain-lvd1689m"},
                                type=str, module="src.config", qualname="Backbone")

    class BackboneArgs:  # stands for their pydantic settings: pickled by class name + attributes
        def __init__(self, img_size):
            self.img_size, self.merge_cls_token_with_patches = img_size, None
    BackboneArgs.__module__, BackboneArgs.__qualname__ = "src.config", "BackboneArgs"
    config.BackboneArgs, src.config = BackboneArgs, config
    saved = {name: sys.modules.pop(name) for name in ("src", "src.config") if name in sys.modules}
    sys.modules |= {"src": src, "src.config": config}
    try:
        yield config
    finally:
        del sys.modules["src"], sys.modules["src.config"]
        sys.modules |= saved


def authors_checkpoint(path: Path, payload=None, head="LinearNorm", state_dict=None,
                       **hyper_parameters) -> tuple[cv.DeepfakeDetector, Path]:
    """A synthetic model.ckpt with the authors' key names: HF vision tower under PEFT's prefix,
    each LayerNorm as frozen original + tuned copy, Lightning extras pickling enums of their code.
    `head`: a value of their Head enum, or None to write no hyper_parameters at all; keyword
    arguments are written as further hyper_parameters (a callable gets their `src.config`)."""
    torch.manual_seed(7)
    detector = cv.DeepfakeDetector(cv.tiny_visual(seed=6), normalize=head != "linear")
    hf = to_hf(detector.visual.state_dict())
    sd = {}
    for key, value in hf.items():
        name = "feature_extractor.base_model.model." + key
        if "layer_norm" in key or "layrnorm" in key or "post_layernorm" in key:
            stem, p = name.rsplit(".", 1)
            sd[f"{stem}.base_layer.{p}"] = torch.randn_like(value)  # frozen originals: must be ignored
            sd[f"{stem}.ln_tuning_layers.default.{p}"] = value
        else:
            sd[name] = value.half()  # the authors trained in mixed precision
    sd["model.linear.weight"], sd["model.linear.bias"] = detector.head.weight.data, detector.head.bias.data
    detector.visual.load_state_dict({k: v.half().float() if "ln" not in k else v
                                     for k, v in detector.visual.state_dict().items()})
    with authors_package() as config:
        ckpt = {"epoch": 9, "state_dict": (state_dict or (lambda sd: sd))(sd), "pytorch-lightning_version": "2.4.0"}
        if head is not None:
            ckpt["hyper_parameters"] = {
                "head": config.Head(head), "payload": payload, "num_classes": 2, "inference_strategy": "softmax",
                "backbone_args": {"img_size": 224, "merge_cls_token_with_patches": None}, "peft_v2": None,
                "unfreeze_layers": ["layer_norm"], "lr": 8e-5,
                **{k: v(config) if callable(v) else v for k, v in hyper_parameters.items()}}
        torch.save(ckpt, path)
    return detector.eval(), path


def test_authors_checkpoint_loads_without_their_code(tmp_path):
    expected, path = authors_checkpoint(tmp_path / "model.ckpt")
    loaded = cv.load_detector(path)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected(images), rtol=0, atol=1e-6)
    assert loaded.normalize


def logits(detector: cv.DeepfakeDetector, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return detector(images)


@pytest.mark.parametrize("head, normalize", [("linear", False), ("LinearNorm", True), (None, True)])
def test_authors_head_decides_the_l2_normalisation(tmp_path, head, normalize):
    """Their `linear` head reads the raw ln_post features, `LinearNorm` L2-normalised ones; a file
    without hyper_parameters is their released model, LinearNorm."""
    expected, path = authors_checkpoint(tmp_path / "model.ckpt", head=head)
    loaded = cv.load_detector(path)
    assert loaded.normalize is normalize
    images = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(logits(loaded, images), logits(expected, images), rtol=0, atol=1e-6)
    other = cv.DeepfakeDetector(expected.visual, normalize=not normalize)
    other.head = expected.head
    assert (logits(other, images) - logits(loaded, images)).abs().max() > 1e-2  # the head's choice matters


REFUSED = {  # hyper_parameters written -> what the one line refusing the file says
    "unknown head": (dict(head="cosine"), r"hyper_parameters head='cosine' is not a head this project runs"),
    "not a CLIP": (dict(backbone=lambda c: c.Backbone.DINOv3_ViT_L),
                   r"hyper_parameters backbone='facebook/dinov3-vitl16-pretrain-lvd1689m' is not a CLIP ViT"),
    "backbone against tensors": (dict(backbone=lambda c: c.Backbone.CLIP_L_14),
                                 r"hyper_parameters backbone='openai/clip-vit-large-patch14' disagrees with the "
                                 r"file's tensors, which are a ViT of width 64, 2 blocks, 14-px patches, 224 px"),
    "input size": (dict(backbone_args=lambda c: c.BackboneArgs(336)),
                   r"hyper_parameters backbone_args.img_size=336 is not the input size of the file's tower"),
    "LoRA": (dict(peft_v2={"lora": {"rank": 1}}), r"hyper_parameters peft_v2.lora=\{'rank': 1\} adds LoRA"),
    "zoom": (dict(custom_preprocessing={"zoom_factor": 1.3, "image_size": None, "flip_left_right": False}),
             r"hyper_parameters custom_preprocessing.zoom_factor=1.3 zooms the images"),
    "classes": (dict(num_classes=5), r"hyper_parameters num_classes=5 is not this detector's 2 classes"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_authors_settings_this_project_cannot_run_are_refused(tmp_path, case):
    hyper_parameters, message = REFUSED[case]
    _, path = authors_checkpoint(tmp_path / "model.ckpt", **hyper_parameters)
    with pytest.raises(ValueError, match=f"^{path}: {message}") as e:
        cv.load_detector(path)
    assert "\n" not in str(e.value)


def test_authors_backbone_and_input_size_agreeing_with_the_tensors_are_honoured():
    """The released file's own settings: ViT-L/14 at 224 px (sizes of a meta tower: no weights needed)."""
    with torch.device("meta"):
        visual = cv.VisionTransformer(224, 14, 1024, 24, 16, 768)
    sizes = cv._vision_sizes({"visual." + k: v for k, v in visual.state_dict().items()})
    config = {"head": "linear", "backbone": "openai/clip-vit-large-patch14", "backbone_args": {"img_size": 224}}
    assert authors.authors_normalize(config, sizes, "model.ckpt") is False
    with pytest.raises(ValueError, match="backbone='openai/clip-vit-large-patch14-336' disagrees"):
        authors.authors_normalize(config | {"backbone": "openai/clip-vit-large-patch14-336"}, sizes, "model.ckpt")


def test_authors_tensors_this_project_does_not_run_are_refused(tmp_path):
    lora = "feature_extractor.base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight"
    _, path = authors_checkpoint(tmp_path / "model.ckpt", state_dict=lambda sd: sd | {lora: torch.zeros(1, 64)})
    with pytest.raises(ValueError, match=f"holds tensors this project does not run, such as {lora}"):
        cv.load_detector(path)


@pytest.mark.parametrize("config_py", [None, "print('their code ran')\nopen({marker!r}, 'w').write('ran')\n"])
def test_a_src_folder_here_changes_nothing(tmp_path, monkeypatch, capsys, config_py):
    """Their config module's name is read from the pickle, never imported: an empty `src/` or one whose
    config.py would run, importable from the current folder, neither blocks loading nor runs."""
    expected, path = authors_checkpoint(tmp_path / "model.ckpt", head="linear")
    here, marker = tmp_path / "cwd", tmp_path / "ran"
    (here / "src").mkdir(parents=True)
    if config_py:
        (here / "src" / "__init__.py").write_text("")
        (here / "src" / "config.py").write_text(config_py.format(marker=str(marker)))
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))
    assert importlib.util.find_spec("src") is not None  # their package name is importable here
    loaded = cv.load_detector(path)
    assert not loaded.normalize and not marker.exists() and "src" not in sys.modules
    assert "their code ran" not in capsys.readouterr().out
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(logits(loaded, images), logits(expected, images), rtol=0, atol=1e-6)


class RunsShell:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_authors_checkpoint_with_code_is_refused(tmp_path):
    evil = RunsShell()
    evil.marker = tmp_path / "pwned"
    _, path = authors_checkpoint(tmp_path / "model.ckpt", payload=evil)
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        cv.load_detector(path)
    assert not evil.marker.exists()


DAMAGED = {  # how a model.ckpt gets damaged -> what the one line about it says
    "half": (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
             r"is truncated or corrupt \(not a complete zip/torch file"),
    "empty": (lambda path: path.write_bytes(b""), r"is an empty file \(0 bytes\)"),
    "random": (lambda path: path.write_bytes(bytes(range(7, 256)) * 9), r"is neither .*: not a torch file at all"),
    "json": (lambda path: path.write_text('{"state_dict": {}}'),
             r"is neither .*: not a torch file at all \(it starts with b'\{"),
    "list": (lambda path: torch.save([1, 2], path), r"is neither .*: expected keys .* but it holds a list"),
}


@pytest.mark.parametrize("how", DAMAGED)
def test_a_damaged_authors_checkpoint_is_one_clear_value_error(tmp_path, how):
    _, path = authors_checkpoint(tmp_path / "model.ckpt")
    damage, message = DAMAGED[how]
    damage(path)
    for read, fix in ((authors.read_authors_checkpoint, "download the authors' model.ckpt again"),
                      (cv.load_detector, "pass best.pt or last.pt written by train.py")):
        with pytest.raises(Exception) as e:
            read(path)
        assert type(e.value) is ValueError and "\n" not in str(e.value), str(e.value)
        assert re.match(f"{path} {message}", str(e.value)) and fix in str(e.value), str(e.value)


class Calls:
    """Pickles as a call of `function` with `args`: what a file made to run code holds."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function", [subprocess.Popen, eval, os.system])
def test_authors_checkpoint_calling_code_is_refused(tmp_path, function):
    marker = tmp_path / "ran"
    command = f"open({str(marker)!r}, 'w')" if function is eval else ["touch", str(marker)] \
        if function is subprocess.Popen else f"touch {marker}"
    _, path = authors_checkpoint(tmp_path / "model.ckpt", payload=Calls(function, command))
    name = r"(builtins\.eval|subprocess\.Popen|(posix|os|nt)\.system)"
    with pytest.raises(ValueError, match=f"^{path}: refusing to unpickle {name}: the file names a function that runs"):
        cv.load_detector(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins():
    data = pickle.dumps(eval)
    import io
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        authors.RestrictedUnpickler(io.BytesIO(data)).load()


def test_authors_download_through_mirror(tmp_path, monkeypatch, serve):
    expected, path = authors_checkpoint(tmp_path / "model.ckpt")
    server = serve({"model.ckpt": path.read_bytes()})
    monkeypatch.setenv("CLIP_MIRROR", server.url)
    try:
        loaded = cv.load_detector("authors", download_root=tmp_path / "cache")
    finally:
        server.close()
    assert (tmp_path / "cache" / "model.ckpt").is_file()
    assert torch.equal(loaded.head.weight, expected.head.weight)


def test_load_detector_on_a_file_that_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello world")
    with pytest.raises(ValueError, match="neither a checkpoint of this project nor the authors' model.ckpt"):
        cv.load_detector(tmp_path / "notes.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")  # a valid torch file of something else
    with pytest.raises(ValueError, match="authors' model.ckpt: expected keys"):
        cv.load_detector(tmp_path / "other.pt")
