"""Evaluate a deepfake detector: the paper's benchmark table, p_fake for any video / image, and
the paper's Figure 1 (validation AUROC during training) from train.py's logs.

Benchmarks (face crops written by preprocess.py under --data):
    python evaluate.py --dataset cdfv2 --checkpoint runs/<name>/best.pt
    python evaluate.py --dataset all                      # paper's table + FF++ per manipulation
    python evaluate.py --dataset all --zero-shot          # zero-shot CLIP baseline
    torchrun --nproc_per_node=4 evaluate.py --dataset all # the same; 4 GPUs share the frames
Any file (one process):
    python evaluate.py --video clip.mp4 | --image face.jpg | --input DIR  [--save-crops DIR]
Figure 1, val video AUROC during training of four runs (writes curves.png, prints each best):
    python evaluate.py --curves runs/ln runs/ln-norm runs/ln-norm-unal runs/full [--x epoch]

Frame score = p_fake = softmax(logits)[:, 1]; video score = mean of its frames' p_fake
(the paper's protocol). Label 1 = fake.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import clip_vit
import preprocess
from data import compute_metrics, predict, video_means, video_scores  # noqa: F401 (documented here too)
from util.files import csv_text, png_bytes, write_json, write_output, writing
from util.tokenizer import load_tokenizer
from util.layouts import (FFPP_METHODS, IMAGE_EXTS, INDEX_FIELDS, VIDEO_EXTS, DataError, Video,
                     command_for, load_videos)
from util.cli import at_least, device_flag

# the paper's cross-dataset columns, in its order, and how the table names them
PAPER_DATASETS = ["cdfv2", "dfd", "dfdc", "ffiw", "dsv1"]
ALL_DATASETS = PAPER_DATASETS + ["ff++", "dfdcp", "folder"]
DISPLAY = {"cdfv2": "CDFv2", "dfd": "DFD", "dfdc": "DFDC", "ffiw": "FFIW", "dsv1": "DSv1",
           "ff++": "FF++", "dfdcp": "DFDCP", "folder": "folder"}
PROMPTS = ("a photo of a real face", "a photo of a fake face")  # class 0, class 1


def display(dataset: str) -> str:
    """Table name: CDFv2, FF++, and FF++ c40 for the folder ff++-c40."""
    base, _, compression = dataset.partition("-")
    return DISPLAY.get(base, base) + (f" {compression}" if compression else "")


# ----------------------------------------------------------------------------- outputs

# ----------------------------------------------------------------------------- models

class ZeroShotCLIP(nn.Module):
    """Zero-shot baseline: cosine similarity to a 'real' and a 'fake' prompt, as logits [N, 2]."""

    def __init__(self, clip: nn.Module, prompts=PROMPTS, tokenizer=None):
        super().__init__()
        self.clip = clip
        tokens = clip_vit.tokenize(list(prompts), clip.context_length, tokenizer=tokenizer)  # [2, 77]
        with torch.no_grad():
            text = F.normalize(clip.encode_text(tokens).float(), dim=-1)  # [2, D], on the CPU
        self.register_buffer("text", text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.clip.encode_image(images).float(), dim=-1)  # [N, D]
        return self.clip.logit_scale.exp().float() * image @ self.text.t()   # [N, 2]


def load_zero_shot(args) -> tuple[nn.Module, str, str]:
    """(zero-shot CLIP, a label for tables, the default output folder)."""
    name = args.clip or "ViT-L/14"
    tokenizer = load_tokenizer(args.bpe)  # first: a bad --bpe is said before minutes of loading
    try:
        clip = clip_vit.tiny_clip() if name == "tiny" else clip_vit.load(name, device="cpu")
        model = ZeroShotCLIP(clip.float(), tuple(args.prompts), tokenizer)
    except (ValueError, OSError, RuntimeError) as e:  # offline, wrong file, prompt too long
        raise ValueError(f"cannot load CLIP {name} for --zero-shot: {e} "
                         f"(evaluate.py takes the file as --clip PATH)") from None
    tag = Path(name).stem if os.path.exists(name) else name.replace("/", "-")
    print(f"model: zero-shot CLIP {name}, prompts {args.prompts}")
    return model, f"zero-shot CLIP {name}", str(Path("eval") / f"zero-shot-{tag}")


def choose_checkpoint(args, benchmark: bool) -> str:
    """--checkpoint; else for benchmarks the newest runs/*/best.pt; else the authors' weights.
    Says which on stdout: a number in a table is worthless without knowing the model."""
    if args.checkpoint is not None:
        print(f"model: {args.checkpoint}")
        return args.checkpoint
    runs = sorted(Path(args.runs).glob("*/best.pt"), key=lambda p: p.stat().st_mtime) if benchmark else []
    if runs:
        print(f"model: newest run's checkpoint {runs[-1]} (pass --checkpoint to choose another)")
        return str(runs[-1])
    why = f"no run found under {args.runs}/, " if benchmark else ""
    print(f"model: {why}using the authors' released weights (pass --checkpoint to use another)")
    return "authors"


