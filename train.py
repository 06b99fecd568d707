"""Train the deepfake detector: CLIP ViT-L/14 with LN-tuning, L2-normalised features, uniformity +
alignment losses and slerp latent augmentation, the paper's method and recipe.

    python train.py                                   # the paper's full recipe on data/ff++ (one GPU)
    torchrun --nproc_per_node=4 train.py              # the same on 4 GPUs: the same batches, the same loss
    python train.py --tuning linear-probe --no-norm --uniformity 0 --alignment 0 --no-slerp   # ablation rows
    python train.py --resume runs/<name>              # continue exactly where it stopped
    python train.py --data data-mini --clip tiny --epochs 2 --batch-size 16 --workers 2   # CPU smoke run

The defaults of TrainConfig ARE the published recipe; every field is a command-line flag
(`--batch-size 64`, `--no-slerp`, ...). A run writes runs/<name>/config.json, log.jsonl (one JSON
line per --log-every steps and per epoch), last.pt (every --save-every steps and each epoch, with the
optimizer and RNG states for --resume) and best.pt (best FF++ val video-level AUROC so far; the
latest epoch when validation cannot rank: --no-val, no val split, or a val split of one class).

N processes (torchrun) train the single-process recipe exactly: global batch k holds the same
images as in one process (GlobalBatchSampler: each process loads its contiguous share, any batch
size >= N), and the features of all shares are gathered (with gradients) so that slerp pairs,
uniformity, alignment and CE all see the whole global batch of 128, as on one GPU. The gather
moves 1024 floats per image: 128 x 1024 x 4 bytes = 512 KiB per step in all, and every process
keeps the global batch's features (512 KiB) and its 128 x 128 pair terms: negligible next to the
ViT's activations. The weights then match a single-process run up to float reduction order, and
a run may be resumed with another number of processes.

SIGTERM (preemption) or Ctrl-C: the step in flight is not applied, last.pt is written at the
last completed step, and the process exits (143 / 130) naming the --resume command; resuming gives
bitwise the weights of an uninterrupted run (on the same hardware). A second signal aborts at once.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from functools import cached_property
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import clip_vit
import data as data_lib
from util import checkpoint
from util.files import atomic_write
from util.layouts import Video
from losses import alignment, slerp_augment, uniformity


class RunError(ValueError):
    """A run folder that cannot be started or continued, or a run that cannot go on (the message
    says what and what to do)."""


class NonFiniteLoss(RunError):
    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


class StopRequested(Exception):
    """A SIGTERM / SIGINT in some process: the step in flight is not applied."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(RunError):
    """SIGTERM / SIGINT: last.pt holds the last completed step; exit status 128 + signal."""

    def __init__(self, message: str, signum: int, main: bool):
        super().__init__(message)
        self.status, self.main = 128 + signum, main


