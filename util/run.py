"""A training run's folder: config.json, log.jsonl, last.pt and best.pt written whole, the --resume
command every failure names, the one seed-mixing formula, and log.jsonl read back for Figure 1."""
from __future__ import annotations

import argparse
import hashlib
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from util import checkpoint
from util.files import atomic_write, writing
from util.layouts import DataError

def mix_seed(*parts: int | str) -> int:
    """One 63-bit seed from (seed, epoch, a name, ...), the same in every run (hash() is salted)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RunError(ValueError):
    """A run that cannot be started or go on; the message says what to do."""


class Interrupted(RunError):
    """SIGTERM / SIGINT: last.pt holds the last completed step; exit status 128 + signal."""

    def __init__(self, message: str, signum: int, main: bool):
        super().__init__(message)
        self.status, self.main = 128 + signum, main


def resumed_config(parser: argparse.ArgumentParser, given: dict, control: set[str]) -> tuple | None:
    """parse_config's base under --resume: config.json less the `control` fields (this run's only)."""
    if not given.get("resume"):
        return None
    path = Path(given["resume"]) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        saved = None
    if not isinstance(saved, dict):
        parser.error(f"argument --resume: {path} is missing, truncated or not train.py's config.json; "
                     f"restore it (last.pt holds it under 'config'), or start a new run with another --name")
    return {k: v for k, v in saved.items() if k not in control}, "argument --resume: config.json"


def trim_log(path: Path, step: int) -> None:
    """On resume, keep the log lines up to the checkpoint's step (the later ones come again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except (ValueError, AttributeError):  # a line cut short by a failed write (a full disk)
            pass
    atomic_write(path, "".join(kept))


