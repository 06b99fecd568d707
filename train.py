"""Train the deepfake detector: CLIP ViT-L/14 with LN-tuning, L2-normalised features, uniformity +
alignment losses and slerp latent augmentation, the paper's method and recipe.

    python train.py                                   # the paper's full recipe on data/ff++ (one GPU)
    torchrun --nproc_per_node=4 train.py              # the same model on 4 GPUs
    python train.py --resume runs/<name>              # continue exactly where it stopped

The defaults of TrainConfig ARE the published recipe; every field is a flag. A run writes
runs/<name>/config.json, log.jsonl, last.pt (what --resume needs) and best.pt (best FF++ val video
AUROC, with the val videos' scores). SIGTERM or Ctrl-C: last.pt is written, the exit names --resume.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import clip_vit
import data
from losses import alignment, slerp_augment, uniformity
from util import calibration, cli
from util.distributed import (Processes, average_gradients, device_flag, gather_batch, processes,
                              rank_zero_first, split_sizes, torchrun_env)
from util.layouts import FFPP_SOURCES, Video, load_videos
from util.precision import PRECISIONS, autocast, resolve_precision
from util.results import display
from util.run import Interrupted, Meter, RunError, RunFolder, mix_seed, resumed_config
from util.signals import StopRequested, StopSignals, ignore_stop_signals


def flag(default, help: str, **checks):
    """A TrainConfig field: its default, its --help, and `min` / `choices` for util.cli's checks."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **checks})
    return field(default=default, metadata={"help": help, **checks})


@dataclass
class TrainConfig:
    # data
    data: str = flag("data", "folder with <dataset>/<split>/index.csv from preprocess.py")
    dataset: str = flag("ff++", "training dataset folder under --data (ff++ = FF++ c23)")
    sources: list[str] = flag(list(FFPP_SOURCES), "sources to train on (real + manipulations)")
    frames: int = flag(32, "max frames per video", min=1)
    balanced: bool = flag(False, "class-balanced sampling (the paper: off)")
    workers: int = flag(8, "DataLoader workers per process", min=0)
    # model
    clip: str = flag("ViT-L/14", "OpenAI CLIP name (downloaded), path to its weights, or 'tiny'")
    tuning: str = flag("ln", "which tensors train", choices=clip_vit.TUNING)
    norm: bool = flag(True, "L2-normalise the features before the head")
    grad_checkpointing: bool = flag(False, "recompute blocks in backward (less GPU memory)")
    compile: bool = flag(False, "torch.compile the tower (inductor): compiling takes ~1 minute on 2 cores")
    # objective
    uniformity: float = flag(0.5, "weight of the uniformity loss (0 = off)", min=0)
    alignment: float = flag(0.1, "weight of the alignment loss (0 = off)", min=0)
    slerp: bool = flag(True, "slerp latent augmentation within each class")
    # optimisation (AdamW, cosine per step from lr to min_lr, no warm-up)
    lr: float = flag(8e-5, "AdamW learning rate at step 0")
    min_lr: float = flag(5e-5, "learning rate at the last step (cosine per step)", min=0)
    beta1: float = flag(0.9, "AdamW beta1")
    beta2: float = flag(0.999, "AdamW beta2")
    weight_decay: float = flag(0.0, "AdamW weight decay", min=0)
    batch_size: int = flag(128, "global batch over all processes (at least the number of processes)", min=1)
    epochs: int = flag(10, "passes over the training frames", min=1)
    seed: int = flag(42, "seeds the head, the epoch orders, augmentations and slerp")
    device: str = flag("auto", "auto | cuda | cpu | cuda:1 ...")
    precision: str = flag("auto", "auto: bf16 autocast on CUDA and on a CPU with native bf16, else fp32; "
                          "a run records what it trained with", choices=PRECISIONS)
    # run bookkeeping
    out: str = flag("runs", "parent folder of run folders")
    name: str = flag("", "run folder name (empty: a timestamp)")
    resume: str = flag("", "run folder to continue (its config.json is the base config)")
    val: bool = flag(True, "validate on the val split after every epoch")
    val_batch_size: int = flag(128, "batch size of the validation pass", min=1)
    log_every: int = flag(50, "steps between log.jsonl lines", min=1)
    save_every: int = flag(500, "steps between last.pt saves (also each epoch)", min=1)
    stop_after: int = flag(0, "stop with a checkpoint after this many steps in total (0 = all epochs)", min=0)

    @property
    def loader_workers(self) -> int:
        """DataLoader workers per process: --workers, at most the CPUs here."""
        return min(self.workers, os.cpu_count() or 1)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """A flag per TrainConfig field, --resume's config.json as the base; bad values exit 2."""
    types = {"device": device_flag}
    parser = cli.config_parser(TrainConfig, __doc__, types)
    cfg = cli.parse_config(parser, TrainConfig, argv, types,
                           base=lambda given: resumed_config(parser, given, {"resume", "stop_after"}))
    world = torchrun_env()[1]
    if cfg.batch_size < world:
        parser.error(f"argument --batch-size: {cfg.batch_size} is smaller than the {world} processes "
                     f"(each takes a share of every batch); use at least {world}")
    return cfg


