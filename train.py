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
A checkpoint written after validation also holds the val videos' scores (key "reference"): the
reference evaluate.py reads a verdict against (util/calibration.py).

N processes (torchrun) train the single-process recipe exactly: global batch k holds the same
images as in one process (util.loading.GlobalBatchSampler: each process loads its contiguous
share, any batch size >= N), and the features of all shares are gathered (with gradients) so that
slerp pairs, uniformity, alignment and CE all see the whole global batch of 128, as on one GPU. The gather
moves 1024 floats per image: 128 x 1024 x 4 bytes = 512 KiB per step in all, and every process
keeps the global batch's features (512 KiB) and its 128 x 128 pair terms: negligible next to the
ViT's activations. The weights then match a single-process run up to float reduction order, and
a run may be resumed with another number of processes.

SIGTERM (preemption) or Ctrl-C: the step in flight is not applied, last.pt is written at the
last completed step, and the process exits (143 / 130) naming the --resume command; resuming gives
bitwise the weights of an uninterrupted run (on the same hardware). A second signal aborts at once.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import clip_vit
import data
from losses import alignment, slerp_augment, uniformity
from util import calibration, checkpoint, cli
from util.distributed import Processes, gather_batch, processes, rank_zero_first, torchrun_env
from util.layouts import FFPP_SOURCES, Video, load_videos
from util.precision import PRECISIONS, autocast, resolve_precision
from util.loading import GlobalBatchSampler, split_sizes
from util.run import Interrupted, Meter, NonFiniteLoss, RunError, RunFolder, resumed_config, rng_state, set_rng_state
from util.signals import StopRequested, StopSignals