@dataclass
class TrainConfig:
    # data
    data: str = field(default="data", metadata={"help": "folder with <dataset>/<split>/index.csv from preprocess.py"})
    dataset: str = field(default="ff++", metadata={"help": "training dataset folder under --data (ff++ = FF++ c23)"})
    sources: list[str] = field(default_factory=lambda: list(data_lib.FFPP_SOURCES),
                               metadata={"help": "sources to train on (real + manipulations)"})
    frames: int = field(default=32, metadata={"min": 1, "help": "max frames per video"})
    balanced: bool = field(default=False, metadata={"help": "class-balanced sampling (the paper: off)"})
    workers: int = field(default=8, metadata={"min": 0, "help": "DataLoader workers per process"})
    # model
    clip: str = field(default="ViT-L/14", metadata={"help": "OpenAI CLIP name (downloaded), path to its weights, or 'tiny'"})
    tuning: str = field(default="ln", metadata={"choices": clip_vit.TUNING, "help": "which tensors train"})
    norm: bool = field(default=True, metadata={"help": "L2-normalise the features before the head"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "recompute blocks in backward (less GPU memory)"})
    # objective
    uniformity: float = field(default=0.5, metadata={"min": 0, "help": "weight of the uniformity loss (0 = off)"})
    alignment: float = field(default=0.1, metadata={"min": 0, "help": "weight of the alignment loss (0 = off)"})
    slerp: bool = field(default=True, metadata={"help": "slerp latent augmentation within each class"})
    # optimisation (AdamW, cosine per step from lr to min_lr, no warm-up)
    lr: float = field(default=8e-5, metadata={"help": "AdamW learning rate at step 0"})
    min_lr: float = field(default=5e-5, metadata={"min": 0, "help": "learning rate at the last step (cosine per step)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    weight_decay: float = field(default=0.0, metadata={"min": 0, "help": "AdamW weight decay"})
    batch_size: int = field(default=128, metadata={"min": 1, "help": "global batch over all processes (each loads "
                                                                     "its share; at least the number of processes)"})
    epochs: int = field(default=10, metadata={"min": 1, "help": "passes over the training frames"})
    seed: int = field(default=42, metadata={"help": "seeds the head, the epoch orders, augmentations and slerp"})
    device: str = field(default="auto", metadata={"help": "auto | cuda | cpu | cuda:1 ..."})
    # run bookkeeping
    out: str = field(default="runs", metadata={"help": "parent folder of run folders"})
    name: str = field(default="", metadata={"help": "run folder name (default: a timestamp)"})
    resume: str = field(default="", metadata={"help": "run folder to continue (its config.json is the base config)"})
    val: bool = field(default=True, metadata={"help": "validate on the val split after every epoch"})
    val_batch_size: int = field(default=128, metadata={"min": 1, "help": "batch size of the validation pass"})
    log_every: int = field(default=50, metadata={"min": 1, "help": "steps between log.jsonl lines"})
    save_every: int = field(default=500, metadata={"min": 1, "help": "steps between last.pt saves (also each epoch)"})
    stop_after: int = field(default=0, metadata={"min": 0, "help": "stop with a checkpoint after this many steps in "
                                                                   "total (0 = all epochs)"})

    @property
    def loader_workers(self) -> int:
        """DataLoader workers per process: --workers, at most the CPUs here."""
        return min(self.workers, os.cpu_count() or 1)


RUN_CONTROL = {"resume", "stop_after"}  # never taken from a resumed run's config.json


# ----------------------------------------------------------------------------------------------
# command line: every bad value is an argparse error (exit 2) before any work
# ----------------------------------------------------------------------------------------------

def at_least(kind: type, minimum: float) -> Callable[[str], float]:
    """argparse type: a `kind` number >= minimum (also used by evaluate.py and bench.py)."""
    def check(value):
        number = kind(value)  # ValueError -> argparse's "invalid int value"
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return number
    check.__name__ = kind.__name__
    return check


def device_flag(value: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N of a GPU that is there (also used by evaluate.py and
    bench.py)."""
    if value in ("auto", "cpu"):
        return value
    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: no CUDA GPU on this machine; use --device cpu (or auto)")
    n = torch.cuda.device_count()
    if (device.index or 0) >= n:
        raise argparse.ArgumentTypeError(f"{value}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    return value


def read_run_config(parser: argparse.ArgumentParser, run_dir: Path) -> dict:
    """A run folder's config.json (the settings --resume continues with)."""
    path = run_dir / "config.json"
    if not path.is_file():
        parser.error(f"argument --resume: no {path} (expected a run folder of train.py)")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        parser.error(f"argument --resume: {path} is truncated or not JSON ({e}); restore it (last.pt holds "
                     f"the same settings under 'config') or start a new run with another --name")
    if not isinstance(saved, dict):
        parser.error(f"argument --resume: {path} is not a config.json of train.py (expected a JSON object)")
    return saved


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """argparse generated from TrainConfig: --field-name VALUE, --x/--no-x for booleans."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, checks = TrainConfig(), {"device": device_flag}
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kwargs = dict(default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {default})")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs.update(nargs="+", type=str)
        else:
            if "min" in f.metadata:
                checks[f.name] = at_least(type(default), f.metadata["min"])
            kwargs["type"] = checks.get(f.name, type(default))
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    given = vars(parser.parse_args(argv))  # only the flags on the command line
    base = asdict(defaults)
    if given.get("resume"):
        saved = read_run_config(parser, Path(given["resume"]))
        base.update({k: v for k, v in saved.items() if k in base and k not in RUN_CONTROL})
        for name, check in checks.items():  # config.json's values pass the flags' checks too
            try:
                check(given.get(name, base[name]))
            except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
                parser.error(f"argument --resume: config.json has {name} = {base[name]!r}: {e}; "
                             f"pass --{name.replace('_', '-')} to override it")
    cfg = TrainConfig(**{**base, **given})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size < world:
        parser.error(f"argument --batch-size: {cfg.batch_size} is smaller than the {world} processes "
                     f"(each takes a share of every batch); use at least {world}")
    return cfg


# ----------------------------------------------------------------------------------------------
# the training step of the paper
# ----------------------------------------------------------------------------------------------

def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Cosine from cfg.lr at step 0 to cfg.min_lr at the last step, no warm-up (per step)."""
    progress = step / max(total - 1, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int) -> torch.Generator:
    # slerp's random numbers are a function of (seed, step): exact after --resume, the same in every
    # process (each slerps the same global batch), without keeping a generator state
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009)


def gather_batch(x: torch.Tensor, shares: list[int]) -> torch.Tensor:
    """Every process's share of the global batch, concatenated in rank order: [sum(shares), ...].

    Differentiable: the backward of all_gather sums the gradients that all processes send to each
    share. Every process computes the same global loss L, so process r's features f_r get
    world x dL/df_r and its encoder gradient is world x (its share of dL/dθ); DDP averages over
    the processes (/ world): sum_r dL/dθ|r = dL/dθ, the single-process gradient. The head (and
    slerp) run on the gathered batch in every process, so each already has the whole dL/dW_head
    and the average of `world` equal copies is that gradient again. No rescaling is needed."""
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(shares) - len(x)))  # all_gather needs equal sizes
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented one
        warnings.simplefilter("ignore", FutureWarning)
        parts = dist_fn.all_gather(padded)  # world x [max(shares), ...]
    return torch.cat([p[:n] for p, n in zip(parts, shares)])