def load_trained_detector(args, benchmark: bool) -> tuple[nn.Module, str, str]:
    """(detector of --checkpoint or the default one, a label for tables, the default output folder)."""
    source = choose_checkpoint(args, benchmark)
    path = Path(source)
    expected = "expected a file written by train.py (runs/<name>/best.pt), the authors' model.ckpt, or 'authors'"
    if source != "authors" and not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint {source} is a folder: {expected}")
        raise FileNotFoundError(f"checkpoint {source} not found: {expected}")
    try:
        detector = clip_vit.load_detector(source, clip=args.clip, device="cpu")
    except (ValueError, OSError, RuntimeError) as e:  # wrong file, wrong base weights, offline
        # torch's zip reader says only "[Errno 22] Invalid argument" for some truncated files
        why = ("the file is truncated or corrupt (copy it again, or use the run's last.pt)"
               if isinstance(e, OSError) and e.errno == errno.EINVAL else str(e))
        raise ValueError(f"cannot load checkpoint {source}: {why}") from None
    if source == "authors":
        return detector, "authors' weights", str(Path("eval") / "authors")
    return detector, f"{path.parent.name}/{path.name}", str(path.parent / f"eval-{path.stem}")


# ----------------------------------------------------------------------------- several processes

class ErrorsOnly:
    """stderr of torchrun's ranks > 0: what they write (errors) passes; tqdm, which draws only
    on a terminal, sees none, so one progress bar (rank 0's) is shown."""

    def __init__(self, stream):
        self.stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def distributed(args):
    """Under torchrun (WORLD_SIZE > 1) join the process group (nccl on CUDA, gloo on the CPU);
    ranks > 0 print nothing but errors. Without torchrun nothing happens."""
    if args.world == 1:
        yield
        return
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group(backend)
    stdout, stderr = sys.stdout, sys.stderr
    if args.rank > 0:
        sys.stdout, sys.stderr = open(os.devnull, "w"), ErrorsOnly(sys.stderr)
    try:
        yield
    except RuntimeError as e:  # a collective whose peer died: rank 0 or another rank says why
        if args.rank == 0:
            raise
        raise ConnectionError(f"rank {args.rank} stopped, most likely because another rank failed "
                              f"(see its error): {str(e).splitlines()[0][:160]}") from None
    finally:
        if args.rank > 0:
            sys.stdout.close()
        sys.stdout, sys.stderr = stdout, stderr
        dist.destroy_process_group()


def load_model(args, benchmark: bool) -> tuple[nn.Module, str, str]:
    """(model giving logits [N, 2] in eval mode on --device, a label for tables, the default
    output folder). Under torchrun rank 0 loads first (it downloads what is missing), then the
    others from the cache, rather than every rank downloading the same files at once."""
    if args.rank > 0:
        dist.barrier()
    model, label, out = load_zero_shot(args) if args.zero_shot else load_trained_detector(args, benchmark)
    if args.world > 1 and args.rank == 0:
        dist.barrier()
    return model.to(torch.device(args.device)).eval(), label, out


def score_frames(model: nn.Module, items: list, args, desc: str) -> np.ndarray:
    """p_fake of every crop, in order: float64 [len(items)]. Under torchrun rank r scores crops
    r, r + world, ... with data.predict and every rank receives all the scores; an unreadable
    crop on any rank is a DataError on all of them, so they stay in step."""
    device = torch.device(args.device)
    if args.world == 1:
        return predict(model, items, device, args.batch_size, args.workers, desc)
    error = None
    try:
        share = predict(model, items[args.rank::args.world], device, args.batch_size, args.workers, desc)
    except DataError as e:
        share, error = np.zeros(0), str(e)
    parts: list = [None] * args.world
    dist.all_gather_object(parts, (share, error))
    errors = [e for _, e in parts if e]
    if errors:
        raise DataError(errors[0])
    scores = np.empty(len(items))
    for rank, (p, _) in enumerate(parts):
        scores[rank::args.world] = p
    return scores


# ----------------------------------------------------------------------------- one dataset

def evaluate_dataset(model: nn.Module, dataset: str, split_dir: Path, videos: list[Video],
                     args, out_dir: Path, label: str) -> dict:
    """Score every crop of a split; rank 0 writes videos.csv, metrics.json and roc.png under out_dir."""
    scores = score_frames(model, [f for v in videos for f in v.frames], args, f"{dataset} {split_dir.name}")
    video_p = video_means(videos, scores)  # mean p_fake of each video's frames
    frame_labels = np.array([v.label for v in videos for _ in v.frames])
    video_labels = np.array([v.label for v in videos])

    result = {"dataset": dataset, "split": split_dir.name, "model": label,
              "data": str(split_dir), "video": compute_metrics(video_labels, video_p),
              "frame": compute_metrics(frame_labels, scores)}
    ffpp = dataset.startswith("ff++")
    curves = [("all videos" if ffpp else "video", video_labels, video_p, result["video"]),
              ("all frames" if ffpp else "frame", frame_labels, scores, result["frame"])]
    if ffpp:
        # FF++ test per manipulation: all real videos against one method's fakes
        result["per_source"] = {}
        real = video_labels == 0
        for src in sorted({v.source for v in videos if v.label == 1}):
            sel = real | np.array([v.source == src for v in videos])
            m = result["per_source"][src] = compute_metrics(video_labels[sel], video_p[sel])
            curves.append((f"{FFPP_METHODS.get(src, src)} videos", video_labels[sel], video_p[sel], m))
    if args.rank == 0:
        write_dataset_outputs(out_dir, result, videos, video_p, curves)
    return result