class RunFolder:
    """runs/<name>/: every process calls, rank 0 writes; a failed write names the --resume command."""

    def __init__(self, dir: Path, detector: nn.Module, optimizer: torch.optim.Optimizer, config: dict,
                 world: int = 1, main: bool = True):
        self.dir, self.detector, self.optimizer, self.config = Path(dir), detector, optimizer, config
        self.world, self.main = world, main
        self.last_step: int | None = None  # the step of the last.pt on disk
        self.steps_per_epoch = 0
        self.frozen_sha256 = ""  # of the weights that never change: hashed once per run

    def start(self, resume: bool, steps_per_epoch: int) -> tuple[int, float | None]:
        """A new run (never over an existing one), or --resume's: last.pt into the detector, the
        optimizer and torch's RNGs. Writes config.json; returns (step, best val video AUROC)."""
        self.steps_per_epoch, step, best = steps_per_epoch, 0, None
        if not resume and (self.dir / "last.pt").exists():
            raise RunError(f"{self.dir} already holds a run: pass --resume {self.dir} or another --name")
        if resume:
            last = self.dir / "last.pt"
            try:
                ckpt = checkpoint.load_checkpoint(last) if last.is_file() else {}
            except ValueError:  # util.checkpoint's one error for a damaged or foreign file
                ckpt = {}
            if not all(k in ckpt for k in ("optimizer", "rng", "step", "steps_per_epoch",
                                            "best_val_video_auroc")):
                raise RunError(f"--resume {self.dir}: {last} is missing, truncated or not a checkpoint of "
                               f"train.py; copy back a good last.pt, or start a new run with another --name")
            checkpoint.apply_checkpoint(self.detector, ckpt, self.config["clip"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if ckpt["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            if ckpt["steps_per_epoch"] != steps_per_epoch:
                raise RunError(f"--resume {self.dir}: {steps_per_epoch} steps per epoch now, "
                               f"{ckpt['steps_per_epoch']} when it was saved (different data or batch size)")
            step, best = ckpt["step"], ckpt["best_val_video_auroc"]
            self.last_step = step  # the last good checkpoint, until the next save
            self.frozen_sha256 = ckpt["base_sha256"]  # apply_checkpoint has just hashed and matched it
        if self.main:
            with self.writing("config.json"):
                self.dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self.dir / "config.json", json.dumps(self.config, indent=2) + "\n")
                trim_log(self.dir / "log.jsonl", step)
        if self.main and not self.frozen_sha256:  # hashing ViT-L/14 takes seconds: once per run
            trainable = [n for n, p in self.detector.named_parameters() if p.requires_grad]
            self.frozen_sha256 = checkpoint.base_sha256(self.detector, trainable)
        return step, best

    def resume_command(self) -> str:
        if self.world > 1:
            return f"torchrun --nproc_per_node={self.world} train.py --resume {self.dir}"
        return f"python train.py --resume {self.dir}"

    def writing(self, name: str):
        return writing(self.dir / name, f"make room (or fix the permission), then continue with "
                                        f"`{self.resume_command()}` (files are replaced whole: the previous "
                                        f"checkpoints are intact)")

    def log(self, record: dict) -> None:
        if self.main:
            with self.writing("log.jsonl"), open(self.dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def save(self, name: str, step: int, **extra) -> None:
        if name == "last.pt":
            self.last_step = step
        if self.main:
            with self.writing(name):
                checkpoint.save_checkpoint(self.dir / name, self.detector, self.config,
                                           frozen_sha256=self.frozen_sha256, step=step, **extra)

    def save_last(self, step: int, best: float | None, **extra) -> None:
        """last.pt, with what --resume needs (torch's RNG states keep any other draw exact)."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        self.save("last.pt", step, optimizer=self.optimizer.state_dict(),
                  steps_per_epoch=self.steps_per_epoch, best_val_video_auroc=best, rng=rng, **extra)

    def interrupted(self, signum: int, step: int, total: int) -> Interrupted:
        """The exit of a run stopped by `signum` (last.pt already at `step`)."""
        return Interrupted(f"stopped by {signal.Signals(signum).name} at step {step}/{total}; "
                           f"{self.dir / 'last.pt'} holds it. Continue with: {self.resume_command()}",
                           signum, self.main)

    def diverged(self, error: FloatingPointError, step: int, epoch: int) -> RunError:
        """The error of a non-finite loss at `step` (not applied), naming the last good checkpoint."""
        saved = "none yet" if self.last_step is None else f"{self.dir / 'last.pt'} (step {self.last_step})"
        return RunError(f"{error} at step {step} (epoch {epoch}); stopping before the update. Last good "
                        f"checkpoint: {saved}; continue with `{self.resume_command()}` (e.g. a lower --lr)")


class Meter:
    """The loss terms averaged between log lines, and images/s."""

    def __init__(self, batch_size: int):
        self.batch_size, self.sums, self.steps, self.start = batch_size, {}, 0, time.time()

    def add(self, terms: dict[str, float]) -> None:
        self.sums = {k: self.sums.get(k, 0.0) + v for k, v in terms.items()}
        self.steps += 1

    def record(self) -> dict:
        seconds = max(time.time() - self.start, 1e-9)
        out = {"images_per_s": round(self.steps * self.batch_size / seconds, 1),
               **{k: v / self.steps for k, v in self.sums.items()}}
        self.sums, self.steps, self.start = {}, 0, time.time()
        return out


@dataclass
class Curve:
    """A run's val video AUROC at the end of each epoch (log.jsonl): the paper's Figure 1."""
    run: Path
    steps: list[int]
    epochs: list[int]
    auroc: list[float]
    undefined: int = 0  # epochs whose val AUROC was undefined (null: one class)

    def best(self) -> int:
        """Index of the best record (the first of equals, as train.py keeps best.pt)."""
        return self.auroc.index(max(self.auroc))


def read_curve(run: Path) -> Curve:
    """A train.py run folder's Curve; a step logged twice (a resumed run) counts once, the last time."""
    log = run / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"--curves {run}: no log.jsonl in it; expected a train.py run folder")
    records, n = {}, 0
    try:
        for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
            record = json.loads(line) if line.strip() else {}
            if record.get("epoch_done") and "val_video_auroc" in record:
                value = record["val_video_auroc"]
                if type(record.get("step")) is not int or type(record.get("epoch")) is not int \
                        or not (value is None or 0 <= value <= 1):
                    raise ValueError("a validation record needs an integer step and epoch")
                records[record["step"]] = record
    except (ValueError, AttributeError, TypeError):  # UnicodeDecodeError and JSONDecodeError too
        where = f"{log} line {n}" if n else str(log)
        raise DataError(f"{where}: not a JSON object of train.py's log (one per line)") from None
    kept = [records[s] for s in sorted(records) if records[s]["val_video_auroc"] is not None]
    if not kept:
        raise DataError(f"{log}: no validation records with a val video AUROC (one per epoch unless "
                        f"--no-val; null when the val split holds one class)")
    return Curve(run, [r["step"] for r in kept], [r["epoch"] for r in kept],
                 [float(r["val_video_auroc"]) for r in kept], len(records) - len(kept))
