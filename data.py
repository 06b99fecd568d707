"""Preprocessed face crops -> tensors: the paper's augmentations, the frame dataset and its loader,
the video score (the mean p_fake of its frames) and the metrics (the same code for train.py's
validation and evaluate.py).

Reads what preprocess.py writes (util/layouts.py lists it):
    <data>/<dataset>/<split>/index.csv          video_id,source,label,n_frames,path,file
    <data>/<dataset>/<split>/<source>/<video_id>/<frame_index>.png

    videos = util.layouts.load_videos("data", "ff++", "train")  # FF++ c23 real + 4 manipulations
    ds = FrameDataset(videos, train_transform(), seed=42)     # (image [3,224,224], label, video index)
    loader = make_loader(ds, 128, make_sampler(ds, shuffle=True, seed=42))

Reproducibility: the order of an epoch is a function of (seed, epoch) (make_sampler), and every
sample's augmentation is drawn from its own seed (seed, epoch, index), so the same batch gets the
same pixels whatever the number of workers or processes (util.loading.GlobalBatchSampler gives
each process its share of the single-process batch), and a resumed run skips the first k batches
of an epoch without loading them.
"""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler
from tqdm import tqdm

import clip_vit
from util.layouts import DataError, Video
from util.loading import GlobalBatchSampler, collate, seed_worker
from util.precision import autocast
from util.signals import ignore_stop_signals


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


def read_crop(crop: str | Path | np.ndarray) -> torch.Tensor | None:
    """A crop file (PNG/JPEG) or an RGB array [H, W, 3] as a uint8 [3, H, W] RGB tensor; None
    when the file cannot be read as an image."""
    if not isinstance(crop, np.ndarray):
        bgr = cv2.imread(str(crop), cv2.IMREAD_COLOR)  # [H, W, 3] BGR or None
        if bgr is None:
            return None
        crop = bgr[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)


def read_rgb(path: str | Path) -> torch.Tensor:
    """A crop file as uint8 [3, H, W] RGB; DataError naming the file when it cannot be read."""
    image = read_crop(path)
    if image is None:
        raise DataError(f"cannot read crop {path} as an image; re-run preprocess.py for its video")
    return image


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
    len(labels) draws per epoch, each class with the same expected share. Same (seed, epoch) ->
    same draws."""

    def __init__(self, labels: torch.Tensor, seed: int = 0):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.double().clamp_min(1))[labels]  # [len]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), True, generator=g).tolist())

    def __len__(self) -> int:
        return len(self.weights)


def make_sampler(dataset: FrameDataset, shuffle: bool = True, balanced: bool = False, seed: int = 0) -> Sampler[int]:
    """The order of one epoch over the whole dataset, a function of (seed, epoch) via set_epoch
    (with one process, a DistributedSampler of one replica is a seeded permutation)."""
    if balanced:
        return BalancedSampler(dataset.labels, seed)
    return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)


def make_loader(dataset: FrameDataset, batch_size: int = 1, sampler: Sampler[int] | None = None,
                num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                batch_sampler: GlobalBatchSampler | None = None, image_size: int = 224) -> DataLoader:
    """Batches of (images [B, 3, S, S], labels [B], video indices [B]): the lists `batch_sampler`
    gives (train.py's, one share of each global batch), else `batch_size` items of `sampler` at a
    time (the same loader, one process; batch_size and sampler unused with batch_sampler)."""
    batch_sampler = batch_sampler or GlobalBatchSampler(sampler or SequentialSampler(dataset), batch_size)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
                      collate_fn=partial(collate, image_size=image_size))


# ----------------------------------------------------------------------------- scoring a split

class Crops(Dataset):
    """Crop files or RGB arrays -> (CLIP-transformed image [3, S, S], readable). An unreadable file
    gives zeros and readable=False rather than an exception, so that the main process can name the
    files (an exception inside a loader worker surfaces as a long traceback)."""

    def __init__(self, items: list, size: int = 224):
        self.items, self.size = items, size
        self.transform = eval_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        image = read_crop(self.items[i])
        if image is None:
            return torch.zeros(3, self.size, self.size), False
        return self.transform(image), True


@torch.inference_mode()
def predict(model: torch.nn.Module, items: list, device: torch.device, batch_size: int = 64,
            workers: int = 0, desc: str = "frames", precision: str | None = None) -> np.ndarray:
    """p_fake = softmax(logits)[:, 1] of each crop (file or RGB array), in order: float64 [len(items)].
    precision "bf16" or "fp32" (util.precision.resolve_precision); None: bf16 autocast on CUDA as in
    training, fp32 on the CPU. DataError names unreadable crop files."""
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    was_training = model.training
    model.eval()
    # the tower's own input size: 224, or 336 for ViT-L/14@336px
    size = next(m.input_resolution for m in model.modules() if isinstance(m, clip_vit.VisionTransformer))
    loader = DataLoader(Crops(items, size), batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    out, readable = [], []
    for images, ok in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True))      # [N, 2]
        out.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu())
        readable.append(ok)
    model.train(was_training)
    if not out:
        return np.zeros(0)
    bad = [items[i] for i in torch.cat(readable).logical_not().nonzero().flatten().tolist()]
    if bad:
        raise DataError(f"{len(bad)} crop file(s) cannot be read as images, e.g. {bad[0]}; "
                        f"re-run preprocess.py for their videos")
    return torch.cat(out).double().numpy()


def video_scores(video_keys, frame_scores) -> dict:
    """Mean p_fake per video: {video key: mean of that video's frame scores}, first-seen order
    (the paper's video score)."""
    sums: dict = {}
    counts: dict = {}
    for key, s in zip(video_keys, np.asarray(frame_scores, dtype=np.float64).reshape(-1)):
        sums[key] = sums.get(key, 0.0) + float(s)
        counts[key] = counts.get(key, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER: the rate where FPR = FNR on the ROC curve, linearly interpolated between the points
    on either side of the crossing (util.stats.at_equal_error, which also gives the threshold there)."""
    from util.stats import at_equal_error  # imported here, as scikit-learn below: not at start-up
    return at_equal_error(fpr, tpr, fpr)


def compute_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """AUROC, AP, EER and accuracy at `threshold` for labels (1 = fake) and scores (p_fake).

    Used for frames and videos alike. With one class only AUROC/AP/EER are None and `undefined`
    says why; accuracy is still given. A sample counts as fake when p_fake > threshold (the
    argmax of the two logits; a tie goes to real).
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    if labels.size == 0:
        raise ValueError("no samples to compute metrics on")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), found {sorted(set(labels.tolist()))}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite, found {int((~np.isfinite(scores)).sum())} NaN/inf")
    n_fake = int(labels.sum())
    n_real = int(labels.size - n_fake)
    out = {"n": int(labels.size), "n_real": n_real, "n_fake": n_fake,
           "auroc": None, "ap": None, "eer": None,
           "acc": float(((scores > threshold).astype(np.int64) == labels).mean())}
    if n_real == 0 or n_fake == 0:
        only = "fake" if n_real == 0 else "real"
        out["undefined"] = (f"only {only} samples ({labels.size}): AUROC, AP and EER need both "
                            f"real and fake samples")
        return out
    # imported here: scikit-learn costs a quarter of every command's start-up (bad-flag errors included)
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out["auroc"] = float(roc_auc_score(labels, scores))
    out["ap"] = float(average_precision_score(labels, scores))
    out["eer"] = equal_error_rate(fpr, tpr)
    return out
