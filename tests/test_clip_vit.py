"""clip_vit.py: the model equals OpenAI's, sizes come from the tensors, LN-tuning, the detector, loading."""

import pytest
import torch

import clip_vit as cv
from util.tokenizer import Tokenizer


"""clip_vit.py: OpenAI equivalence, size inference, downloads, tokenizer, detector, checkpoints."""


def test_tiny_clip_equals_openai_reference(openai_clip):
    ref = openai_clip.model.build_model(cv.tiny_clip(seed=1).state_dict()).float().eval()
    ours = cv.build_model(ref.state_dict()).eval()
    tokenizer = Tokenizer(openai_clip.bpe)
    images, text = torch.randn(2, 3, 224, 224), cv.tokenize(["a photo of a real face", "a fake"], tokenizer=tokenizer)
    with torch.no_grad():
        for a, b in zip(ref(images, text), ours(images, text)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref.encode_text(text), ours.encode_text(text), rtol=1e-5, atol=1e-5)


def test_vit_l14_image_tower_equals_openai_reference(openai_clip):
    torch.manual_seed(0)
    ref = openai_clip.model.VisionTransformer(224, 14, 1024, 24, 16, 768).eval()
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
def test_build_model_infers_sizes(name, openai_clip):
    embed, res, layers, width, patch, text_width, text_layers = SIZES[name]
    with torch.device("meta"):  # OpenAI's own class gives the real shapes; meta allocates nothing
        ref = openai_clip.model.CLIP(embed, res, layers, width, patch, 77, 49408, text_width, text_width // 64,
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
