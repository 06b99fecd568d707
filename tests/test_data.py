"""data.py on a tiny synthetic preprocessed tree (the layout preprocess.py writes)."""
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2 as T
import cv2
import numpy as np

import clip_vit
import data
from util.layouts import FFPP_SOURCES, DataError, load_videos


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_tree) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"), size=64,
                     sources=("youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter"),
                     frames=(0, 2, 9, 10, 18))


def test_load_videos_default_sources_and_frames(tree):
    videos = load_videos(tree, "ff++", "train")
    assert {v.source for v in videos} == set(FFPP_SOURCES)  # FaceShifter not by default
    assert len(videos) == 10
    assert [v.label for v in videos if v.source == "youtube"] == [0, 0]
    assert all(v.label == 1 for v in videos if v.source != "youtube")
    assert [p.name for p in videos[0].frames] == ["0.png", "2.png", "9.png", "10.png", "18.png"]
    some = load_videos(tree, "ff++", "val", sources=["youtube", "FaceShifter"], max_frames=3)
    assert {v.source for v in some} == {"youtube", "FaceShifter"}
    assert [p.name for p in some[0].frames] == ["0.png", "9.png", "18.png"]  # evenly spaced
    assert len(load_videos(tree, sources=None)) == 12


def test_missing_data_names_the_preprocess_command(tmp_path, tree):
    with pytest.raises(DataError, match="python preprocess.py --dataset ff\\+\\+ --root datasets/FaceForensics\\+\\+"):
        load_videos(tmp_path, "ff++", "train")
    with pytest.raises(DataError, match="FaceShifterX"):
        load_videos(tree, sources=["FaceShifterX"])
    with pytest.raises(DataError, match="--dataset ff\\+\\+ --compression c40 --root"):
        load_videos(tmp_path, "ff++-c40", "test")


def test_bad_index_is_one_clear_error(tmp_path):
    split = tmp_path / "cdfv2" / "test"
    split.mkdir(parents=True)
    for text, message in (("video_id,source,label,n_frames,path,file\n", "lists no videos"),
                          ("video_id,source,label,n_frames,path,file\na,real,yes,1,real/a,\n", "label 0 or 1"),
                          ("video_id,source\na,real\n", "expected columns")):
        (split / "index.csv").write_text(text)
        with pytest.raises(DataError, match=message) as e:
            load_videos(tmp_path, "cdfv2", "test", sources=None)
        assert "python preprocess.py --dataset cdfv2 --root datasets/Celeb-DF-v2" in str(e.value)


def test_items_and_eval_transform(tree):
    videos = load_videos(tree, "ff++", "val")
    ds = data.FrameDataset(videos, data.eval_transform())
    assert len(ds) == 10 * 5
    image, label, v = ds[7]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert (label, v) == (videos[1].label, 1)
    # the CLIP transform, written out
    raw = data.read_rgb(videos[1].frames[2]).float() / 255
    ref = T.functional.resize(raw, 224, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    ref = (ref - torch.tensor(clip_vit.OPENAI_MEAN)[:, None, None]) / torch.tensor(clip_vit.OPENAI_STD)[:, None, None]
    assert (image - ref).abs().mean() < 0.01  # uint8 vs float resize: rounding and clipping only


def test_augmentation_is_per_sample_seeded(tree):
    videos = load_videos(tree, "ff++", "train")
    ds = data.FrameDataset(videos, data.train_transform(), seed=3)
    clean = data.FrameDataset(videos, data.eval_transform())
    state = torch.get_rng_state()
    a, b = ds[4][0], ds[4][0]
    assert torch.equal(a, b)  # same (seed, epoch, index)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not torch.allclose(a, clean[4][0], atol=0.05)  # augmentations did something
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0], a)  # new epoch, new draw


def test_loader_same_batches_with_and_without_workers(tree):
    videos = load_videos(tree, "ff++", "train")

    def batches(workers):
        ds = data.FrameDataset(videos, data.train_transform(112), seed=1)
        sampler = data.make_sampler(ds, shuffle=True, seed=1)
        ds.set_epoch(2)
        sampler.set_epoch(2)
        return list(data.make_loader(ds, 8, sampler, num_workers=workers))

    b0, b2 = batches(0), batches(2)
    assert len(b0) == len(b2) == 7
    for x, y in zip(b0, b2):
        assert all(torch.equal(p, q) for p, q in zip(x, y))


def test_samplers(tree):
    ds = data.FrameDataset(load_videos(tree), data.eval_transform())
    n = len(ds)
    one = data.make_sampler(ds, seed=5)
    one.set_epoch(1)
    order = list(one)
    assert sorted(order) == list(range(n))
    one.set_epoch(2)
    assert list(one) != order  # the order changes with the epoch
    bal = data.make_sampler(ds, balanced=True, seed=0)
    bal.set_epoch(0)
    drawn = list(bal)
    assert len(drawn) == len(bal) == n
    big = data.BalancedSampler(torch.tensor([0] * 10 + [1] * 90), seed=0)
    drawn = torch.tensor([0] * 10 + [1] * 90)[torch.tensor(list(big))]
    assert 25 <= int((drawn == 0).sum()) <= 75  # ~50 % real instead of 10 %


def test_gaussian_blur_equals_torchvision():
    import torchvision.transforms.v2.functional as TF
    image = torch.from_numpy(cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8),
                                              (0, 0), 2)).permute(2, 0, 1)          # [3, 64, 80] uint8
    for seed in range(3):
        torch.manual_seed(seed)
        ours = data.GaussianBlur()(image)
        torch.manual_seed(seed)
        sigma = torch.empty(1).uniform_(0.1, 2.0).item()  # the same draw torchvision's transform makes
        reference = TF.gaussian_blur(image, [13, 13], [sigma, sigma])
        assert ours.shape == image.shape and ours.dtype == torch.uint8
        assert (ours.int() - reference.int()).abs().max() <= 1


def test_predict_feeds_the_towers_own_input_size():
    # ViT-L/14@336px takes 336 px: predict must resize to the tower's size, not a fixed 224
    detector = clip_vit.DeepfakeDetector(clip_vit.tiny_visual(input_resolution=28)).eval()
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    got = data.predict(detector, crops, torch.device("cpu"), batch_size=2)
    transform = data.eval_transform(28)
    with torch.no_grad():
        want = detector(torch.stack([transform(data.read_crop(c)) for c in crops])).softmax(-1)[:, 1].double().numpy()
    assert np.allclose(got, want, atol=1e-6)
