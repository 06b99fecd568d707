"""clip_vit.py: OpenAI equivalence, size inference, downloads, tokenizer, detector, checkpoints."""
import contextlib
import enum
import gzip
import http.server
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import sysconfig
import threading
import types
from pathlib import Path

import pytest
import torch

import clip_vit as cv
from util import authors, checkpoint, download
from util.tokenizer import Tokenizer

REFERENCE = Path(sysconfig.get_paths()["purelib"]) / "clip"  # OpenAI's code, from the openai-clip wheel


def reference(name: str):
    """Imports one file of OpenAI's package by path: its __init__ needs pkg_resources, gone from setuptools."""
    spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", REFERENCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the model against OpenAI's

def test_tiny_clip_equals_openai_reference():
    ref = reference("model").build_model(cv.tiny_clip(seed=1).state_dict()).float().eval()
    ours = cv.build_model(ref.state_dict()).eval()
    tokenizer = Tokenizer(REFERENCE / "bpe_simple_vocab_16e6.txt.gz")
    images, text = torch.randn(2, 3, 224, 224), cv.tokenize(["a photo of a real face", "a fake"], tokenizer=tokenizer)
    with torch.no_grad():
        for a, b in zip(ref(images, text), ours(images, text)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref.encode_text(text), ours.encode_text(text), rtol=1e-5, atol=1e-5)


def test_vit_l14_image_tower_equals_openai_reference():
    torch.manual_seed(0)
    ref = reference("model").VisionTransformer(224, 14, 1024, 24, 16, 768).eval()
    ours = cv.build_visual({"visual." + k: v for k, v in ref.state_dict().items()}).eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), ref(image), rtol=1e-5, atol=1e-5)


SIZES = {  # name: (embed_dim, resolution, vision layers, width, patch, text width, text layers)
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
}


@pytest.mark.parametrize("name", SIZES)
def test_build_model_infers_sizes(name):
    embed, res, layers, width, patch, text_width, text_layers = SIZES[name]
    with torch.device("meta"):  # OpenAI's own class gives the real shapes; meta allocates nothing
        ref = reference("model").CLIP(embed, res, layers, width, patch, 77, 49408, text_width, text_width // 64,
                                      text_layers)
    sd = ref.state_dict() | {"input_resolution": torch.tensor(res), "context_length": torch.tensor(77),
                             "vocab_size": torch.tensor(49408)}
    model = cv.build_model(sd)
    assert model.visual.input_resolution == res and model.visual.width == width
    assert len(model.visual.transformer.resblocks) == layers and len(model.transformer.resblocks) == text_layers
    assert model.visual.conv1.kernel_size == (patch, patch)
    assert model.visual.transformer.resblocks[0].attn.heads == width // 64
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def vit_l14_meta() -> cv.VisionTransformer:
    with torch.device("meta"):
        return cv.VisionTransformer(224, 14, 1024, 24, 16, 768)


def test_vit_l14_parameter_counts():
    visual = vit_l14_meta()
    assert sum(p.numel() for p in visual.parameters()) == 303_966_208
    detector = cv.DeepfakeDetector(visual)
    assert cv.set_trainable(detector, "ln") == 104_450
    trainable = [n for n, p in detector.named_parameters() if p.requires_grad]
    assert len(trainable) == 50 * 2 + 2
    assert all(".ln_" in n or n.startswith("head.") for n in trainable)
    assert cv.set_trainable(detector, "linear-probe") == 2050
    assert cv.set_trainable(detector, "full") == 303_966_208 - 1024 * 768 + 2050  # all but the unused proj


def test_frozen_weights_get_no_gradient():
    detector = cv.DeepfakeDetector(cv.tiny_visual())
    cv.set_trainable(detector, "ln")
    detector(torch.randn(2, 3, 224, 224)).sum().backward()
    for name, p in detector.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_detector_features_are_unit_norm_ln_post_class_token():
    visual = cv.tiny_visual(output_dim=32)
    detector = cv.DeepfakeDetector(visual).eval()
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        f = detector.features(images)
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(f, torch.nn.functional.normalize(visual.forward_features(images), dim=-1))
        assert detector(images).shape == (3, 2)
        assert cv.DeepfakeDetector(visual, normalize=False).features(images).norm(dim=-1).sub(1).abs().max() > 1e-3