def write_dataset_outputs(out_dir: Path, result: dict, videos: list[Video], video_p: np.ndarray,
                          curves: list) -> None:
    """videos.csv, roc.png (none for one class) and metrics.json, which lists the files and is
    written last: its presence means the others are complete."""
    videos_csv, roc, metrics = out_dir / "videos.csv", out_dir / "roc.png", out_dir / "metrics.json"
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake": f"{p:.6f}", "path": v.path, "file": v.file} for v, p in zip(videos, video_p)]
    fields = ["video_id", "source", "label", "n_frames", "p_fake", "path", "file"]
    write_output(videos_csv, csv_text(fields, rows))
    title = f"{display(result['dataset'])} {result['split']} - {result['model']}"
    if not write_roc_png(roc, curves, title):  # one class: no curve to draw
        roc.unlink(missing_ok=True)            # nor a stale one from a past run
        roc = None
    result["files"] = {"videos": str(videos_csv), "metrics": str(metrics), "roc": str(roc) if roc else None}
    write_json(metrics, result)


# ----------------------------------------------------------------------------- tables

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def metrics_table(results: list[dict]) -> str:
    """All metrics per dataset and level, with counts; n/a cells explained below the table."""
    lines = ["| dataset | level | count | real | fake | AUROC | AP | EER | Acc@0.5 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in results:
        name = display(r["dataset"])
        for level in ("video", "frame"):
            m = r[level]
            lines.append(f"| {name} | {level} | {m['n']} | {m['n_real']} | {m['n_fake']} | "
                         f"{pct(m['auroc'])} | {pct(m['ap'])} | {pct(m['eer'])} | {pct(m['acc'])} |")
            if m.get("undefined"):
                notes.append(f"- {name} {level}: {m['undefined']}")
    return "\n".join(lines + ([""] + notes if notes else []))


def paper_table(results: dict, label: str, missing: list[str], failed: dict[str, str]) -> str:
    """Video-level AUROC (%) in the paper's columns and their mean, plus FF++ per manipulation.
    `missing`: datasets not preprocessed; `failed`: {dataset: why it could not be evaluated}."""
    def cell(d: str) -> str:
        return pct(results[d]["video"]["auroc"]) if d in results else "error" if d in failed else "missing"

    values = [results[d]["video"]["auroc"] for d in PAPER_DATASETS if d in results]
    values = [v for v in values if v is not None]
    mean = pct(sum(values) / len(values)) if values else "n/a"
    if values and len(values) < len(PAPER_DATASETS):
        mean += f" ({len(values)}/{len(PAPER_DATASETS)})"
    lines = ["Video-level AUROC (%), trained on FF++ c23:", "",
             "| model | " + " | ".join(DISPLAY[d] for d in PAPER_DATASETS) + " | mean |",
             "|---|" + "---:|" * (len(PAPER_DATASETS) + 1),
             f"| {label} | " + " | ".join(cell(d) for d in PAPER_DATASETS) + f" | {mean} |"]
    ffpp = results.get("ff++")
    lines += ["", "FF++ test, video-level AUROC (%) per manipulation (real videos vs that method):", ""]
    if ffpp is None:
        lines.append(f"FF++ test: {cell('ff++')}")
    else:
        srcs = list(ffpp.get("per_source", {}))
        lines += ["| model | " + " | ".join(FFPP_METHODS.get(s, s) for s in srcs) + " | all |",
                  "|---|" + "---:|" * (len(srcs) + 1),
                  f"| {label} | " + " | ".join(pct(ffpp["per_source"][s]["auroc"]) for s in srcs)
                  + f" | {pct(ffpp['video']['auroc'])} |"]
    if missing:
        lines += ["", "missing (not preprocessed): " + ", ".join(display(d) for d in missing)]
    if failed:
        lines += ["", "error (not evaluated; fix and re-run):"]
        lines += [f"- {display(d)}: {why}" for d, why in failed.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures (OpenCV)

COLORS = [(200, 90, 30), (30, 130, 240), (60, 160, 60), (40, 40, 210), (160, 80, 150),
          (20, 160, 190), (120, 120, 120), (90, 60, 30)]  # BGR
FONT, AA = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA


@dataclass
class Axis:
    """Data range, grid values with their tick label fmt(value), and the axis title."""
    lo: float
    hi: float
    ticks: Sequence[float]
    fmt: Callable[[float], str]
    label: str


@dataclass
class Figure:
    """A white canvas [H, W, 3] (BGR) with a square plot area; xy() maps data to pixels."""
    img: np.ndarray
    left: int
    top: int
    side: int
    x: Axis
    y: Axis

    def xy(self, x: float, y: float) -> tuple[int, int]:
        fx = (x - self.x.lo) / (self.x.hi - self.x.lo)
        fy = (y - self.y.lo) / (self.y.hi - self.y.lo)
        return int(round(self.left + fx * self.side)), int(round(self.top + (1 - fy) * self.side))


def draw_grid(fig: Figure) -> None:
    """Grid lines with tick labels below and left of the plot, and its frame."""
    x, y = fig.x, fig.y
    for t in y.ticks:
        cv2.line(fig.img, fig.xy(x.lo, t), fig.xy(x.hi, t), (232, 232, 232), 1, AA)
        (w, h), _ = cv2.getTextSize(y.fmt(t), FONT, 0.45, 1)
        px, py = fig.xy(x.lo, t)
        cv2.putText(fig.img, y.fmt(t), (px - w - 8, py + h // 2), FONT, 0.45, (60, 60, 60), 1, AA)
    for t in x.ticks:
        cv2.line(fig.img, fig.xy(t, y.lo), fig.xy(t, y.hi), (232, 232, 232), 1, AA)
        (w, h), _ = cv2.getTextSize(x.fmt(t), FONT, 0.45, 1)
        px, py = fig.xy(t, y.lo)
        cv2.putText(fig.img, x.fmt(t), (px - w // 2, py + h + 8), FONT, 0.45, (60, 60, 60), 1, AA)
    cv2.rectangle(fig.img, fig.xy(x.lo, y.hi), fig.xy(x.hi, y.lo), (0, 0, 0), 1)


def draw_legend(fig: Figure, entries: list[tuple[str, tuple]]) -> None:
    """(text, colour) lines in a box in the lower right corner, where ROC curves and rising
    training curves rarely are."""
    widths = [cv2.getTextSize(t, FONT, 0.45, 1)[0][0] for t, _ in entries]
    bw, bh = max(widths) + 44, 22 * len(entries) + 10
    x0, y0 = fig.left + fig.side - bw - 8, fig.top + fig.side - bh - 8
    cv2.rectangle(fig.img, (x0, y0), (x0 + bw, y0 + bh), (255, 255, 255), -1)
    cv2.rectangle(fig.img, (x0, y0), (x0 + bw, y0 + bh), (180, 180, 180), 1)
    for k, (text, color) in enumerate(entries):
        yy = y0 + 18 + 22 * k
        cv2.line(fig.img, (x0 + 8, yy - 4), (x0 + 32, yy - 4), color, 2, AA)
        cv2.putText(fig.img, text, (x0 + 38, yy), FONT, 0.45, (0, 0, 0), 1, AA)


def draw_labels(fig: Figure, title: str) -> None:
    """Title (shrunk to fit), x label below the plot, y label rotated left of it."""
    size = fig.img.shape[1]
    (w, _), _ = cv2.getTextSize(title, FONT, 0.55, 1)
    scale = min(0.55, 0.55 * (size - 20) / max(w, 1))
    (w, _), _ = cv2.getTextSize(title, FONT, scale, 1)
    cv2.putText(fig.img, title, ((size - w) // 2, 30), FONT, scale, (0, 0, 0), 1, AA)
    (w, _), _ = cv2.getTextSize(fig.x.label, FONT, 0.5, 1)
    cv2.putText(fig.img, fig.x.label, (fig.left + (fig.side - w) // 2, fig.top + fig.side + 48),
                FONT, 0.5, (0, 0, 0), 1, AA)
    # y label: drawn horizontally on a strip, rotated 90 degrees counter-clockwise
    (w, h), base = cv2.getTextSize(fig.y.label, FONT, 0.5, 1)
    strip = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(strip, fig.y.label, (2, h + 2), FONT, 0.5, (0, 0, 0), 1, AA)
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)[:fig.side]
    y0 = fig.top + (fig.side - strip.shape[0]) // 2
    fig.img[y0:y0 + strip.shape[0], 8:8 + strip.shape[1]] = strip


def write_figure(path: Path, title: str, x: Axis, y: Axis, lines: list[tuple[str, Sequence, Sequence]],
                 markers: bool = False, chance: bool = False) -> None:
    """Lines (legend text, xs, ys), one colour each, with a grid, a legend and labels, as a PNG;
    markers: a dot on every point; chance: the dashed diagonal of a ROC plot."""
    width, left, right, top, bottom = 560, 70, 20, 50, 60
    side = width - left - right
    fig = Figure(np.full((top + side + bottom, width, 3), 255, np.uint8), left, top, side, x, y)
    draw_grid(fig)
    if chance:
        for i in range(0, 40, 2):
            cv2.line(fig.img, fig.xy(i / 40, i / 40), fig.xy((i + 1) / 40, (i + 1) / 40), (150, 150, 150), 1, AA)
    colors = [COLORS[k % len(COLORS)] for k in range(len(lines))]
    for (_, xs, ys), color in zip(lines, colors):
        pts = np.array([fig.xy(a, b) for a, b in zip(xs, ys)], np.int32)
        cv2.polylines(fig.img, [pts], False, color, 2, AA)
        for p in pts if markers else []:
            cv2.circle(fig.img, tuple(int(v) for v in p), 3, color, -1, AA)
    draw_legend(fig, [(text, color) for (text, _, _), color in zip(lines, colors)])
    draw_labels(fig, title)
    write_output(path, png_bytes(fig.img))


def write_roc_png(path: Path, curves: list, title: str) -> bool:
    """ROC curves (name, labels, scores, their compute_metrics) drawn; False when no curve is
    defined (one class only)."""
    from sklearn.metrics import roc_curve  # imported here: a quarter of every command's start-up
    lines = []
    for name, labels, scores, m in curves:
        if m["auroc"] is not None:
            fpr, tpr, _ = roc_curve(labels, scores)
            lines.append((f"{name}: AUROC {100 * m['auroc']:.2f}% (n={m['n']})", fpr, tpr))
    if not lines:
        return False
    unit = np.linspace(0, 1, 6)
    write_figure(path, title, Axis(0.0, 1.0, unit, lambda t: f"{t:.1f}", "False positive rate"),
                 Axis(0.0, 1.0, unit, lambda t: f"{t:.1f}", "True positive rate"), lines, chance=True)
    return True


# ----------------------------------------------------------------------------- training curves

@dataclass
class Curve:
    """One run's validation records: the run folder, then per epoch end step, epoch, AUROC."""
    run: Path
    steps: list[int]
    epochs: list[int]
    auroc: list[float]
    undefined: int = 0   # epochs whose val AUROC was undefined (null: one class)

    def best(self) -> int:
        """Index of the best record (the first of equals, as train.py keeps best.pt)."""
        return int(np.argmax(self.auroc))


def parse_record(line: str, where: str) -> dict | None:
    """One log.jsonl line -> the validation record {step, epoch, val_video_auroc} it holds, or
    None for a step log or an epoch end without validation. DataError for a malformed line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not a JSON object ({e.msg}); train.py writes one per line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object; train.py writes one per line")
    if not record.get("epoch_done") or "val_video_auroc" not in record:
        return None
    value, step, epoch = record["val_video_auroc"], record.get("step"), record.get("epoch")
    valid = (type(step) is int and type(epoch) is int
             and (value is None or (type(value) in (int, float) and 0 <= value <= 1)))
    if not valid:
        raise DataError(f"{where}: a validation record needs an integer step and epoch and "
                        f"val_video_auroc in [0, 1] or null, found {line.strip()[:120]}")
    return record


def read_curve(run: Path) -> Curve:
    """The validation AUROC records of a train.py run folder (its log.jsonl). A resumed run may
    log a step twice: the last record of a step counts."""
    log = run / "log.jsonl"
    if not run.is_dir():
        raise FileNotFoundError(f"--curves {run}: not a folder; expected a train.py run folder "
                                f"such as runs/<name>/ holding log.jsonl")
    if not log.is_file():
        raise FileNotFoundError(f"--curves {run}: no log.jsonl in it; expected a train.py run "
                                f"folder (train.py writes runs/<name>/log.jsonl)")
    records = {}
    try:
        with open(log, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                record = parse_record(line, f"{log} line {n}") if line.strip() else None
                if record is not None:
                    records[record["step"]] = record
    except UnicodeDecodeError:
        raise DataError(f"{log}: not UTF-8 text; expected train.py's log (one JSON object per line)") from None
    if not records:
        raise DataError(f"{log}: no validation records (lines with \"epoch_done\": true and "
                        f"\"val_video_auroc\"); train.py writes one per finished epoch unless --no-val")
    kept = [records[s] for s in sorted(records) if records[s]["val_video_auroc"] is not None]
    if not kept:
        raise DataError(f"{log}: val video AUROC undefined (null) in all {len(records)} validation "
                        f"records: the val split holds one class only")
    return Curve(run, [r["step"] for r in kept], [r["epoch"] for r in kept],
                 [float(r["val_video_auroc"]) for r in kept], len(records) - len(kept))


def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About n round tick values (1, 2, 2.5, 5 x 10^k apart) within [lo, hi]."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return np.arange(math.ceil(lo / step - 1e-9) * step, hi + step * 1e-6, step)


def write_curves_png(path: Path, curves: list[Curve], x: str) -> None:
    """Val video AUROC (%) against x ('step' or 'epoch'), one line per run."""
    xs = [c.steps if x == "step" else c.epochs for c in curves]
    values = [v for c in curves for v in c.auroc]
    x_hi = max(max(v) for v in xs) or 1
    y_lo = max(0.0, math.floor(min(values) * 20 - 0.5) / 20)   # 5% steps, a margin below
    y_hi = min(1.0, math.ceil(max(values) * 20 + 0.5) / 20)
    xlabel = "training step" if x == "step" else "epoch (0 = the first, as train.py logs it)"
    lines = [(f"{c.run.name}: best {100 * c.auroc[c.best()]:.2f}% at {x} {cx[c.best()]}", cx, c.auroc)
             for c, cx in zip(curves, xs)]
    write_figure(path, "Validation video-level AUROC during training",
                 Axis(0.0, float(x_hi), nice_ticks(0, x_hi), lambda t: f"{t:g}", xlabel),
                 Axis(y_lo, y_hi, nice_ticks(y_lo, y_hi), lambda t: f"{100 * t:g}", "val video AUROC (%)"),
                 lines, markers=True)


def run_curves(args) -> list[Curve]:
    """Figure 1: every run's curve read first (all errors before any drawing), its best printed."""
    curves = [read_curve(Path(run)) for run in args.curves]
    for c in curves:
        b = c.best()
        note = f"; {c.undefined} epoch(s) undefined (one class)" if c.undefined else ""
        print(f"{c.run}: best val video AUROC {100 * c.auroc[b]:.2f}% at step {c.steps[b]} "
              f"(epoch {c.epochs[b]}); {len(c.auroc)} validation record(s), last "
              f"{100 * c.auroc[-1]:.2f}%{note}")
    path = Path(args.out or ".") / "curves.png"
    write_curves_png(path, curves, args.x)
    print(f"written to {path}")
    return curves


# ----------------------------------------------------------------------------- benchmarks

def layout_help(data: Path, dataset: str, split: str) -> str:
    """Where evaluate.py looks and the preprocess.py command that writes it."""
    return (f"expected {data}/{dataset}/{split}/index.csv (columns "
            f"{','.join(INDEX_FIELDS)}) and crops "
            f"{data}/{dataset}/{split}/<source>/<video_id>/<frame>.png; create them with: "
            f"{command_for(dataset, data)}")


def find_split(data: Path, dataset: str, split: str) -> Path | None:
    """The split folder when it has a non-empty index.csv, else None."""
    index = data / dataset / split / "index.csv"
    if not index.is_file() or index.stat().st_size == 0:
        return None
    return index.parent


def no_data_error(data_dir: Path, names: list[str], split: str) -> str:
    """Nothing to evaluate: the layout evaluate.py expects and the command that writes it."""
    if not data_dir.is_dir():
        return f"data directory {data_dir}/ does not exist; " + layout_help(data_dir, names[0], split)
    if len(names) == 1:
        return f"no {names[0]} preprocessed in {data_dir}/; " + layout_help(data_dir, names[0], split)
    example = command_for(names[0], data_dir)
    return (f"none of {', '.join(names)} is preprocessed in {data_dir}/; expected "
            f"{data_dir}/<dataset>/{split}/index.csv and crops under it; create them with "
            f"`python preprocess.py --out {data_dir}` (every dataset found under datasets/) or one "
            f"at a time, e.g. {example}")


def load_benchmarks(args) -> tuple[dict, dict[str, Path], list[str], dict[str, str]]:
    """({dataset: videos}, {dataset: split folder}, missing, {dataset: why it failed}). Every
    index.csv is checked before the model loads (minutes for a download); a broken dataset is
    listed in the `all` table, not allowed to stop the others."""
    data_dir = Path(args.data)
    names = PAPER_DATASETS + ["ff++"] if args.dataset == "all" else [args.dataset]
    found = {d: find_split(data_dir, d, args.split) for d in names}
    missing = [d for d in names if found[d] is None]
    if len(missing) == len(names):
        raise DataError(no_data_error(data_dir, names, args.split))
    videos, failed = {}, {}
    for d in names:
        if found[d] is not None:
            try:
                videos[d] = load_videos(data_dir, d, args.split, sources=None, max_frames=None)
            except DataError as e:
                failed[d] = str(e)
    if not videos:
        raise DataError("; ".join(failed.values()))
    return videos, found, missing, failed


def run_benchmarks(args) -> dict:
    videos, found, missing, failed = load_benchmarks(args)
    model, label, default_out = load_model(args, benchmark=True)
    out = Path(args.out or default_out)
    results = {}
    for d in videos:
        try:
            results[d] = evaluate_dataset(model, d, found[d], videos[d], args, out / d, label)
        except DataError as e:  # unreadable crops
            failed[d] = str(e)
    if not results:
        raise DataError("; ".join(failed.values()))
    if args.rank == 0:  # ranks > 0 show what they write to stderr
        for d, why in failed.items():
            print(f"{display(d)}: not evaluated: {why}", file=sys.stderr)
    return write_summary(args, out, label, results, missing, failed)


def write_summary(args, out: Path, label: str, results: dict, missing: list[str],
                  failed: dict[str, str]) -> dict:
    """Print the table(s); rank 0 writes them as <stem>.md and everything as <stem>.json."""
    table = metrics_table(list(results.values()))
    if args.dataset == "all":
        table = paper_table(results, label, missing, failed) + "\n\n" + table
    print(table)
    summary = {"model": label, "split": args.split, "results": results,
               "missing": missing, "failed": failed, "table": table}
    if args.rank == 0:
        stem = "summary" if args.dataset == "all" else f"{args.dataset}-summary"
        write_output(out / f"{stem}.md", table + "\n")
        write_json(out / f"{stem}.json", summary)
        print(f"\nwritten to {out}/ (per dataset: videos.csv, metrics.json, roc.png)")
    return summary


# ----------------------------------------------------------------------------- any video / image

def list_inputs(args) -> list[tuple[Path, str]]:
    """(file, name of its --save-crops folder): the file's stem, or its path under --input
    without the extension; made unique (a~2), so two files never share a crops folder."""
    named = []
    for p in map(Path, (args.video or []) + (args.image or [])):
        if p.is_dir():
            raise IsADirectoryError(f"{p} is a folder, not a file: use --input {p} to score every file in it")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
        named.append((p, p.stem))
    if args.input:
        root = Path(args.input)
        if not root.is_dir():
            raise NotADirectoryError(f"--input {root}: not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        exts = VIDEO_EXTS | IMAGE_EXTS
        media = [p for p in files if p.suffix.lower() in exts]
        if not media:
            raise FileNotFoundError(f"--input {root}: no video or image file ({' '.join(sorted(exts))}) found")
        if len(media) < len(files):
            print(f"--input {root}: {len(media)} video/image file(s), {len(files) - len(media)} "
                  f"other file(s) skipped")
        named += [(p, str(p.relative_to(root).with_suffix(""))) for p in media]
    out, used = [], set()
    for p, name in named:
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}~{k}"
        used.add(unique)
        out.append((p, unique))
    return out


def save_crops(folder: Path, tracks: list[list[preprocess.FaceCrop]]) -> None:
    """<folder>/person<k>/<frame>.png, replacing crops a past run left there; nothing else in the
    folder is touched (it is the user's)."""
    for old in folder.glob("person*/*.png"):
        if old.stem.isdigit():
            old.unlink()
    for k, track in enumerate(tracks):
        for c in track:
            path = folder / f"person{k + 1}" / f"{c.frame}.png"
            write_output(path, preprocess.crop_png(c))


def row(path: Path, person: int | None = None, seen: int = 0, with_face: int = 0,
        p_fake: float | None = None, note: str = "") -> dict:
    """One line of predictions.csv."""
    return {"file": str(path), "person": person, "frames_seen": seen,
            "frames_with_face": with_face, "p_fake": p_fake, "note": note}


def score_file(path: Path, crops_dir: Path | None, args, face_models, model: nn.Module) -> list[dict]:
    """Print the verdict of one file; its rows for predictions.csv (a file row, then one per
    person when several appear). No face or an unreadable file: said so, no score."""
    try:
        # preprocess.extract_faces's own two steps: the number of frames read is needed too
        indices, frames = preprocess.read_frames(path, args.frames)   # an image is one frame
        tracks = [t for t in preprocess.face_tracks(frames, indices, face_models) if t]
    except Exception as e:  # one unreadable file must not stop a folder of them
        print(f"{path}: cannot read ({type(e).__name__}: {e}); no score")
        return [row(path, note=f"cannot read: {e}")]
    if not tracks:
        print(f"{path}: no face found in {len(frames)} frame(s); no score")
        return [row(path, seen=len(frames), note="no face found")]
    if crops_dir is not None:
        save_crops(crops_dir, tracks)
    device = torch.device(args.device)
    persons = [float(predict(model, [c.image for c in t], device, args.batch_size, desc="crops").mean())
               for t in tracks]
    return report(path, len(frames), tracks, persons)


def verdict(p_fake: float) -> str:
    return "FAKE" if p_fake > 0.5 else "real"


def report(path: Path, n_seen: int, tracks: list[list[preprocess.FaceCrop]],
           persons: list[float]) -> list[dict]:
    """Print the file's verdict, and each person's when several appear; the predictions.csv rows.

    The file's score is the main (largest) person's, the one preprocess.py keeps for the
    benchmarks: a stray one-frame detection (a poster, a logo) must not decide the verdict.
    Another person judged differently is said on the same line, never hidden."""
    p_file, with_face = persons[0], len({c.frame for t in tracks for c in t})
    note = ""
    if len(persons) > 1:
        differ = [f"; person {k} {verdict(p)}" for k, p in enumerate(persons[1:], 2)
                  if verdict(p) != verdict(p_file)]
        note = f"{len(persons)} people, score of person 1, the largest" + "".join(differ)
    print(f"{path}: p_fake {p_file:.4f} -> {verdict(p_file)} ({with_face}/{n_seen} frames with a face"
          + (f"; {note}" if note else "") + ")")
    rows = [row(path, None, n_seen, with_face, p_file, note)]
    if len(persons) > 1:
        for k, (p, t) in enumerate(zip(persons, tracks), 1):
            frames = f"{len(t)} frame{'s' if len(t) > 1 else ''}"
            print(f"    person {k}: p_fake {p:.4f} -> {verdict(p)} ({frames})")
            rows.append(row(path, k, n_seen, len(t), p))
    return rows


class PredictionsCSV:
    """predictions.csv written row by row and flushed, so a long folder run that stops keeps what
    it scored; a failed write (full disk) is one OSError naming the file."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0  # on disk
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=list(row(Path())))
            self.writer.writeheader()
            self.file.flush()

    def write_rows(self, rows: list[dict]) -> None:
        """The rows, on disk when this returns."""
        with writing(self.path):
            self.writer.writerows(rows)
            self.file.flush()
        self.rows += len(rows)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # every row was flushed (or its error raised) already
            self.file.close()


def score_files(args) -> list[dict]:
    """Score every file; predictions.csv with --out."""
    inputs = list_inputs(args)
    face_models = preprocess.load_face_models(args.landmarks)
    model, _, _ = load_model(args, benchmark=False)
    saved = PredictionsCSV(Path(args.out) / "predictions.csv") if args.out else None
    rows = []
    try:
        for path, name in tqdm(inputs, desc="files", unit="file", disable=None if len(inputs) > 1 else True):
            crops_dir = Path(args.save_crops) / name if args.save_crops else None
            new = score_file(path, crops_dir, args, face_models, model)
            rows += new
            if saved:
                saved.write_rows(new)
    finally:
        if saved:
            saved.close()
            print(f"{saved.rows} row(s) written to {saved.path}")
    return rows


# ----------------------------------------------------------------------------- command line

def prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a prompt is empty: give two texts, e.g. "
                                         f"--prompts {' '.join(repr(p) for p in PROMPTS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to evaluate (default: --dataset all)")
    what.add_argument("--dataset", metavar="NAME",
                      help=f"preprocessed benchmark under --data: {', '.join(ALL_DATASETS)} (ff++-c40, "
                      "dfd-c40, ... for other compressions), or 'all' = the paper's table + FF++")
    what.add_argument("--video", action="append", help="score a video file (repeatable)")
    what.add_argument("--image", action="append", help="score an image file (repeatable)")
    what.add_argument("--input", help="score every video and image under this folder")
    what.add_argument("--curves", nargs="+", metavar="RUN", help="train.py run folders (runs/<name>): "
                      "plot their val video AUROC during training into curves.png (paper Fig. 1)")
    p.add_argument("--checkpoint", help="runs/<name>/best.pt, the authors' model.ckpt, or 'authors' "
                   "(default: benchmarks: newest runs/*/best.pt, else authors; files: authors)")
    p.add_argument("--clip", help="base CLIP weights: ViT-L/14 (download), a path, or 'tiny'")
    p.add_argument("--zero-shot", action="store_true", help="zero-shot CLIP baseline with text prompts")
    p.add_argument("--prompts", nargs=2, type=prompt, default=list(PROMPTS), metavar=("REAL", "FAKE"),
                   help="zero-shot text prompts for class real and class fake")
    p.add_argument("--bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: downloaded, cached)")
    p.add_argument("--data", default="data", help="preprocess.py's output folder (default data/)")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", default="runs", help="where to look for the newest run")
    p.add_argument("--out", help="output folder (default: eval-<checkpoint stem> next to the "
                   "checkpoint; eval/authors; eval/zero-shot-<clip>; --curves: the current folder)")
    p.add_argument("--x", choices=["step", "epoch"], default="step", help="--curves: x axis")
    p.add_argument("--save-crops", help="keep the face crops of --video/--image/--input here")
    p.add_argument("--frames", type=at_least(int, 1), default=32, help="frames sampled per video (files)")
    p.add_argument("--landmarks", help="dlib landmark model (default: 68-point from face-recognition-models)")
    p.add_argument("--batch-size", type=at_least(int, 1), default=64)
    p.add_argument("--workers", type=at_least(int, 0), default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", type=device_flag, default="auto",
                   help="auto (cuda when there is a GPU), cpu, cuda or cuda:N (under torchrun with cuda: "
                   "cuda:LOCAL_RANK)")
    return p


def resolve_device(p: argparse.ArgumentParser, args) -> None:
    """--device auto -> cuda or cpu; under torchrun with CUDA each rank takes GPU LOCAL_RANK."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and args.world > 1:
        n = torch.cuda.device_count()
        if args.local_rank >= n:
            p.error(f"--device cuda (torchrun LOCAL_RANK {args.local_rank}): this machine has {n} GPU(s)")
        args.device = f"cuda:{args.local_rank}"


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    # torchrun's environment; (0, 1, 0) for a plain `python evaluate.py`
    args.rank, args.world, args.local_rank = (int(os.environ.get(k, d)) for k, d in
                                              (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    files = bool(args.video or args.image or args.input)
    if sum((files, bool(args.dataset), bool(args.curves))) > 1:
        p.error("give one of --dataset, --video/--image/--input, --curves")
    if not files and not args.curves and not args.dataset:
        args.dataset = "all"
    if args.dataset and args.dataset != "all" and args.dataset.partition("-")[0] not in ALL_DATASETS:
        p.error(f"--dataset {args.dataset}: expected all, {', '.join(ALL_DATASETS)}, or ff++-c40 etc.")
    if args.world > 1 and not args.dataset:
        p.error("--video/--image/--input and --curves run in one process: start them with python, "
                "not torchrun")
    if args.zero_shot and args.checkpoint:
        p.error("--zero-shot uses CLIP's text prompts, not a --checkpoint: give one or the other")
    resolve_device(p, args)
    if args.save_crops and not files:
        p.error("--save-crops goes with --video/--image/--input")
    if args.save_crops and args.input and \
            Path(args.save_crops).resolve().is_relative_to(Path(args.input).resolve()):
        p.error("--save-crops inside --input: the next run would score the crops as images")
    return args


def main(argv=None):
    """The only place errors become a one-line message (exit status 1); argparse exits 2."""
    args = parse_args(argv)
    try:
        with distributed(args):
            if args.curves:
                return run_curves(args)
            if args.dataset:
                return run_benchmarks(args)
            return score_files(args)
    except (ValueError, OSError) as e:  # DataError, bad checkpoint, unwritable output, ...
        raise SystemExit("error: " + str(e).replace("\n", " ")) from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (outputs already written are complete)") from None


if __name__ == "__main__":
    main()