class TrainForward(nn.Module):
    """features -> (gather) -> (slerp) -> head in one forward, so DistributedDataParallel sees the whole step."""

    def __init__(self, detector: clip_vit.DeepfakeDetector, slerp: bool):
        super().__init__()
        self.detector, self.slerp = detector, slerp

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                shares: list[int] | None = None):
        """images: this process's share; labels: the global batch's; shares: under torchrun."""
        if len(images):
            features = self.detector.features(images)  # [b, width], unit norm when cfg.norm
        else:  # an empty share (last batch smaller than the processes): a blank image, cut off again,
            # keeps every parameter in the graph (zero gradient), as DDP's all-reduce needs
            features = self.detector.features(images.new_zeros(1, *images.shape[1:]))[:0]  # [0, width]
        if shares is not None:
            features = gather_batch(features, shares)  # [B, width] the global batch
        if self.slerp:
            features = slerp_augment(features, labels, generator)  # [B, width] float32
        return features, self.detector.head(features)  # [B, width], [B, 2]


def objective(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig):
    """CE + w_u * uniformity + w_a * alignment over the global batch. With --no-norm the two feature
    losses still run on the raw features, although they are defined on the unit hypersphere (the
    paper's ablation rows without norm also have them off)."""
    ce = F.cross_entropy(logits.float(), labels)
    parts = {"ce": ce}
    loss = ce
    if cfg.uniformity:
        parts["uniformity"] = uniformity(features)
        loss = loss + cfg.uniformity * parts["uniformity"]
    if cfg.alignment:
        parts["alignment"] = alignment(features, labels)
        loss = loss + cfg.alignment * parts["alignment"]
    return loss, parts