def test_grad_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same head
        detector = cv.DeepfakeDetector(cv.tiny_visual())
        cv.set_trainable(detector, "ln")
        detector.visual.transformer.grad_checkpointing = ckpt
        detector(torch.ones(1, 3, 224, 224)).sum().backward()
        grads.append(detector.visual.ln_pre.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_image_transform_shape_and_normalisation():
    image = torch.full((3, 256, 320), 255, dtype=torch.uint8)
    x = cv.image_transform()(image)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 0, 0], (1 - torch.tensor(cv.OPENAI_MEAN)) / torch.tensor(cv.OPENAI_STD))


# ---------------------------------------------------------------- loading OpenAI's files

class WithArchiveAttributes(torch.nn.Module):
    """OpenAI's TorchScript archives carry input_resolution etc. next to the parameters."""

    def __init__(self, model):
        super().__init__()
        for key, value in model.named_children():
            self.add_module(key, value)
        for key, value in model.named_parameters(recurse=False):
            self.register_parameter(key, value)
        for key in ("input_resolution", "context_length", "vocab_size"):
            self.register_buffer(key, torch.tensor(224))
        self.model = [model]

    def forward(self, image, text):
        return self.model[0](image, text)


def test_load_plain_state_dict_and_torchscript_archive(tmp_path):
    model = cv.tiny_clip(seed=3).eval()
    images, text = torch.randn(2, 3, 224, 224), torch.randint(1, 400, (2, 77))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    archive = torch.jit.trace(WithArchiveAttributes(model), (images, text), check_trace=False)
    archive.save(str(tmp_path / "openai.pt"))
    assert "input_resolution" in torch.jit.load(str(tmp_path / "openai.pt")).state_dict()
    with torch.no_grad():
        expected = model(images, text)
        for file in ("plain.pt", "openai.pt"):
            loaded = cv.load(str(tmp_path / file))
            for a, b in zip(expected, loaded(images, text)):
                assert torch.equal(a, b), file


def test_load_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown CLIP model 'ViT-X/99'.*ViT-L/14"):
        cv.load("ViT-X/99")


# ---------------------------------------------------------------- downloads over loopback HTTP

class Server:
    """Serves `files` on 127.0.0.1; a file named in `truncate` is cut off after half its bytes."""

    def __init__(self, files: dict[str, bytes], truncate=()):
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                data = files.get(self.path.rsplit("/", 1)[-1])
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                name = self.path.rsplit("/", 1)[-1]
                self.wfile.write(data[: len(data) // 2] if name in truncate else data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload():
    import hashlib
    data = os.urandom(3 << 20)
    return data, hashlib.sha256(data).hexdigest()


def test_download_caches_and_verifies(tmp_path, payload, capsys):
    data, sha = payload
    server = Server({"weights.pt": data})
    try:
        path = download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha)
        assert path.read_bytes() == data and "weights.pt" in capsys.readouterr().err  # tqdm bar
        assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha) == path
        assert server.requests == 1  # second call hit the cache
        path.write_bytes(b"corrupt")  # a damaged cache is fetched again
        assert download.download(f"{server.url}/x/weights.pt", tmp_path, sha256=sha).read_bytes() == data
        assert server.requests == 2
    finally:
        server.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


def test_download_wrong_hash_and_truncation_leave_nothing(tmp_path, payload):
    data, sha = payload
    server = Server({"weights.pt": data, "cut.pt": data}, truncate={"cut.pt"})
    try:
        with pytest.raises(download.DownloadError, match="SHA-256"):
            download.download(f"{server.url}/weights.pt", tmp_path, sha256="0" * 64)
        with pytest.raises(download.DownloadError, match="could not download"):
            download.download(f"{server.url}/cut.pt", tmp_path, sha256=sha)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_named_model_downloads_through_mirror_and_offline_error(tmp_path, monkeypatch):
    model = cv.tiny_clip(seed=4)
    buffer = tmp_path / "src.pt"
    torch.save(model.state_dict(), buffer)
    data = buffer.read_bytes()
    server = Server({"ViT-B-32.pt": data})
    monkeypatch.setenv("CLIP_MIRROR", server.url)
    try:  # the published SHA-256 does not match our tiny file: refused, nothing cached
        with pytest.raises(download.DownloadError, match="expected 40d36571"):
            cv.load("ViT-B/32", download_root=tmp_path / "cache")
    finally:
        server.close()
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setenv("CLIP_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(download.DownloadError, match=r"could not download http://127.0.0.1:9/ViT-L-14.pt .*by hand"):
        cv.load("ViT-L/14", download_root=tmp_path / "cache")


def test_xdg_cache_home_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert download.cache_dir() == tmp_path / "clip"
    assert download.cache_dir(tmp_path / "mine") == tmp_path / "mine"


# ---------------------------------------------------------------- tokenizer

def small_vocab(path: Path) -> Path:
    merges = ["h e", "l l", "he ll", "hell o</w>", "w o", "wo r", "wor l", "worl d</w>"]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(merges) + "\n")
    return path


