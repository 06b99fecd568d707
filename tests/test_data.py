"""data.py on a tiny synthetic preprocessed tree (the layout preprocess.py writes): the videos, the
augmentations, the batches of N processes, and the scores and metrics evaluate.py and train.py share."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader

import clip_vit
import data
from util.layouts import FFPP_SOURCES, DataError, load_videos


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_tree) -> Path:
    return make_tree(tmp_path_factory.mktemp("data"), size=64,
                     sources=("youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures",
                              "FaceShifter"),
                     frames=(0, 2, 9, 10, 18))


def test_load_videos_default_sources_and_frames(tree):
    videos = load_videos(tree, "ff++", "train")
    assert {v.source for v in videos} == set(FFPP_SOURCES) and len(videos) == 10  # FaceShifter not by default
    assert [v.label for v in videos if v.source == "youtube"] == [0, 0]
    assert all(v.label == 1 for v in videos if v.source != "youtube")
    assert [p.name for p in videos[0].frames] == ["0.png", "2.png", "9.png", "10.png", "18.png"]
    some = load_videos(tree, "ff++", "val", sources=["youtube", "FaceShifter"], max_frames=3)
    assert {v.source for v in some} == {"youtube", "FaceShifter"}
    assert [p.name for p in some[0].frames] == ["0.png", "9.png", "18.png"]  # evenly spaced
    assert len(load_videos(tree, sources=None)) == 12


def test_augmentation_is_per_sample_seeded(tree):
    videos = load_videos(tree, "ff++", "train")
    ds = data.FrameDataset(videos, data.train_transform(), seed=3)
    clean = data.FrameDataset(videos, clip_vit.image_transform(224))
    state = torch.get_rng_state()
    a, label, v = ds[7]
    assert a.shape == (3, 224, 224) and (label, v) == (videos[1].label, 1)
    assert torch.equal(ds[7][0], a)  # same (seed, epoch, index)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not torch.allclose(a, clean[7][0], atol=0.05)  # augmentations did something
    ds.epoch = 1
    assert not torch.equal(ds[7][0], a)  # new epoch, new draw


def test_loader_gives_the_same_batches_with_and_without_workers(tree):
    ds = data.FrameDataset(load_videos(tree, "ff++", "train"), data.train_transform(112), seed=1)
    ds.epoch = 2
    batches = data.global_batches(data.epoch_order(ds.labels, seed=1, epoch=2), 8)
    b0, b2 = (list(DataLoader(ds, batch_sampler=batches, num_workers=workers)) for workers in (0, 2))
    assert len(b0) == len(b2) == 6  # 50 frames: 6 whole batches of 8
    for x, y in zip(b0, b2):
        assert all(torch.equal(p, q) for p, q in zip(x, y))


def test_epoch_orders():
    labels = torch.tensor([0] * 10 + [1] * 90)
    order = data.epoch_order(labels, seed=5, epoch=1)
    assert sorted(order) == list(range(100)) and order == data.epoch_order(labels, seed=5, epoch=1)
    assert order != data.epoch_order(labels, seed=5, epoch=2) != data.epoch_order(labels, seed=6, epoch=1)
    drawn = labels[data.epoch_order(labels, seed=0, epoch=0, balanced=True)]
    assert len(drawn) == 100 and 25 <= int((drawn == 0).sum()) <= 75  # ~50 % real instead of 10 %


@pytest.mark.parametrize("batch, world", [(8, 2), (7, 2), (3, 3), (5, 4)])
def test_n_processes_load_the_single_process_batches(batch, world):
    order = data.epoch_order(torch.zeros(50, dtype=torch.long), seed=5, epoch=1)
    one = data.global_batches(order, batch)
    assert [len(b) for b in one] == [batch] * (50 // batch)  # whole batches; the rest waits
    shares = [data.global_batches(order, batch, world, rank) for rank in range(world)]
    assert [sum(parts, []) for parts in zip(*shares)] == one
    assert all(len(b) >= 1 for s in shares for b in s)  # no empty share
    resumed = [data.global_batches(order, batch, world, rank, skip=2) for rank in range(world)]
    assert [sum(parts, []) for parts in zip(*resumed)] == one[2:]


def test_gaussian_blur_equals_torchvision():
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    image = torch.from_numpy(cv2.GaussianBlur(noise, (0, 0), 2)).permute(2, 0, 1)  # [3, 64, 80] uint8
    for seed in range(3):
        torch.manual_seed(seed)
        ours = data.gaussian_blur(image)
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
    transform = clip_vit.image_transform(28)
    with torch.no_grad():
        images = torch.stack([transform(data.read_crop(c)) for c in crops])
        want = detector(images).softmax(-1)[:, 1].double().numpy()
    assert np.allclose(got, want, atol=1e-6)


def test_score_videos_gives_every_frame_and_each_videos_mean(tree, tmp_path):
    detector = clip_vit.build_detector("tiny")
    videos = load_videos(tree, "ff++", "val", max_frames=3)[:4]
    frame_p, video_p = data.score_videos(detector, videos, torch.device("cpu"), 5, 0, "fp32")
    alone = [data.predict(detector, v.frames, torch.device("cpu")) for v in videos]
    assert np.allclose(frame_p, np.concatenate(alone), atol=1e-6) and frame_p.shape == (12,)
    assert np.allclose(video_p, [p.mean() for p in alone], atol=1e-6)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    videos[1].frames[0] = broken
    with pytest.raises(DataError, match="broken.png"):
        data.score_videos(detector, videos, torch.device("cpu"), 5, 0, "fp32")


def test_metrics_by_hand():
    m = data.compute_metrics([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9])
    assert (m["auroc"], m["acc"], m["n_real"], m["n_fake"]) == (0.75, 0.5, 2, 2)
    assert data.compute_metrics([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9], threshold=0.3)["acc"] == 0.75
    one = data.compute_metrics([1, 1, 1], [0.9, 0.4, 0.7])
    assert one["auroc"] is None and one["acc"] == pytest.approx(2 / 3)
