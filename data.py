"""Preprocessed face crops -> tensors: the paper's augmentations, the frame dataset, an epoch's
batches, and the scores and metrics train.py's validation and evaluate.py share. Every random draw
is a function of (seed, epoch, sample): the same pixels whatever the workers, processes or --resume.
"""
from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torchvision.transforms.v2 as T
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import clip_vit
from util.distributed import Processes, interleaved, split_sizes
from util.layouts import DataError, Video
from util.precision import autocast
from util.run import mix_seed
from util.signals import ignore_stop_signals
from util.stats import at_equal_error


def gaussian_blur(image: torch.Tensor) -> torch.Tensor:
    """torchvision's GaussianBlur (sigma ~ U(0.1, 2.0), reflected borders) through OpenCV: ~0.3 ms per
    crop, not ~7 ms. Kernel 13 covers +-3 sigma (**ours**: the kernel size is not published)."""
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())                        # [H, W, 3] uint8
    blurred = cv2.GaussianBlur(hwc, (13, 13), sigma, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(blurred).permute(2, 0, 1)                                 # [3, H, W] uint8


def train_transform(size: int = 224) -> Callable[[torch.Tensor], torch.Tensor]:
    """The paper's augmentations on the uint8 256x256 crop, then the CLIP transform."""
    return T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        # bilinear (**ours**: v2's default nearest would add aliasing the test images do not have)
        T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1),
                       interpolation=T.InterpolationMode.BILINEAR),
        gaussian_blur,
        T.ColorJitter(brightness=0.1, contrast=0.1),
        T.JPEG(quality=(40, 100)),
        clip_vit.image_transform(size),
    ])


def read_crop(crop: str | Path | np.ndarray) -> torch.Tensor | None:
    """A crop file or an RGB array [H, W, 3] as uint8 [3, H, W] RGB; None for an unreadable file."""
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
    """One item per crop: (image [3, S, S], label, index into .videos); .epoch is set per epoch."""

    def __init__(self, videos: list[Video], transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0):
        self.videos, self.transform, self.seed, self.epoch = videos, transform, seed, 0
        self.samples = [(v, f) for v, video in enumerate(videos) for f in video.frames]
        self.labels = torch.tensor([videos[v].label for v, _ in self.samples])  # [len]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        v, path = self.samples[index]
        image = read_rgb(path)  # uint8 [3, H, W]
        # torchvision's random transforms draw from torch's global generator: this sample's own seed,
        # in a forked RNG, so that the draws depend only on (seed, epoch, index)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*TorchVision are deprecated", DeprecationWarning)  # v2.JPEG's
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            image = self.transform(image)
        return image, self.videos[v].label, v


def epoch_order(labels: torch.Tensor, seed: int, epoch: int, balanced: bool = False) -> list[int]:
    """An epoch's order: a permutation, or (`balanced`, off in the paper) class-balanced draws."""
    generator = torch.Generator().manual_seed(mix_seed(seed, "order", epoch))
    if balanced:
        weights = (1.0 / torch.bincount(labels).double().clamp_min(1))[labels]  # [len] each class 1/2
        return torch.multinomial(weights, len(labels), True, generator=generator).tolist()
    return torch.randperm(len(labels), generator=generator).tolist()


def global_batches(order: list[int], batch_size: int, world: int = 1, rank: int = 0,
                   skip: int = 0) -> list[list[int]]:
    """Process `rank`'s share of each global batch from `skip` on: N processes see one's batches."""
    sizes = split_sizes(batch_size, world)
    start = sum(sizes[:rank])
    return [order[k * batch_size + start:k * batch_size + start + sizes[rank]]
            for k in range(skip, len(order) // batch_size)]


# ----------------------------------------------------------------------------- scoring a split

def crops_batch(items: list, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops -> (CLIP-transformed images [N, 3, S, S], readable [N]), in a loader worker: an unreadable
    file is zeros, for the main process to name (a worker's exception is a long traceback)."""
    images, transform = [read_crop(item) for item in items], clip_vit.image_transform(size)
    ok = torch.tensor([image is not None for image in images])
    return torch.stack([torch.zeros(3, size, size) if i is None else transform(i) for i in images]), ok


@torch.inference_mode()
def predict(model: torch.nn.Module, items: list, device: torch.device, batch_size: int = 64,
            workers: int = 0, desc: str = "frames", precision: str | None = None) -> np.ndarray:
    """p_fake = softmax(logits)[:, 1] of each crop: [len(items)]; precision None: bf16 on CUDA only."""
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    was_training = model.training
    model.eval()
    # the tower's own input size: 224, or 336 for ViT-L/14@336px
    size = next(m.input_resolution for m in model.modules() if isinstance(m, clip_vit.VisionTransformer))
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=partial(crops_batch, size=size), pin_memory=device.type == "cuda",
                        worker_init_fn=ignore_stop_signals)
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


def score_videos(model: torch.nn.Module, videos: list[Video], device: torch.device, batch_size: int,
                 workers: int, precision: str | None, desc: str = "",
                 procs: Processes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frame p_fake [n_frames], video mean p_fake [len(videos)]), shared over torchrun's ranks."""
    frames = [f for v in videos for f in v.frames]
    score = partial(predict, model, device=device, batch_size=batch_size, workers=workers,
                    desc=desc or "frames", precision=precision)
    frame_p = interleaved(score, frames, procs, errors=(DataError,)) if procs else score(frames)
    means = video_scores([v.path for v in videos for _ in v.frames], frame_p)
    return frame_p, np.array([means[v.path] for v in videos])


def video_scores(video_keys: list, frame_scores) -> dict:
    """The paper's video score: {video key: mean p_fake of its frames}, in first-seen order."""
    sums: dict = {}
    counts: dict = {}
    for key, s in zip(video_keys, np.asarray(frame_scores, dtype=np.float64).reshape(-1)):
        sums[key] = sums.get(key, 0.0) + float(s)
        counts[key] = counts.get(key, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def compute_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """AUROC, AP, EER and accuracy at `threshold` (fake when p_fake > threshold: a tie goes to real, as
    the argmax of the logits). With one class AUROC, AP and EER are None and `undefined` says why."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)                # [n]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)               # [n]
    n_fake = int(labels.sum())
    n_real = int(labels.size - n_fake)
    out = {"n": int(labels.size), "n_real": n_real, "n_fake": n_fake, "auroc": None, "ap": None, "eer": None,
           "acc": float(((scores > threshold).astype(np.int64) == labels).mean())}
    if n_real == 0 or n_fake == 0:
        out["undefined"] = (f"only {'fake' if n_real == 0 else 'real'} samples ({labels.size}): AUROC, AP "
                            f"and EER need both real and fake samples")
        return out
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out["auroc"] = float(roc_auc_score(labels, scores))
    out["ap"] = float(average_precision_score(labels, scores))
    out["eer"] = at_equal_error(fpr, tpr, fpr)  # where FPR = FNR
    return out
