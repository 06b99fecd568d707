"""A training run's folder and its bookkeeping: config.json, log.jsonl, last.pt and best.pt written
whole, the --resume command that every failure names, the RNG states a resume restores, and the
meter of the logged losses."""
from __future__ import annotations

import argparse
import json
import random
import signal
import time
from pathlib import Path
from typing import ContextManager

import numpy as np
import torch
from torch import nn

from util import checkpoint
from util.files import atomic_write, writing


class RunError(ValueError):
    """A run folder that cannot be started or continued, or a run that cannot go on (the message
    says what and what to do)."""


class NonFiniteLoss(RunError):
    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


class Interrupted(RunError):
    """SIGTERM / SIGINT: last.pt holds the last completed step; exit status 128 + signal."""

    def __init__(self, message: str, signum: int, main: bool):
        super().__init__(message)
        self.status, self.main = 128 + signum, main


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


def read_config(parser: argparse.ArgumentParser, run_dir: Path, script: str = "train.py") -> dict:
    """A run folder's config.json (the settings --resume continues with); a usage error when it is
    missing or unreadable."""
    path = run_dir / "config.json"
    if not path.is_file():
        parser.error(f"argument --resume: no {path} (expected a run folder of {script})")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        parser.error(f"argument --resume: {path} is truncated or not JSON ({e}); restore it (last.pt holds "
                     f"the same settings under 'config') or start a new run with another --name")
    if not isinstance(saved, dict):
        parser.error(f"argument --resume: {path} is not a config.json of {script} (expected a JSON object)")
    return saved


def resumed_config(parser: argparse.ArgumentParser, given: dict, control: set[str],
                   script: str = "train.py") -> tuple[dict, str] | None:
    """util.cli.parse_config's base under --resume: the run folder's config.json less the `control`
    fields (they steer this invocation only); None without --resume."""
    if not given.get("resume"):
        return None
    saved = read_config(parser, Path(given["resume"]), script)
    return {k: v for k, v in saved.items() if k not in control}, "argument --resume: config.json"


RESUME_KEYS = ("optimizer", "rng", "step", "steps_per_epoch", "best_val_video_auroc")


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


class RunFolder:
    """runs/<name>/ of one run: config.json, log.jsonl, last.pt (what --resume continues from) and
    best.pt. Every process may call; rank 0 (`main`) writes. A failed write (full disk, no
    permission) is one line naming the file and the --resume command: files are replaced whole,
    so the previous ones are intact."""

    def __init__(self, dir: Path, script: str = "train.py", world: int = 1, main: bool = True):
        self.dir, self.script, self.world, self.main = Path(dir), script, world, main
        self.last_step: int | None = None  # the step of the last.pt on disk

    def resume_command(self) -> str:
        if self.world > 1:
            return f"torchrun --nproc_per_node={self.world} {self.script} --resume {self.dir}"
        return f"python {self.script} --resume {self.dir}"

    def writing(self, name: str) -> ContextManager[None]:
        return writing(self.dir / name, f"make room (or fix the permission), then continue with "
                                        f"`{self.resume_command()}` (files are replaced whole: the previous "
                                        f"checkpoints are intact)")

    def check_new(self) -> None:
        """A new run never writes over an existing one."""
        if (self.dir / "last.pt").exists():
            raise RunError(f"{self.dir} already holds a run: pass --resume {self.dir} or another --name")

    def load_last(self) -> dict:
        """last.pt, the state --resume continues from (with the optimizer, RNG and progress)."""
        last = self.dir / "last.pt"
        if not last.is_file():
            raise RunError(f"--resume {self.dir}: no last.pt there (the run saved no checkpoint yet)")
        try:
            ckpt = checkpoint.load_checkpoint(last)
        except OSError as e:
            raise RunError(f"--resume {self.dir}: cannot read {last}: {e.strerror or e}") from None
        except ValueError:  # util.checkpoint's one error for a damaged or foreign file
            ckpt = None
        if ckpt is None or not all(k in ckpt for k in RESUME_KEYS):
            raise RunError(f"--resume {self.dir}: {last} is truncated or not a checkpoint of {self.script}; copy "
                           f"back a good last.pt, or start a new run with another --name (the run's best.pt, if "
                           f"any, is a finished model)")
        self.last_step = ckpt["step"]
        return ckpt

    def write_config(self, config: dict, step: int) -> None:
        """config.json (the settings --resume takes up), and the log cut back to `step`."""
        if self.main:
            with self.writing("config.json"):
                self.dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self.dir / "config.json", json.dumps(config, indent=2) + "\n")
                trim_log(self.dir / "log.jsonl", step)

    def log(self, record: dict) -> None:
        if self.main:
            with self.writing("log.jsonl"):
                append_line(self.dir / "log.jsonl", json.dumps(record))

    def save(self, name: str, detector: nn.Module, config: dict, **extra) -> None:
        """A checkpoint (util.checkpoint's format: the trainable tensors, config and `extra`)."""
        if name == "last.pt":
            self.last_step = extra["step"]
        if self.main:
            with self.writing(name):
                checkpoint.save_checkpoint(self.dir / name, detector, config, **extra)

    def interrupted(self, signum: int, step: int, total: int) -> Interrupted:
        """The exit of a run stopped by `signum` (last.pt already at `step`)."""
        return Interrupted(f"stopped by {signal.Signals(signum).name} at step {step}/{total}; "
                           f"{self.dir / 'last.pt'} holds it. Continue with: {self.resume_command()}",
                           signum, self.main)

    def diverged(self, error: NonFiniteLoss, step: int, epoch: int) -> RunError:
        """The error of a non-finite loss at `step` (not applied), naming the last good checkpoint."""
        saved = f"{self.dir / 'last.pt'} (step {self.last_step})" if self.last_step is not None else "none yet"
        return RunError(f"loss is {error.value} at step {step} (epoch {epoch}); stopping before the update. "
                        f"Last good checkpoint: {saved}; continue with `{self.resume_command()}` (e.g. with a "
                        f"lower --lr)")


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
