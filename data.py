"""Frames of preprocessed face crops for training and validation (the paper's recipe).

Reads what preprocess.py writes (CONTRACT.md):
    <data>/<dataset>/<split>/index.csv          video_id,source,label,n_frames,path,file
    <data>/<dataset>/<split>/<source>/<video_id>/<frame_index>.png

    videos = load_videos("data", "ff++", "train")             # FF++ c23 real + 4 manipulations
    ds = FrameDataset(videos, train_transform(), seed=42)     # (image [3,224,224], label, video index)
    loader = make_loader(ds, 128, make_sampler(ds, shuffle=True, seed=42))

Reproducibility: the order of an epoch is a function of (seed, epoch) (DistributedSampler /
BalancedSampler), and every sample's augmentation is drawn from its own seed (seed, epoch, index),
so the same batch gets the same pixels whatever the number of workers, and a resumed run can skip
the first k batches of an epoch without loading them (SkipSampler).
"""
from __future__ import annotations

import csv
import itertools
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

import clip_vit

FFPP_SOURCES = ("youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")  # paper's training set


@dataclass
class Video:
    video_id: str
    source: str
    label: int  # 0 real, 1 fake
    folder: Path  # absolute path of the video's crop folder
    frames: list[Path]  # the crops used, sorted by frame index
    path: str = ""  # the crop folder relative to the split folder: <source>/<video_id>
    file: str = ""  # the source video, relative to the dataset root


def load_videos(
    data: str | Path = "data",
    dataset: str = "ff++",
    split: str = "train",
    sources: Sequence[str] | None = FFPP_SOURCES,
    max_frames: int | None = 32,
) -> list[Video]:
    """The videos of one split listed in index.csv, restricted to `sources` (None = all),
    each with up to `max_frames` crops (evenly spaced when a folder holds more; None = all)."""
    split_dir = Path(data) / dataset / split
    index = split_dir / "index.csv"
    from preprocess import command_for  # the command that writes what is missing
    command = command_for(dataset, data)
    if not index.is_file():
        raise SystemExit(f"no preprocessed data: {index} not found; run `{command}` first "
                         f"(or point --data at the folder that holds {dataset}/{split}/index.csv)")
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{index} lists no videos; re-run `{command}`")
    if not {"video_id", "source", "label", "path"} <= set(rows[0]) or any(r["label"] not in ("0", "1") for r in rows):
        raise SystemExit(f"{index} is not an index written by preprocess.py: expected columns "
                         f"video_id,source,label,n_frames,path,file with label 0 or 1; re-run `{command}`")
    found = sorted({r["source"] for r in rows})
    if sources is not None:
        missing = [s for s in sources if s not in found]
        if missing:
            raise SystemExit(f"{index}: no videos of source(s) {missing}; found {found}")
        rows = [r for r in rows if r["source"] in set(sources)]
    videos = []
    for r in rows:
        folder = split_dir / r["path"]
        frames = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not frames:
            raise SystemExit(f"{index} lists {r['path']} but {folder} holds no <frame>.png crops; re-run `{command}`")
        if max_frames is not None and len(frames) > max_frames:
            keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
            frames = [frames[k] for k in keep]
        videos.append(Video(r["video_id"], r["source"], int(r["label"]), folder.resolve(), frames, r["path"],
                            r.get("file", "")))
    return videos


def eval_transform(size: int = 224) -> Callable[[torch.Tensor], torch.Tensor]:
    """The CLIP transform (clip_vit.image_transform): uint8 [3, H, W] -> float [3, size, size],
    shortest side resized (bicubic), centre-cropped, normalised with the OpenAI mean/std."""
    return clip_vit.image_transform(size)


