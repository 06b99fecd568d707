"""Train the deepfake detector: CLIP ViT-L/14 with LN-tuning, L2-normalised features, uniformity +
alignment losses and slerp latent augmentation, the paper's method and recipe.

    python train.py                                   # the paper's full recipe on data/ff++ (one GPU)
    torchrun --nproc_per_node=4 train.py              # the same on 4 GPUs (effective batch stays 128)
    python train.py --tuning linear-probe --no-norm --uniformity 0 --alignment 0 --no-slerp   # ablation rows
    python train.py --resume runs/<name>              # continue exactly where it stopped
    python train.py --data data-mini --clip tiny --epochs 2 --batch-size 16 --workers 2   # CPU smoke run

The defaults of TrainConfig ARE the published recipe; every field is a command-line flag
(`--batch-size 64`, `--no-slerp`, ...). A run writes runs/<name>/config.json, log.jsonl (one JSON
line per --log-every steps and per epoch), last.pt (every --save-every steps and each epoch, with the
optimizer and RNG states for --resume) and best.pt (best FF++ val video-level AUROC so far).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import clip_vit
import data as data_lib
from layouts import DataError, atomic_write
from losses import alignment, slerp_augment, uniformity


@dataclass
class TrainConfig:
    # data
    data: str = field(default="data", metadata={"help": "folder with <dataset>/<split>/index.csv from preprocess.py"})
    dataset: str = field(default="ff++", metadata={"help": "training dataset folder under --data (ff++ = FF++ c23)"})
    sources: list[str] = field(default_factory=lambda: list(data_lib.FFPP_SOURCES),
                               metadata={"help": "sources to train on (real + manipulations)"})
    frames: int = field(default=32, metadata={"help": "max frames per video"})
    balanced: bool = field(default=False, metadata={"help": "class-balanced sampling (the paper: off)"})
    workers: int = field(default=8, metadata={"help": "DataLoader workers per process"})
    # model
    clip: str = field(default="ViT-L/14", metadata={"help": "OpenAI CLIP name (downloaded), path to its weights, or 'tiny'"})
    tuning: str = field(default="ln", metadata={"choices": clip_vit.TUNING, "help": "which tensors train"})
    norm: bool = field(default=True, metadata={"help": "L2-normalise the features before the head"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "recompute blocks in backward (less GPU memory)"})
    # objective
    uniformity: float = field(default=0.5, metadata={"help": "weight of the uniformity loss (0 = off)"})
    alignment: float = field(default=0.1, metadata={"help": "weight of the alignment loss (0 = off)"})
    slerp: bool = field(default=True, metadata={"help": "slerp latent augmentation within each class"})
    # optimisation (AdamW, cosine per step from lr to min_lr, no warm-up)
    lr: float = field(default=8e-5, metadata={"help": "AdamW learning rate at step 0"})
    min_lr: float = field(default=5e-5, metadata={"help": "learning rate at the last step (cosine per step)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=128, metadata={"help": "effective batch over all processes"})
    epochs: int = field(default=10, metadata={"help": "passes over the training frames"})
    seed: int = field(default=42, metadata={"help": "seeds the head, the epoch orders, augmentations and slerp"})
    device: str = field(default="auto", metadata={"help": "auto | cuda | cpu | cuda:1 ..."})
    # run bookkeeping
    out: str = field(default="runs", metadata={"help": "parent folder of run folders"})
    name: str = field(default="", metadata={"help": "run folder name (default: a timestamp)"})
    resume: str = field(default="", metadata={"help": "run folder to continue (its config.json is the base config)"})
    val: bool = field(default=True, metadata={"help": "validate on the val split after every epoch"})
    val_batch_size: int = field(default=128, metadata={"help": "batch size of the validation pass"})
    log_every: int = field(default=50, metadata={"help": "steps between log.jsonl lines"})
    save_every: int = field(default=500, metadata={"help": "steps between last.pt saves (also each epoch)"})
    stop_after: int = field(default=0, metadata={"help": "stop with a checkpoint after this many steps in total (0 = all epochs)"})


RUN_CONTROL = {"resume", "stop_after"}  # never taken from a resumed run's config.json


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """argparse generated from TrainConfig: --field-name VALUE, --x/--no-x for booleans."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kwargs = dict(default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {default})")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs.update(nargs="+", type=str)
        else:
            kwargs["type"] = type(default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    given = vars(parser.parse_args(argv))  # only the flags on the command line
    base = asdict(defaults)
    if given.get("resume"):
        saved = Path(given["resume"]) / "config.json"
        if not saved.is_file():
            raise SystemExit(f"--resume {given['resume']}: no config.json there (expected a run folder of train.py)")
        base.update({k: v for k, v in json.loads(saved.read_text()).items() if k in base and k not in RUN_CONTROL})
    return TrainConfig(**{**base, **given})


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Cosine from cfg.lr at step 0 to cfg.min_lr at the last step, no warm-up (per step)."""
    progress = step / max(total - 1, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    # slerp's random numbers are a function of (seed, step, rank): exact after --resume, and
    # different on every rank, without keeping a generator state per rank
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


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
    """best.pt / last.pt: the trainable tensors only (LN + head: ~0.4 MB for ViT-L/14), atomically."""
    clip_vit.save_checkpoint(path, detector, checkpoint_config(cfg), **extra)


class TrainForward(nn.Module):
    """features -> (slerp) -> head in one forward, so DistributedDataParallel sees the whole step."""

    def __init__(self, detector: clip_vit.DeepfakeDetector, slerp: bool):
        super().__init__()
        self.detector, self.slerp = detector, slerp

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        features = self.detector.features(images)  # [B, width], unit norm when cfg.norm
        if self.slerp:
            features = slerp_augment(features, labels, generator)  # [B, width] float32
        return features, self.detector.head(features)  # [B, width], [B, 2]


def objective(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig):
    """CE + w_u * uniformity + w_a * alignment. With --no-norm the two feature losses still run on
    the raw features, although they are defined on the unit hypersphere (the paper's ablation rows
    without norm also have them off). Under DDP they see this rank's local batch only (no
    all_gather of features): with 2+ GPUs the pairs are those within each rank's share of the batch."""
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