def agree(finite: torch.Tensor, signum: int, distributed: bool) -> tuple[bool, int]:
    """(loss finite everywhere, a stop signal received anywhere or 0): one all_reduce under torchrun
    so that every process takes the same branch; one process just reads its loss (a host sync, as
    ever) and its own flag."""
    if not distributed:
        return bool(finite.item()), signum
    flags = torch.stack([finite.float(), torch.tensor(-float(signum), device=finite.device)])  # [2]
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    ok, minus_signum = flags.tolist()
    return ok == 1.0, int(-minus_signum)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               shares: list[int] | None, generator: torch.Generator, lr: float, cfg: TrainConfig, amp: bool,
               stop: StopSignals | None = None) -> dict[str, torch.Tensor]:
    """One AdamW step on the global batch (shares: under torchrun, every process's share size);
    returns the loss terms. Before any update: NonFiniteLoss when the loss is NaN/inf,
    StopRequested when `stop` caught a signal (in any process)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if shares is not None:
        labels = gather_batch(labels, shares)                          # [B] the global batch's labels
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        features, logits = model(images, labels, generator, shares)   # [B, width] slerped, [B, 2]
    loss, parts = objective(features, logits, labels, cfg)            # CE + 0.5 L_unif + 0.1 L_align
    finite, signum = agree(torch.isfinite(loss.detach()), stop.signum if stop else 0, shares is not None)
    if not finite:
        raise NonFiniteLoss(loss.item())
    if signum:
        raise StopRequested(signum)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP: the single-process gradient (gather_batch says why)
    optimizer.step()
    return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}


# ----------------------------------------------------------------------------------------------
# checkpoints, RNG states, log, signals
# ----------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Global RNG states as tensors and plain types (weights_only=True can load them)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": torch.tensor(mt, dtype=torch.int64), "python_version": version, "python_gauss": gauss,
             "numpy": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": int(pos),
             "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_config(cfg: TrainConfig) -> dict:
    # what evaluate.py / clip_vit.load_detector need (clip, normalize) + the whole recipe
    return {**asdict(cfg), "normalize": cfg.norm}


def save_model(path: Path, detector: clip_vit.DeepfakeDetector, cfg: TrainConfig, **extra) -> None:
    """best.pt / last.pt: the trainable tensors only (LN + head: ~0.4 MB for ViT-L/14), atomically.
    `extra` may hold frozen_sha256 (see util.checkpoint.save_checkpoint)."""
    checkpoint.save_checkpoint(path, detector, checkpoint_config(cfg), **extra)


RESUME_KEYS = ("optimizer", "rng", "step", "steps_per_epoch", "best_val_video_auroc")


def load_last(run_dir: Path) -> dict:
    """run_dir/last.pt, the state --resume continues from."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise RunError(f"--resume {run_dir}: no last.pt there (the run saved no checkpoint yet)")
    try:
        ckpt = checkpoint.load_checkpoint(last)
    except OSError as e:
        raise RunError(f"--resume {run_dir}: cannot read {last}: {e.strerror or e}") from None
    except ValueError:  # clip_vit's one error for a damaged or foreign file
        ckpt = None
    if ckpt is None or not all(k in ckpt for k in RESUME_KEYS):
        raise RunError(f"--resume {run_dir}: {last} is truncated or not a checkpoint of train.py; copy back a "
                       f"good last.pt, or start a new run with another --name (the run's best.pt, if any, "
                       f"is a finished model)")
    return ckpt


def trim_log(log_path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again), and a
    last line cut short by a failed write (a full disk)."""
    if not log_path.is_file():
        return
    lines = log_path.read_text().splitlines()
    kept = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line else {}
        except ValueError:
            if n == len(lines):
                break
            raise RunError(f"{log_path} line {n} is not JSON; delete that line and resume again") from None
        if line and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write(log_path, "".join(kept))


def append_line(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


@contextmanager
def writing(path: Path, resume: str) -> Iterator[None]:
    """A failed write (full disk, no permission) as one line naming the file (the one the error names,
    else `path`) and the `resume` command."""
    try:
        yield
    except OSError as e:
        raise RunError(f"cannot write {e.filename or path}: {e.strerror or e}; make room (or fix the permission), "
                       f"then continue with `{resume}` (files are replaced whole: the previous checkpoints are "
                       f"intact)") from None


class StopSignals:
    """SIGTERM (cluster preemption) and SIGINT (Ctrl-C) ask the loop to stop before the next update;
    a second signal aborts at once (KeyboardInterrupt). Previous handlers come back on exit."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal's requirement
            for s in (signal.SIGTERM, signal.SIGINT):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum


# ----------------------------------------------------------------------------------------------
# set-up: processes, data, model, run folder
# ----------------------------------------------------------------------------------------------

@dataclass
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def amp(self) -> bool:
        return self.device.type == "cuda"  # bf16 autocast on GPU, fp32 on CPU