def test_tokenizer_small_vocabulary(tmp_path):
    tok = Tokenizer(small_vocab(tmp_path / "vocab.txt.gz"))
    assert len(tok.encoder) == 512 + 8 + 2
    hello, world = tok.encoder["hello</w>"], tok.encoder["world</w>"]
    assert tok.encode("  Hello   WORLD ") == [hello, world]
    assert tok.decode([hello, world]) == "hello world "
    assert tok.encode("hi!") == [tok.encoder["h"], tok.encoder["i</w>"], tok.encoder["!</w>"]]
    tokens = cv.tokenize(["hello world", "hello"], context_length=6, tokenizer=tok)
    assert tokens.tolist() == [[tok.sot, hello, world, tok.eot, 0, 0], [tok.sot, hello, tok.eot, 0, 0, 0]]
    assert tokens.argmax(-1).tolist() == [3, 2]  # encode_text reads the feature at the end-of-text token
    with pytest.raises(ValueError, match="more than the context length 3"):
        cv.tokenize("hello world", context_length=3, tokenizer=tok)
    assert cv.tokenize("hello world", context_length=3, truncate=True, tokenizer=tok).tolist() == [
        [tok.sot, hello, tok.eot]]


def test_tokenizer_equals_openai_on_its_vocabulary():
    ours = Tokenizer(REFERENCE / "bpe_simple_vocab_16e6.txt.gz")
    ref = reference("simple_tokenizer").SimpleTokenizer(str(REFERENCE / "bpe_simple_vocab_16e6.txt.gz"))
    assert len(ours.encoder) == 49408
    for text in ["a photo of a real face", "Hello,   WORLD!! naïve café &amp; 日本語 don't", "deepfake" * 9, "3.14"]:
        assert ours.encode(text) == ref.encode(text)
        assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))
    assert download.sha256_of(REFERENCE / "bpe_simple_vocab_16e6.txt.gz") == download.BPE_SHA256


# ---------------------------------------------------------------- Hugging Face names

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


# ---------------------------------------------------------------- this project's checkpoints

def test_checkpoint_round_trip_and_base_check(tmp_path):
    detector = cv.build_detector("tiny")
    cv.set_trainable(detector, "ln")
    with torch.no_grad():
        for p in detector.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    checkpoint.save_checkpoint(tmp_path / "best.pt", detector, {"clip": "tiny", "normalize": True}, epoch=3)
    ckpt = checkpoint.load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == 3 and set(ckpt["state_dict"]) == {n for n, p in detector.named_parameters() if p.requires_grad}
    loaded = cv.load_detector(tmp_path / "best.pt")
    for (n, a), b in zip(detector.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    # the same tensors over other base weights are refused
    other = cv.DeepfakeDetector(cv.tiny_visual(seed=1))
    with pytest.raises(ValueError, match="trained on CLIP weights with SHA-256 .* pass the CLIP weights"):
        checkpoint.apply_checkpoint(other, ckpt, "tiny seed 1")
    torch.save(other.visual.state_dict() | {}, tmp_path / "other.pt")
    torch.save({"visual." + k: v for k, v in other.visual.state_dict().items()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="different|SHA-256"):
        cv.load_detector(tmp_path / "best.pt", clip=str(tmp_path / "other.pt"))


def test_vit_l14_checkpoint_is_small(tmp_path):
    torch.manual_seed(0)
    detector = cv.DeepfakeDetector(cv.VisionTransformer(224, 14, 1024, 24, 16, 768))
    cv.set_trainable(detector, "ln")
    checkpoint.save_checkpoint(tmp_path / "l14.pt", detector, {"clip": "ViT-L/14", "normalize": True})
    assert (tmp_path / "l14.pt").stat().st_size < 1_000_000


# ---------------------------------------------------------------- the authors' model.ckpt

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
    sizes = cv._vision_sizes({"visual." + k: v for k, v in vit_l14_meta().state_dict().items()})
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


def test_authors_download_through_mirror(tmp_path, monkeypatch):
    expected, path = authors_checkpoint(tmp_path / "model.ckpt")
    server = Server({"model.ckpt": path.read_bytes()})
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
