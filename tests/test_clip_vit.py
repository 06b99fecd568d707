"""clip_vit.py: the model equals OpenAI's, sizes come from the tensors, LN-tuning, the detector in bf16."""
import pytest
import torch

import clip_vit as cv
from util.tokenizer import Tokenizer


def test_tiny_clip_equals_openai_reference(openai_clip):
    ref = openai_clip.model.build_model(cv.tiny_clip(seed=1).state_dict()).float().eval()
    ours = cv.build_model(ref.state_dict()).eval()
    text = cv.tokenize(["a photo of a real face", "a fake"], tokenizer=Tokenizer(openai_clip.bpe))
    images = torch.randn(2, 3, 224, 224)
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


@pytest.mark.parametrize("sizes", [(512, 224, 12, 768, 32, 512, 12), (512, 224, 12, 768, 16, 512, 12),
                                   (768, 224, 24, 1024, 14, 768, 12), (768, 336, 24, 1024, 14, 768, 12)],
                         ids=["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"])
def test_build_model_infers_sizes(sizes, openai_clip):
    embed, res, layers, width, patch, text_width, text_layers = sizes
    with torch.device("meta"):  # OpenAI's own class gives the real shapes; meta allocates nothing
        ref = openai_clip.model.CLIP(embed, res, layers, width, patch, 77, 49408, text_width,
                                     text_width // 64, text_layers)
    model = cv.build_model(ref.state_dict() | {"input_resolution": torch.tensor(res)})  # archives have it
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}
    assert model.visual.transformer.resblocks[0].attn.heads == width // 64


def test_ln_tuning_trains_only_the_layernorms_and_the_head():
    with torch.device("meta"):
        detector = cv.DeepfakeDetector(cv.VisionTransformer(224, 14, 1024, 24, 16, 768))
    assert cv.set_trainable(detector, "ln") == 104_450  # ViT-L/14: 50 LayerNorms + Linear(1024, 2)
    trainable = {n for n, p in detector.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in detector.named_parameters() if ".ln_" in n or n.startswith("head.")}
    image = torch.linspace(-1, 1, 3 * 224 * 224).view(1, 3, 224, 224)
    for tuning in cv.TUNING:  # a backward reaches exactly the trainable tensors, recomputed blocks or not
        grads = []
        for recompute in (False, True):
            torch.manual_seed(0)  # the same head
            tiny = cv.DeepfakeDetector(cv.tiny_visual(output_dim=32))
            cv.set_trainable(tiny, tuning)
            tiny.visual.transformer.grad_checkpointing = recompute
            tiny(image).sum().backward()
            grads.append({n: p.grad for n, p in tiny.named_parameters() if p.grad is not None})
            assert set(grads[-1]) == {n for n, p in tiny.named_parameters() if p.requires_grad}, tuning
        torch.testing.assert_close(grads[0], grads[1])


def test_detector_reads_the_unit_norm_ln_post_class_token():
    visual = cv.tiny_visual(output_dim=32)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ln_post = visual.forward_features(images)
        unit = ln_post / ln_post.norm(dim=1, keepdim=True)
        torch.testing.assert_close(cv.DeepfakeDetector(visual).features(images), unit)
        torch.testing.assert_close(cv.DeepfakeDetector(visual, normalize=False).features(images), ln_post)


def test_bf16_autocast_does_not_round_p_fake():
    """The head runs in fp32 on the bf16 features: as many distinct scores as in fp32."""
    detector = cv.DeepfakeDetector(cv.tiny_visual(seed=3)).eval()
    images = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        detector.head.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))  # p_fake near 0.5
        fp32 = detector(images).softmax(-1)[:, 1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = detector(images).softmax(-1)[:, 1]
    assert bf16.dtype == torch.float32 and len(fp32.unique()) == len(bf16.unique()) == len(images)
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=2e-2)


def test_weights_cast_once_score_as_autocast_casts_them():
    """cast_for_inference stores the matrices as autocast would cast them on each call: bitwise the same
    p_fake, with the LayerNorms left in fp32."""
    detector = cv.DeepfakeDetector(cv.tiny_visual(seed=3)).eval()
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = detector(images)
        cv.cast_for_inference(detector.visual, torch.bfloat16)
        assert torch.equal(detector(images), expected)
    dtypes = {n: p.dtype for n, p in detector.named_parameters()}
    assert dtypes["visual.transformer.resblocks.0.mlp.c_fc.weight"] == torch.bfloat16
    assert {d for n, d in dtypes.items() if ".ln_" in n or n.startswith("head.")} == {torch.float32}


def test_load_plain_state_dict_and_torchscript_archive(tmp_path):
    model = cv.tiny_clip(seed=3).eval()
    images, text = torch.randn(2, 3, 224, 224), torch.randint(1, 400, (2, 77))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    for key in ("input_resolution", "context_length", "vocab_size"):  # beside the tensors, as OpenAI's
        model.register_buffer(key, torch.tensor(224))
    torch.jit.trace(model, (images, text), check_trace=False).save(str(tmp_path / "openai.pt"))
    with torch.no_grad():
        expected = model(images, text)
        for file in ("plain.pt", "openai.pt"):
            loaded = cv.load(str(tmp_path / file))
            for a, b in zip(expected, loaded(images, text)):
                assert torch.equal(a, b), file


def test_compiled_tower_scores_and_trains_as_eager():
    """--compile: the tower compiled in place scores (frozen) and takes a gradient (LN-tuning) as in
    eager mode, and its state_dict keys (the checkpoint format) stay."""
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 1])
    eager, compiled = (cv.DeepfakeDetector(cv.tiny_visual(layers=1)) for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    keys = list(eager.state_dict())
    with torch.inference_mode():
        expected = eager.eval()(images)
        cv.compile_tower(compiled.visual, frozen=True)
        torch.testing.assert_close(compiled.eval()(images), expected, rtol=1e-5, atol=1e-5)
    assert list(compiled.state_dict()) == keys
    losses, grads = [], []
    cv.compile_tower(compiled.visual, frozen=False)  # as train.py: the LayerNorms train
    for detector in (eager, compiled):
        cv.set_trainable(detector, "ln")
        losses.append(torch.nn.functional.cross_entropy(detector.train()(images), labels))
        losses[-1].backward()
        grads.append({n: p.grad for n, p in detector.named_parameters() if p.requires_grad})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)