@dataclass
class TrainConfig:
    # data
    data: str = field(default="data", metadata={"help": "folder with <dataset>/<split>/index.csv from preprocess.py"})
    dataset: str = field(default="ff++", metadata={"help": "training dataset folder under --data (ff++ = FF++ c23)"})
    sources: list[str] = field(default_factory=lambda: list(FFPP_SOURCES),
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
    precision: str = field(default="auto", metadata={"choices": PRECISIONS, "help": "auto: bf16 autocast on CUDA "
                           "and on a CPU with native bf16 (AMX), else fp32; a run records what it trained with"})
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
FLAG_TYPES = {"device": cli.device_flag}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A flag per TrainConfig field (--field-name VALUE, --x/--no-x for booleans); every bad value is
    an argparse error (exit 2) before any work. --resume starts from the run folder's config.json."""
    parser = cli.config_parser(TrainConfig, __doc__, FLAG_TYPES)
    cfg = cli.parse_config(parser, TrainConfig, argv, FLAG_TYPES,
                           base=lambda given: resumed_config(parser, given, RUN_CONTROL))
    world = torchrun_env()[1]
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
               shares: list[int] | None, generator: torch.Generator, lr: float, cfg: TrainConfig,
               precision: str = "fp32", stop: StopSignals | None = None) -> dict[str, torch.Tensor]:
    """One AdamW step on the global batch (shares: under torchrun, every process's share size);
    returns the loss terms. Before any update: NonFiniteLoss when the loss is NaN/inf,
    StopRequested when `stop` caught a signal (in any process)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if shares is not None:
        labels = gather_batch(labels, shares)                          # [B] the global batch's labels
    with autocast(images.device, precision):                           # bf16 matmuls, fp32 losses
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
# the loop
# ----------------------------------------------------------------------------------------------

def load_data(cfg: TrainConfig) -> tuple[list[Video], list[Video], str]:
    """Train and val videos, and why validation cannot rank ("" when it can, or with --no-val):
    no val split, or a val split of one class (AUROC undefined). DataError for unusable data."""
    train_videos = load_videos(cfg.data, cfg.dataset, "train", cfg.sources, cfg.frames)
    if not cfg.val:
        return train_videos, [], ""
    index = Path(cfg.data) / cfg.dataset / "val" / "index.csv"
    if not index.is_file():
        return train_videos, [], f"no val split ({index} not found)"
    val_videos = load_videos(cfg.data, cfg.dataset, "val", cfg.sources, cfg.frames)
    classes = {v.label for v in val_videos}
    if len(classes) < 2:
        return train_videos, [], f"only {'fake' if classes == {1} else 'real'} videos in the val split"
    return train_videos, val_videos, ""


def epoch_batches(train_set: data.FrameDataset, order, epoch: int, skip: int, cfg: TrainConfig,
                  procs: Processes, image_size: int) -> tuple[GlobalBatchSampler, Iterator]:
    """(k, (images, labels, video indices)) of this process's share of every global batch k of the
    epoch from `skip` on: a resumed run skips the batches it did without loading them. The order and
    every augmentation are functions of (seed, epoch)."""
    train_set.set_epoch(epoch)
    sampler = GlobalBatchSampler(order, cfg.batch_size, procs.world, procs.rank, skip)
    sampler.set_epoch(epoch)
    loader = data.make_loader(train_set, batch_sampler=sampler, num_workers=cfg.loader_workers,
                              seed=cfg.seed + epoch, pin_memory=procs.device.type == "cuda", image_size=image_size)
    return sampler, enumerate(loader, skip)


def validate(detector: nn.Module, videos: list[Video], device: torch.device, cfg: TrainConfig) -> tuple[dict, dict]:
    """Frame- and video-level AUROC of p_fake (video score = mean of its frames' p_fake), and the
    checkpoint entry of the video scores: the reference a verdict is read against (util.calibration)."""
    frame_p = data.predict(detector, [f for v in videos for f in v.frames], device, cfg.val_batch_size,
                           cfg.loader_workers, desc="val", precision=cfg.precision)
    video_p = data.video_scores([v.path for v in videos for _ in v.frames], frame_p)
    video_labels, frame_labels = [v.label for v in videos], [v.label for v in videos for _ in v.frames]
    scores = [video_p[v.path] for v in videos]
    reference = calibration.build_reference(video_labels, scores, calibration.split_source(cfg.dataset, "val"))
    return ({"val_video_auroc": data.compute_metrics(video_labels, scores)["auroc"],
             "val_frame_auroc": data.compute_metrics(frame_labels, frame_p)["auroc"]},
            {calibration.KEY: calibration.reference_entry(reference)})


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def checkpoint_config(cfg: TrainConfig) -> dict:
    # what evaluate.py / clip_vit.load_detector need (clip, normalize) + the whole recipe
    return {**asdict(cfg), "normalize": cfg.norm}


def train(cfg: TrainConfig, procs: Processes, stop: StopSignals) -> clip_vit.DeepfakeDetector:
    """Runs (or resumes) one training run; returns the detector (unwrapped, final weights)."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the head's initialisation; the same in every process
    train_videos, val_videos, val_note = load_data(cfg)  # DataError names the preprocess command
    with rank_zero_first(procs):  # a download happens once
        detector = clip_vit.build_detector(cfg.clip, normalize=cfg.norm, device=procs.device)
    n_trainable = clip_vit.set_trainable(detector, cfg.tuning)
    detector.visual.transformer.grad_checkpointing = cfg.grad_checkpointing
    size = detector.visual.input_resolution  # 224, or 336 for ViT-L/14@336px
    train_set = data.FrameDataset(train_videos, data.train_transform(size), seed=cfg.seed)
    order = data.make_sampler(train_set, shuffle=True, balanced=cfg.balanced, seed=cfg.seed)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    model = TrainForward(detector, cfg.slerp)
    if procs.distributed:
        model = DDP(model, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    # what the run computes in; config.json records the outcome, so that --resume keeps it
    cfg.precision, precision_why = resolve_precision(cfg.precision, procs.device)

    # the run folder: a new one (never over an existing run), or --resume's state
    run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.out) / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    folder = RunFolder(run_dir, "train.py", procs.world, procs.main)
    steps_per_epoch = math.ceil(len(order) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step, best = 0, None  # best FF++ val video AUROC so far
    if cfg.resume:
        ckpt = folder.load_last()
        checkpoint.apply_checkpoint(detector, ckpt, cfg.clip)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step, best = ckpt["step"], ckpt["best_val_video_auroc"]
        if ckpt["steps_per_epoch"] != steps_per_epoch:
            raise RunError(f"--resume {run_dir}: {steps_per_epoch} steps per epoch now, "
                           f"{ckpt['steps_per_epoch']} when it was saved (different data or batch size)")
    else:
        folder.check_new()
    folder.write_config(asdict(cfg), step)
    # the frozen weights never change: hashed once for every checkpoint of the run (rank 0 writes them)
    trainable = [n for n, p in detector.named_parameters() if p.requires_grad]
    frozen = checkpoint.base_sha256(detector, trainable) if procs.main else ""

    def save(name: str, **extra) -> None:
        folder.save(name, detector, checkpoint_config(cfg), frozen_sha256=frozen, step=step, **extra)

    def save_last(**extra) -> None:  # with what --resume needs
        save("last.pt", optimizer=optimizer.state_dict(), steps_per_epoch=steps_per_epoch,
             best_val_video_auroc=best, rng=rng_state(), **extra)

    bar = tqdm(total=total, initial=step, disable=not procs.main, desc=run_dir.name, dynamic_ncols=True)
    say = bar.write if procs.main else (lambda message: None)
    share_sizes = split_sizes(cfg.batch_size, procs.world)
    say(f"run {run_dir}: {len(train_set)} train frames of {len(train_videos)} videos, {len(val_videos)} val "
        f"videos; {cfg.clip} tuning={cfg.tuning} ({n_trainable:,} trainable), {procs.world} process(es) x "
        f"batch {'/'.join(map(str, sorted(set(share_sizes), reverse=True)))}, {steps_per_epoch} steps/epoch, "
        f"device {procs.device}, precision {cfg.precision} ({precision_why})"
        + (f"; resuming at step {step}" if step else "")
        + (f"; val AUROC undefined: {val_note}, best.pt = latest epoch" if val_note else ""))
    batches = None  # the epoch's loader
    with bar:  # closed before any message of an exception
        while step < total:
            epoch = step // steps_per_epoch
            if batches is None:  # the epoch starts, or resumes in its middle
                sampler, batches = epoch_batches(train_set, order, epoch, step % steps_per_epoch, cfg, procs, size)
                meter = Meter()
            k, (images, labels, _) = next(batches)
            shares = sampler.shares(k) if procs.distributed else None
            lr = get_lr(step, total, cfg)
            images, labels = images.to(procs.device, non_blocking=True), labels.to(procs.device, non_blocking=True)
            try:
                parts = train_step(model, optimizer, images, labels, shares, step_generator(cfg.seed, step), lr,
                                   cfg, cfg.precision, stop)
            except NonFiniteLoss as e:
                raise folder.diverged(e, step + 1, epoch) from None
            except StopRequested as e:  # before any update of the step in flight: last.pt at `step`
                if folder.last_step != step:
                    save_last()
                raise folder.interrupted(e.signum, step, total) from None
            step += 1
            meter.add(parts, sum(shares) if shares else len(images))
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                record = {"step": step, "epoch": epoch, "lr": lr, **meter.record()}
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{record['images_per_s']:.0f}")
                folder.log(record)
            stopping = 0 < cfg.stop_after <= step
            if step % steps_per_epoch == 0:
                # the epoch is complete: validate (rank 0), best.pt when the val AUROC improves (the
                # latest epoch when it cannot rank), last.pt, the epoch's log line
                batches = None  # its loader workers stop before validation starts its own
                record = {"step": step, "epoch": epoch, "epoch_done": True}
                stored = {}  # the val videos' scores, only in checkpoints of the weights that scored them
                if procs.main and val_videos:
                    metrics, stored = validate(detector, val_videos, procs.device, cfg)
                    record.update(metrics)
                    score = record["val_video_auroc"]
                    if score is not None and (best is None or score > best):
                        best = score
                        save("best.pt", epoch=epoch, val_video_auroc=score, **stored)
                    record["best_val_video_auroc"] = best
                    say(f"epoch {epoch}: val video AUROC {fmt(score)}, best {fmt(best)}")
                else:  # no ranking: the latest epoch
                    save("best.pt", epoch=epoch)
                    if val_note:
                        record["val"] = f"val AUROC undefined: {val_note}; best.pt = latest epoch"
                        say(f"epoch {epoch}: {record['val']}")
                save_last(**stored)
                folder.log(record)
                if procs.distributed:
                    dist.barrier()  # the other processes wait for rank 0's validation and saves
            elif stopping or step % cfg.save_every == 0:
                save_last()
            if stopping:
                break
    if procs.main:
        print(f"{'stopped' if step < total else 'done'} at step {step}/{total}: {run_dir}", flush=True)
    return detector


def main(argv: list[str] | None = None) -> clip_vit.DeepfakeDetector:
    cfg = parse_args(argv)
    try:
        with processes(cfg.device) as procs, StopSignals(defer=True) as stop:
            if procs.device.type == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = True
            return train(cfg, procs, stop)
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