def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Cosine from cfg.lr at step 0 to cfg.min_lr at the last step, no warm-up (per step)."""
    progress = step / max(total - 1, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def objective(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
              cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's loss on the global batch, and its terms: a new loss is one more term here."""
    ce = F.cross_entropy(logits, labels)
    l_unif, l_align = uniformity(features), alignment(features, labels)
    loss = ce + cfg.uniformity * l_unif + cfg.alignment * l_align
    return loss, {"ce": ce, "uniformity": l_unif, "alignment": l_align}


def train_step(detector: clip_vit.DeepfakeDetector, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, step: int, lr: float, cfg: TrainConfig, procs: Processes,
               stop: StopSignals | None = None) -> dict[str, float]:
    """One AdamW step of the paper's objective on the global batch (this process holds its share);
    returns the loss terms. A NaN loss or a stop signal in any process ends it before the update."""
    with autocast(images.device, cfg.precision):                      # bf16 matmuls in the tower
        features = detector.features(images).float()                  # [b, width] unit norm (--norm)
    if procs.distributed:  # the global batch in every process, with gradients, as on one GPU
        shares = split_sizes(cfg.batch_size, procs.world)
        features, labels = gather_batch(features, shares), gather_batch(labels, shares)  # [B, width], [B]
    if cfg.slerp:  # a function of (seed, step): the same in every process, and after --resume
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, "slerp", step))
        features = slerp_augment(features, labels, generator)          # [B, width]
    logits = detector.head(features)                                  # [B, 2] fp32
    loss, parts = objective(features, logits, labels, cfg)            # CE + 0.5 L_unif + 0.1 L_align
    terms = dict(zip(("loss", *parts), torch.stack([loss, *parts.values()]).tolist()))  # one host sync
    if not math.isfinite(terms["loss"]):  # the same global loss in every process: all stop here
        raise FloatingPointError(f"loss is {terms['loss']}")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    signum = average_gradients(params, stop.signum if stop else 0, procs)  # one all_reduce (torchrun)
    if signum:
        raise StopRequested(signum)
    optimizer.step()
    return terms