def start_processes(cfg: TrainConfig) -> tuple[Processes, bool]:
    """This process's rank, the number of processes and the device; True when the process group
    was created here (and is to be destroyed here)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = torch.device(cfg.device).type
    created = world > 1 and not dist.is_initialized()
    if created:
        # rank 0 validates alone while the others wait in a barrier: allow it an hour
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    rank = dist.get_rank() if world > 1 else 0
    device = torch.device("cpu")
    if device_type == "cuda":
        if world > 1 or cfg.device == "auto":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        else:
            device = torch.device("cuda", torch.device(cfg.device).index or 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    return Processes(rank, world, device), created


def load_data(cfg: TrainConfig) -> tuple[list[Video], list[Video], str]:
    """Train and val videos, and why validation cannot rank ("" when it can, or with --no-val):
    no val split, or a val split of one class (AUROC undefined). DataError for unusable data."""
    train_videos = data_lib.load_videos(cfg.data, cfg.dataset, "train", cfg.sources, cfg.frames)
    if not cfg.val:
        return train_videos, [], ""
    index = Path(cfg.data) / cfg.dataset / "val" / "index.csv"
    if not index.is_file():
        return train_videos, [], f"no val split ({index} not found)"
    val_videos = data_lib.load_videos(cfg.data, cfg.dataset, "val", cfg.sources, cfg.frames)
    classes = {v.label for v in val_videos}
    if len(classes) < 2:
        return train_videos, [], f"only {'fake' if classes == {1} else 'real'} videos in the val split"
    return train_videos, val_videos, ""


def build_detector(cfg: TrainConfig, procs: Processes) -> tuple[clip_vit.DeepfakeDetector, int]:
    """The detector with cfg.tuning's tensors trainable, and their number. Rank 0 builds it first,
    so that a download happens once."""
    if procs.distributed and not procs.main:
        dist.barrier()
    detector = clip_vit.build_detector(cfg.clip, normalize=cfg.norm, device=procs.device)
    if procs.distributed and procs.main:
        dist.barrier()
    n_trainable = clip_vit.set_trainable(detector, cfg.tuning)
    detector.visual.transformer.grad_checkpointing = cfg.grad_checkpointing
    return detector, n_trainable


@dataclass
class Run:
    """One run: its fixed parts and its progress (what last.pt holds)."""
    cfg: TrainConfig
    procs: Processes
    detector: clip_vit.DeepfakeDetector
    model: nn.Module  # TrainForward, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    dir: Path
    steps_per_epoch: int
    step: int = 0
    best: float | None = None
    saved_step: int | None = None  # the step of the last.pt on disk
    bar: tqdm | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @cached_property
    def frozen_sha256(self) -> str:
        """What every checkpoint of the run records of the frozen weights: they never change, so hashed once."""
        trainable = [n for n, p in self.detector.named_parameters() if p.requires_grad]
        return checkpoint.base_sha256(self.detector, trainable)

    def resume_command(self) -> str:
        if self.procs.distributed:
            return f"torchrun --nproc_per_node={self.procs.world} train.py --resume {self.dir}"
        return f"python train.py --resume {self.dir}"

    def save_last(self) -> None:
        self.saved_step = self.step
        if self.procs.main:
            with writing(self.dir / "last.pt", self.resume_command()):
                save_model(self.dir / "last.pt", self.detector, self.cfg, frozen_sha256=self.frozen_sha256,
                           optimizer=self.optimizer.state_dict(), step=self.step, steps_per_epoch=self.steps_per_epoch,
                           best_val_video_auroc=self.best, rng=rng_state())

    def save_best(self, epoch: int, **extra) -> None:
        if self.procs.main:
            with writing(self.dir / "best.pt", self.resume_command()):
                save_model(self.dir / "best.pt", self.detector, self.cfg, frozen_sha256=self.frozen_sha256,
                           step=self.step, epoch=epoch, **extra)

    def log(self, record: dict) -> None:
        if self.procs.main:
            with writing(self.dir / "log.jsonl", self.resume_command()):
                append_line(self.dir / "log.jsonl", json.dumps(record))

    def say(self, message: str) -> None:
        if self.procs.main:
            self.bar.write(message)


def open_run(cfg: TrainConfig, run: Run) -> None:
    """A new run folder (never over an existing run), or --resume's state loaded into `run`."""
    if not cfg.resume:
        if (run.dir / "last.pt").exists():
            raise RunError(f"{run.dir} already holds a run: pass --resume {run.dir} or another --name")
    else:
        ckpt = load_last(run.dir)
        checkpoint.apply_checkpoint(run.detector, ckpt, cfg.clip)
        run.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        run.step, run.best, run.saved_step = ckpt["step"], ckpt["best_val_video_auroc"], ckpt["step"]
        if ckpt["steps_per_epoch"] != run.steps_per_epoch:
            raise RunError(f"--resume {run.dir}: {run.steps_per_epoch} steps per epoch now, "
                           f"{ckpt['steps_per_epoch']} when it was saved (different data or batch size)")
    if run.procs.main:
        with writing(run.dir / "config.json", run.resume_command()):
            run.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(run.dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
            trim_log(run.dir / "log.jsonl", run.step)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------

def validate(detector: nn.Module, videos: list, device: torch.device, batch_size: int, workers: int) -> dict:
    """Frame- and video-level AUROC of p_fake (video score = mean of its frames' p_fake)."""
    frame_p, video_p = data_lib.score_videos(detector, videos, device, batch_size, workers, desc="val")
    frame_labels = [v.label for v in videos for _ in v.frames]
    return {"val_video_auroc": data_lib.compute_metrics([v.label for v in videos], video_p)["auroc"],
            "val_frame_auroc": data_lib.compute_metrics(frame_labels, frame_p)["auroc"]}


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


class Meter:
    """Loss terms summed on the device between log lines (one host sync per line), and images/s."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.time()

    def add(self, parts: dict[str, torch.Tensor], images: int) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.steps, self.images = self.steps + 1, self.images + images

    def record(self) -> dict:
        out = {"images_per_s": round(self.images / max(time.time() - self.start, 1e-9), 1),
               **{k: v.item() / self.steps for k, v in self.sums.items()}}
        self.reset()
        return out


def train_epoch(run: Run, train_set: data_lib.FrameDataset, order, stop: StopSignals) -> bool:
    """The rest of the epoch run.step is in; False when the run stops early (--stop-after)."""
    cfg, procs = run.cfg, run.procs
    epoch, skip = divmod(run.step, run.steps_per_epoch)
    train_set.set_epoch(epoch)
    # the epoch's order is a function of (seed, epoch): a resumed run skips the batches it did
    batches = data_lib.GlobalBatchSampler(order, cfg.batch_size, procs.world, procs.rank, skip)
    batches.set_epoch(epoch)
    loader = data_lib.make_loader(train_set, batch_sampler=batches, num_workers=cfg.loader_workers,
                                  seed=cfg.seed + epoch, pin_memory=procs.amp,
                                  image_size=run.detector.visual.input_resolution)
    meter = Meter()
    for k, (images, labels, _) in enumerate(loader, skip):
        shares = batches.shares(k) if procs.distributed else None
        lr = get_lr(run.step, run.total_steps, cfg)
        images, labels = images.to(procs.device, non_blocking=True), labels.to(procs.device, non_blocking=True)
        try:
            parts = train_step(run.model, run.optimizer, images, labels, shares, step_generator(cfg.seed, run.step),
                               lr, cfg, procs.amp, stop)
        except NonFiniteLoss as e:
            saved = f"{run.dir / 'last.pt'} (step {run.saved_step})" if run.saved_step is not None else "none yet"
            raise RunError(f"loss is {e.value} at step {run.step + 1} (epoch {epoch}); stopping before the update. "
                           f"Last good checkpoint: {saved}; continue with `{run.resume_command()}` (e.g. with a "
                           f"lower --lr)") from None
        except StopRequested as e:
            interrupt(run, e.signum)
        run.step += 1
        meter.add(parts, sum(shares) if shares else len(images))
        run.bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == run.total_steps:
            record = {"step": run.step, "epoch": epoch, "lr": lr, **meter.record()}
            run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{record['images_per_s']:.0f}")
            run.log(record)
        stopping = 0 < cfg.stop_after <= run.step
        if run.step % run.steps_per_epoch and (stopping or run.step % cfg.save_every == 0):
            run.save_last()  # at an epoch end the epoch's own save follows
        if stopping:
            return False
    return True


def interrupt(run: Run, signum: int) -> None:
    """After SIGTERM / SIGINT, before any update of the step in flight: last.pt at run.step."""
    if run.saved_step != run.step:
        run.save_last()
    name = signal.Signals(signum).name
    raise Interrupted(f"stopped by {name} at step {run.step}/{run.total_steps}; {run.dir / 'last.pt'} holds it. "
                      f"Continue with: {run.resume_command()}", signum, run.procs.main)


def end_epoch(run: Run, epoch: int, val_videos: list[Video], val_note: str) -> None:
    """Validate (rank 0), save best.pt when the val AUROC improves (the latest epoch when it cannot
    rank), last.pt, and the epoch's log line."""
    record = {"step": run.step, "epoch": epoch, "epoch_done": True}
    if run.procs.main and val_videos:
        record.update(validate(run.detector, val_videos, run.procs.device, run.cfg.val_batch_size,
                               run.cfg.loader_workers))
        score = record["val_video_auroc"]
        if score is not None and (run.best is None or score > run.best):
            run.best = score
            run.save_best(epoch, val_video_auroc=score)
        record["best_val_video_auroc"] = run.best
        run.say(f"epoch {epoch}: val video AUROC {fmt(score)}, best {fmt(run.best)}")
    else:
        run.save_best(epoch)  # no ranking: the latest epoch
        if val_note:
            record["val"] = f"val AUROC undefined: {val_note}; best.pt = latest epoch"
            run.say(f"epoch {epoch}: {record['val']}")
    run.save_last()
    run.log(record)
    if run.procs.distributed:
        dist.barrier()  # the other processes wait for rank 0's validation and saves


def _train(cfg: TrainConfig, procs: Processes, stop: StopSignals) -> clip_vit.DeepfakeDetector:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the head's initialisation; the same in every process
    train_videos, val_videos, val_note = load_data(cfg)  # DataError names the preprocess command
    detector, n_trainable = build_detector(cfg, procs)
    train_set = data_lib.FrameDataset(train_videos, data_lib.train_transform(detector.visual.input_resolution),
                                      seed=cfg.seed)
    order = data_lib.make_sampler(train_set, shuffle=True, balanced=cfg.balanced, seed=cfg.seed)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    model = TrainForward(detector, cfg.slerp)
    if procs.distributed:
        model = DDP(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.out) / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    run = Run(cfg, procs, detector, model, optimizer, run_dir, math.ceil(len(order) / cfg.batch_size))
    open_run(cfg, run)
    run.bar = tqdm(total=run.total_steps, initial=run.step, disable=not procs.main, desc=run.dir.name,
                   dynamic_ncols=True)
    shares = data_lib.split_sizes(cfg.batch_size, procs.world)
    run.say(f"run {run.dir}: {len(train_set)} train frames of {len(train_videos)} videos, {len(val_videos)} val "
            f"videos; {cfg.clip} tuning={cfg.tuning} ({n_trainable:,} trainable), {procs.world} process(es) x "
            f"batch {'/'.join(map(str, sorted(set(shares), reverse=True)))}, {run.steps_per_epoch} steps/epoch, "
            f"device {procs.device}" + (f"; resuming at step {run.step}" if run.step else "")
            + (f"; val AUROC undefined: {val_note}, best.pt = latest epoch" if val_note else ""))
    completed = True
    with run.bar:  # closed before any message of an exception
        while run.step < run.total_steps and completed:
            epoch = run.step // run.steps_per_epoch
            completed = train_epoch(run, train_set, order, stop)
            if run.step % run.steps_per_epoch == 0:  # the epoch is complete
                end_epoch(run, epoch, val_videos, val_note)
    if procs.main:
        print(f"{'stopped' if run.step < run.total_steps else 'done'} at step {run.step}/{run.total_steps}: {run.dir}",
              flush=True)
    return detector


def train(cfg: TrainConfig) -> clip_vit.DeepfakeDetector:
    """Runs (or resumes) one training run; returns the detector (unwrapped, final weights)."""
    procs, created = start_processes(cfg)
    try:
        with StopSignals() as stop:
            return _train(cfg, procs, stop)
    finally:
        if created:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> clip_vit.DeepfakeDetector:
    cfg = parse_args(argv)
    try:
        return train(cfg)
    except Interrupted as e:
        if e.main:
            print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(e.status) from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted twice: stopped at once; the run folder keeps its last completed "
                         "checkpoint (continue with --resume)") from None
    except (ValueError, OSError) as e:  # DataError, RunError, clip_vit's checkpoint errors, files
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