class GaussianBlur:
    """Gaussian blur, sigma ~ U(0.1, 2.0) drawn from torch's generator (the sample's seed), on a uint8
    [3, H, W] tensor with reflected borders, as torchvision's GaussianBlur does, but through OpenCV:
    torch's depthwise convolution takes ~7 ms per 256x256 crop in a single-threaded loader worker,
    OpenCV ~0.3 ms. Kernel 13 = 2*ceil(3*sigma_max)+1 covers +-3 sigma at the largest sigma, so the
    Gaussian is never truncated (**ours**: the kernel size is not published)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), kernel_size: int = 13):
        self.sigma, self.kernel_size = sigma, kernel_size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())     # [H, W, 3] uint8
        k = self.kernel_size
        blurred = cv2.GaussianBlur(hwc, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(blurred).permute(2, 0, 1)             # [3, H, W] uint8


def train_transform(size: int = 224) -> Callable[[torch.Tensor], torch.Tensor]:
    """The paper's augmentations on the uint8 256x256 crop, then the CLIP transform."""
    return T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        # bilinear (**ours**: v2's default nearest would add aliasing the test images do not have)
        T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                       interpolation=T.InterpolationMode.BILINEAR),
        GaussianBlur(sigma=(0.1, 2.0)),
        T.ColorJitter(brightness=0.1, contrast=0.1),
        T.JPEG(quality=(40, 100)),
        eval_transform(size),
    ])


def read_rgb(path: str | Path) -> torch.Tensor:
    """A PNG/JPEG crop as a uint8 [3, H, W] RGB tensor."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # [H, W, 3]
    if bgr is None:
        raise SystemExit(f"cannot read image {path}")
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)


class FrameDataset(Dataset):
    """One item per crop: (image float [3, S, S], label int, video index int into .videos)."""

    def __init__(self, videos: list[Video], transform: Callable[[torch.Tensor], torch.Tensor],
                 seed: int = 0):
        self.videos = videos
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.samples = [(v, f) for v, video in enumerate(videos) for f in video.frames]
        self.labels = torch.tensor([videos[v].label for v, _ in self.samples])  # [len]
        self.video_index = torch.tensor([v for v, _ in self.samples])  # [len]

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's DataLoader iterator is created (workers copy the dataset)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def sample_seed(self, index: int) -> int:
        return (((self.seed * 1_000_003) + self.epoch) * 1_000_003 + index) % (2**63)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        v, path = self.samples[index]
        image = read_rgb(path)  # uint8 [3, H, W]
        # torchvision's random transforms draw from torch's global generator: give this sample
        # its own seed inside a forked RNG so the draws depend only on (seed, epoch, index)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # v2.JPEG encodes with torchvision.io, which warns on every call that it is deprecated
            warnings.filterwarnings("ignore", message=".*TorchVision are deprecated", category=DeprecationWarning)
            torch.manual_seed(self.sample_seed(index))
            image = self.transform(image)
        return image, self.videos[v].label, v


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (off by default, the paper does not balance):
    each class gets the same expected share. Same (seed, epoch) -> same draws; under DDP every rank
    takes every world-th draw of the same sequence."""

    def __init__(self, labels: torch.Tensor, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.double().clamp_min(1))[labels]  # [len]
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(labels) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=g)
        return iter(draws[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class SkipSampler(Sampler[int]):
    """The first `skip` indices of `sampler` left out (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0):
        self.sampler, self.skip = sampler, skip

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def make_sampler(dataset: FrameDataset, shuffle: bool = True, balanced: bool = False, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> Sampler[int]:
    """This rank's share of an epoch; the order is a function of (seed, epoch) via set_epoch.
    A DistributedSampler also for one process (num_replicas=1), so single- and multi-GPU runs
    share one code path."""
    if balanced:
        return BalancedSampler(dataset.labels, num_replicas, rank, seed)
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker (base seed + id); python and numpy get the same seed, so any
    # transform that uses them is reproducible too
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: FrameDataset, batch_size: int, sampler: Sampler[int] | None = None,
                num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      worker_init_fn=seed_worker, generator=g, pin_memory=pin_memory,
                      persistent_workers=False, drop_last=False)