def optimizer_for(detector: clip_vit.DeepfakeDetector, cfg: TrainConfig) -> torch.optim.AdamW:
    """The recipe's AdamW over the tensors that train (set_trainable chose them)."""
    params = [p for p in detector.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def load_val(cfg: TrainConfig) -> tuple[list[Video], str]:
    """The val videos, or [] and why validation cannot rank ("" with --no-val)."""
    index = Path(cfg.data) / cfg.dataset / "val" / "index.csv"
    if not cfg.val or not index.is_file():
        return [], f"no val split ({index} not found)" if cfg.val else ""
    videos = load_videos(cfg.data, cfg.dataset, "val", cfg.sources, cfg.frames)
    classes = {v.label for v in videos}
    if len(classes) < 2:
        return [], f"only {'fake' if classes == {1} else 'real'} videos in the val split"
    return videos, ""


def epoch_loader(train_set: data.FrameDataset, epoch: int, skip: int, cfg: TrainConfig,
                 procs: Processes) -> DataLoader:
    """This process's share of the epoch's global batches from batch `skip` on (resume)."""
    train_set.epoch = epoch  # before the loader's workers copy the dataset
    order = data.epoch_order(train_set.labels, cfg.seed, epoch, cfg.balanced)
    batches = data.global_batches(order, cfg.batch_size, procs.world, procs.rank, skip)
    return DataLoader(train_set, batch_sampler=batches, num_workers=cfg.loader_workers,
                      pin_memory=procs.device.type == "cuda", worker_init_fn=ignore_stop_signals,
                      generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone


def end_epoch(folder: RunFolder, detector: clip_vit.DeepfakeDetector, val_videos: list[Video], val_note: str,
              cfg: TrainConfig, procs: Processes, step: int, epoch: int, best: float | None) -> float | None:
    """Validation scored as evaluate.py scores; best.pt when the val video AUROC improves (the latest
    epoch when it cannot rank), with the val scores as its reference; last.pt; the log line."""
    record, stored, said = {"step": step, "epoch": epoch, "epoch_done": True}, {}, ""
    if val_videos:
        frame_p, video_p = data.score_videos(detector, val_videos, procs.device, cfg.val_batch_size,
                                             cfg.loader_workers, cfg.precision, "val", procs)
        labels = [v.label for v in val_videos]
        record["val_video_auroc"] = auroc = data.compute_metrics(labels, video_p)["auroc"]
        frame_labels = [v.label for v in val_videos for _ in v.frames]
        record["val_frame_auroc"] = data.compute_metrics(frame_labels, frame_p)["auroc"]
        reference = calibration.build_reference(labels, video_p, f"{display(cfg.dataset)} val")
        stored = {calibration.KEY: calibration.reference_entry(reference)}
        if best is None or auroc > best:
            best = auroc
            folder.save("best.pt", step, epoch=epoch, val_video_auroc=best, **stored)
        record["best_val_video_auroc"] = best
        said = f"val video AUROC {auroc:.4f}, best {best:.4f}"
    else:
        folder.save("best.pt", step, epoch=epoch)
        if val_note:
            record["val"] = said = f"val AUROC undefined: {val_note}; best.pt = latest epoch"
    folder.save_last(step, best, **stored)
    folder.log(record)
    if said and procs.main:
        tqdm.write(f"epoch {epoch}: {said}")
    return best


def start(cfg: TrainConfig, procs: Processes):
    """The detector (its trainable tensors chosen), the optimizer, the frames, the val videos and note."""
    torch.manual_seed(cfg.seed)  # the head's initialisation; the same in every process
    train_videos = load_videos(cfg.data, cfg.dataset, "train", cfg.sources, cfg.frames)  # DataError: said
    val_videos, val_note = load_val(cfg)
    with rank_zero_first(procs):  # a download happens once
        detector = clip_vit.build_detector(cfg.clip, normalize=cfg.norm, device=procs.device)
    n_trainable = clip_vit.set_trainable(detector, cfg.tuning)
    detector.visual.transformer.grad_checkpointing = cfg.grad_checkpointing
    if cfg.compile:  # in place: the checkpoints' keys stay; not frozen, the LayerNorms train
        clip_vit.compile_tower(detector.visual, frozen=False)
    transform = data.train_transform(detector.visual.input_resolution)  # 224, or 336 for ViT-L/14@336px
    train_set = data.FrameDataset(train_videos, transform, cfg.seed)
    if len(train_set) < cfg.batch_size:
        raise RunError(f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training frames")
    optimizer = optimizer_for(detector, cfg)
    # what the run computes in; config.json records the outcome, so that --resume keeps it
    cfg.precision, why = resolve_precision(cfg.precision, procs.device)
    if procs.main:  # the run's first line
        tqdm.write(f"{len(train_set)} train frames, {len(val_videos)} val videos; {cfg.clip} "
                   f"tuning={cfg.tuning} ({n_trainable:,} trainable); {procs.world} process(es), batch "
                   f"{cfg.batch_size}; device {procs.device}, precision {cfg.precision} ({why})"
                   f"{', compiled tower (torch.compile)' if cfg.compile else ''}")
    return detector, optimizer, train_set, val_videos, val_note


def train(cfg: TrainConfig, procs: Processes, stop: StopSignals) -> clip_vit.DeepfakeDetector:
    """Runs (or resumes) one training run; returns the detector."""
    detector, optimizer, train_set, val_videos, val_note = start(cfg, procs)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    run_dir = Path(cfg.resume) if cfg.resume else Path(cfg.out) / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    config = {**asdict(cfg), "normalize": cfg.norm}  # + what clip_vit.load_detector reads
    folder = RunFolder(run_dir, detector, optimizer, config, procs.world, procs.main)
    step, best = folder.start(bool(cfg.resume), steps_per_epoch)
    with tqdm(total=total, initial=step, disable=not procs.main, desc=str(run_dir)) as bar:
        try:
            while step < total and not 0 < cfg.stop_after <= step:
                epoch, skip = divmod(step, steps_per_epoch)
                meter = Meter(cfg.batch_size)
                for images, labels, _ in epoch_loader(train_set, epoch, skip, cfg, procs):
                    images, labels = images.to(procs.device), labels.to(procs.device)
                    lr = get_lr(step, total, cfg)
                    meter.add(train_step(detector, optimizer, images, labels, step, lr, cfg, procs, stop))
                    step += 1
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == total:
                        folder.log({"step": step, "epoch": epoch, "lr": lr, **meter.record()})
                    stopping = 0 < cfg.stop_after <= step
                    if (stopping or step % cfg.save_every == 0) and step % steps_per_epoch:
                        folder.save_last(step, best)  # (an epoch's end saves it below)
                    if stopping:
                        break
                if step % steps_per_epoch == 0:
                    best = end_epoch(folder, detector, val_videos, val_note, cfg, procs, step, epoch, best)
        except StopRequested as e:  # before any update of the step in flight: last.pt at `step`
            if folder.last_step != step:
                folder.save_last(step, best)
            raise folder.interrupted(e.signum, step, total) from None
        except FloatingPointError as e:
            raise folder.diverged(e, step + 1, step // steps_per_epoch) from None
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
    except (ValueError, OSError) as e:  # DataError, RunError, DownloadError, checkpoint errors, files
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