def validate(detector: nn.Module, videos: list, device: torch.device, batch_size: int, workers: int) -> dict:
    """Frame- and video-level AUROC of p_fake (video score = mean of its frames' p_fake)."""
    frame_p, video_p = data_lib.score_videos(detector, videos, device, batch_size, workers, desc="val")
    frame_labels = [v.label for v in videos for _ in v.frames]
    return {"val_video_auroc": data_lib.compute_metrics([v.label for v in videos], video_p)["auroc"],
            "val_frame_auroc": data_lib.compute_metrics(frame_labels, frame_p)["auroc"]}


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def trim_log(log_path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be written again)."""
    if log_path.is_file():
        lines = [l for l in log_path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= step]
        log_path.write_text("".join(l + "\n" for l in lines))


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> clip_vit.DeepfakeDetector:
    """Runs (or resumes) one training run; returns the detector (unwrapped, final weights)."""
    # --- processes and device
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if cfg.device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device_type = torch.device(cfg.device).type
    if distributed:
        # rank 0 validates alone while the others wait in a barrier: allow it an hour
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
        rank, world, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    if device_type == "cuda":
        index = local_rank if distributed or cfg.device == "auto" else (torch.device(cfg.device).index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        device = torch.device("cpu")
    amp = device.type == "cuda"  # bf16 autocast on GPU, fp32 on CPU
    main = rank == 0
    try:
        return _train(cfg, rank, world, device, amp, main, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, amp: bool, main: bool,
           distributed: bool) -> clip_vit.DeepfakeDetector:
    if cfg.batch_size % world:
        raise SystemExit(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    local_batch = cfg.batch_size // world  # effective batch = cfg.batch_size
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the head's initialisation; the same on every rank

    # --- data (fails with the preprocess command when data/ff++ is missing)
    train_videos = data_lib.load_videos(cfg.data, cfg.dataset, "train", cfg.sources, cfg.frames)
    val_videos = data_lib.load_videos(cfg.data, cfg.dataset, "val", cfg.sources, cfg.frames) if cfg.val else []

    # --- model (rank 0 first, so a download happens once)
    if distributed and not main:
        dist.barrier()
    detector = clip_vit.build_detector(cfg.clip, normalize=cfg.norm, device=device)
    if distributed and main:
        dist.barrier()
    n_trainable = clip_vit.set_trainable(detector, cfg.tuning)
    detector.visual.transformer.grad_checkpointing = cfg.grad_checkpointing
    size = detector.visual.input_resolution
    train_set = data_lib.FrameDataset(train_videos, data_lib.train_transform(size), seed=cfg.seed)
    sampler = data_lib.make_sampler(train_set, shuffle=True, balanced=cfg.balanced, seed=cfg.seed,
                                    num_replicas=world, rank=rank)
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    total_steps = steps_per_epoch * cfg.epochs
    workers = min(cfg.workers, os.cpu_count() or 1)

    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)

    # --- run folder, resume
    run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.out) / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    step, best = 0, None
    if cfg.resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            raise SystemExit(f"--resume {run_dir}: no last.pt there (the run saved no checkpoint yet)")
        ckpt = clip_vit.load_checkpoint(last)
        clip_vit.apply_checkpoint(detector, ckpt, cfg.clip)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step, best = ckpt["step"], ckpt["best_val_video_auroc"]
        if ckpt["steps_per_epoch"] != steps_per_epoch:
            raise SystemExit(f"--resume {run_dir}: {steps_per_epoch} steps per epoch now, {ckpt['steps_per_epoch']} "
                             f"when it was saved (different data, batch size or number of processes)")
    elif (run_dir / "last.pt").exists():
        raise SystemExit(f"{run_dir} already holds a run: pass --resume {run_dir} or another --name")
    log_path = run_dir / "log.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
        trim_log(log_path, step)
        print(f"run {run_dir}: {len(train_set)} train frames of {len(train_videos)} videos, "
              f"{len(val_videos)} val videos; {cfg.clip} tuning={cfg.tuning} ({n_trainable:,} trainable), "
              f"{world} process(es) x batch {local_batch}, {steps_per_epoch} steps/epoch, device {device}"
              + (f"; resuming at step {step}" if step else ""), flush=True)

    model = TrainForward(detector, cfg.slerp)
    if distributed:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    saved_step = step if cfg.resume else None

    def save_last() -> None:
        nonlocal saved_step
        saved_step = step
        if main:
            save_model(run_dir / "last.pt", detector, cfg, optimizer=optimizer.state_dict(), step=step,
                       steps_per_epoch=steps_per_epoch, best_val_video_auroc=best, rng=rng_state())

    def log(record: dict) -> None:
        if main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # --- the loop
    bar = tqdm(total=total_steps, initial=step, disable=not main, desc=run_dir.name, dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}  # summed on the device: one host sync per log line
    t_log, n_log = time.time(), 0
    while step < total_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        # the epoch's order is a function of (seed, epoch): a resumed run skips the batches it did
        loader = data_lib.make_loader(train_set, local_batch, data_lib.SkipSampler(sampler, skip * local_batch),
                                      workers, cfg.seed + epoch, amp)
        stopping = False
        for images, labels, _ in loader:
            lr = get_lr(step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                features, logits = model(images, labels, step_generator(cfg.seed, step, rank))
            loss, parts = objective(features, logits, labels, cfg)
            finite = torch.isfinite(loss.detach()).float()
            if distributed:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank stops together
            if not finite.item():
                saved = f"{run_dir / 'last.pt'} (step {saved_step})" if saved_step is not None else "none yet"
                raise SystemExit(f"loss is {loss.item()} at step {step + 1} (epoch {epoch}); stopping before the "
                                 f"update. Last good checkpoint: {saved}; continue with --resume {run_dir} "
                                 f"(e.g. with a lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

            # --- bookkeeping
            n_log += len(images) * world
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                ips = n_log / max(time.time() - t_log, 1e-9)
                record = {"step": step, "epoch": epoch, "lr": lr, "images_per_s": round(ips, 1),
                          **{k: v.item() / count for k, v in sums.items()}}
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                log(record)
                sums, t_log, n_log = {}, time.time(), 0
            end_of_epoch = step % steps_per_epoch == 0
            stopping = cfg.stop_after > 0 and step >= cfg.stop_after
            if not end_of_epoch and (stopping or step % cfg.save_every == 0):
                save_last()  # at an epoch end the epoch's own save follows below
            if stopping:
                break

        if step % steps_per_epoch == 0:  # the epoch is complete: validate, save last/best
            record = {"step": step, "epoch": epoch, "epoch_done": True}
            if main and cfg.val:
                record.update(validate(detector, val_videos, device, cfg.val_batch_size, workers))
                score = record["val_video_auroc"]
                if score is not None and (best is None or score > best):
                    best = score
                    save_model(run_dir / "best.pt", detector, cfg, step=step, epoch=epoch, val_video_auroc=score)
                record["best_val_video_auroc"] = best
                bar.write(f"epoch {epoch}: val video AUROC {fmt(score)}, best {fmt(best)}")
            elif main:
                save_model(run_dir / "best.pt", detector, cfg, step=step, epoch=epoch)  # no val: latest
            save_last()
            log(record)
            if distributed:
                dist.barrier()  # the other ranks wait for rank 0's validation and saves
        if stopping:
            break
    bar.close()
    if main:
        print(f"{'stopped' if step < total_steps else 'done'} at step {step}/{total_steps}: {run_dir}", flush=True)
    return detector


def main(argv: list[str] | None = None) -> clip_vit.DeepfakeDetector:
    cfg = parse_args(argv)
    try:
        return train(cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
