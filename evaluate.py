"""Evaluate a deepfake detector: the paper's benchmark table, or p_fake for any video / image.

Benchmarks (face crops written by preprocess.py under --data):
    python evaluate.py --dataset cdfv2 --checkpoint runs/<name>/best.pt
    python evaluate.py --dataset all                      # paper's table + FF++ per manipulation
    python evaluate.py --dataset all --zero-shot          # zero-shot CLIP baseline
Any file:
    python evaluate.py --video clip.mp4 | --image face.jpg | --input DIR  [--save-crops DIR]

Frame score = p_fake = softmax(logits)[:, 1]; video score = mean of its frames' p_fake
(the paper's protocol). Label 1 = fake.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

import clip_vit
import data
import preprocess
from data import compute_metrics, predict, video_scores  # noqa: F401 (documented here too)
from layouts import (FFPP_METHODS, IMAGE_EXTS, INDEX_FIELDS, VIDEO_EXTS, DataError, Video,
                     command_for, load_videos)

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


# ----------------------------------------------------------------------------- data

def layout_help(data: Path, dataset: str, split: str) -> str:
    """Where evaluate.py looks and the preprocess.py command that writes it."""
    return (f"expected {data}/{dataset}/{split}/index.csv (columns "
            f"{','.join(INDEX_FIELDS)}) and crops "
            f"{data}/{dataset}/{split}/<source>/<video_id>/<frame>.png; create them with: "
            f"{command_for(dataset, data)}")


def find_split(data: Path, dataset: str, split: str = "test") -> Path | None:
    """The split folder when it has a non-empty index.csv, else None."""
    index = data / dataset / split / "index.csv"
    if not index.is_file() or index.stat().st_size == 0:
        return None
    return index.parent


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
    try:
        clip = clip_vit.tiny_clip() if name == "tiny" else clip_vit.load(name, device="cpu")
        tokenizer = clip_vit.Tokenizer(args.bpe) if args.bpe else None  # None: download, cached
        model = ZeroShotCLIP(clip.float(), tuple(args.prompts), tokenizer)
    except (ValueError, OSError, RuntimeError) as e:  # offline, wrong file
        raise SystemExit(f"cannot load CLIP {name} for --zero-shot: {e} "
                         f"(evaluate.py takes the files as --clip PATH and --bpe PATH)")
    tag = Path(name).stem if os.path.exists(name) else name.replace("/", "-")
    print(f"model: zero-shot CLIP {name}, prompts {args.prompts}")
    return model, f"zero-shot CLIP {name}", str(Path("eval") / f"zero-shot-{tag}")


def newest_run(runs: Path) -> Path | None:
    found = sorted(runs.glob("*/best.pt"), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []
    return found[-1] if found else None


def choose_checkpoint(args, benchmark: bool) -> str:
    """--checkpoint; else for benchmarks the newest runs/*/best.pt; else the authors' weights.
    Says which on stdout: a number in a table is worthless without knowing the model."""
    if args.checkpoint is not None:
        print(f"model: {args.checkpoint}")
        return args.checkpoint
    newest = newest_run(Path(args.runs)) if benchmark else None
    if newest is not None:
        print(f"model: newest run's checkpoint {newest} (pass --checkpoint to choose another)")
        return str(newest)
    why = f"no run found under {args.runs}/, " if benchmark else ""
    print(f"model: {why}using the authors' released weights (pass --checkpoint to use another)")
    return "authors"


def load_model(args, benchmark: bool) -> tuple[nn.Module, str, str]:
    """(model giving logits [N, 2] in eval mode on --device, a label for tables, the default
    output folder)."""
    model, label, out = load_zero_shot(args) if args.zero_shot else load_trained_detector(args, benchmark)
    return model.to(torch.device(args.device)).eval(), label, out


def load_trained_detector(args, benchmark: bool) -> tuple[nn.Module, str, str]:
    """(detector of --checkpoint or the default one, a label for tables, the default output folder)."""
    source = choose_checkpoint(args, benchmark)
    path = Path(source)
    if source != "authors" and not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise SystemExit(f"checkpoint {source} {what}: expected a file written by train.py "
                         f"(runs/<name>/best.pt), the authors' model.ckpt, or 'authors'")
    try:
        detector = clip_vit.load_detector(source, clip=args.clip, device="cpu")
    except (ValueError, OSError, RuntimeError) as e:  # wrong file, wrong base weights, offline
        raise SystemExit(f"cannot load checkpoint {source}: {e}")
    if source == "authors":
        return detector, "authors' weights", str(Path("eval") / "authors")
    return detector, f"{path.parent.name}/{path.name}", str(path.parent / f"eval-{path.stem}")


# ----------------------------------------------------------------------------- one dataset

def evaluate_dataset(model: nn.Module, dataset: str, split_dir: Path, videos: list[Video],
                     args, out_dir: Path, label: str) -> dict:
    """Score every crop of a split; write videos.csv, metrics.json and roc.png under out_dir."""
    scores, video_p = data.score_videos(model, videos, torch.device(args.device), args.batch_size,
                                        args.workers, desc=f"{dataset} {split_dir.name}")
    frame_labels = np.array([v.label for v in videos for _ in v.frames])
    video_labels = np.array([v.label for v in videos])

    result = {"dataset": dataset, "split": split_dir.name, "model": label,
              "data": str(split_dir), "video": compute_metrics(video_labels, video_p),
              "frame": compute_metrics(frame_labels, scores)}
    ffpp = dataset.startswith("ff++")
    curves = [("all videos" if ffpp else "video", video_labels, video_p),
              ("all frames" if ffpp else "frame", frame_labels, scores)]
    if ffpp:
        # FF++ test per manipulation: all real videos against one method's fakes
        result["per_source"] = {}
        real = video_labels == 0
        for src in sorted({v.source for v in videos if v.label == 1}):
            sel = real | np.array([v.source == src for v in videos])
            result["per_source"][src] = compute_metrics(video_labels[sel], video_p[sel])
            curves.append((f"{FFPP_METHODS.get(src, src)} videos", video_labels[sel], video_p[sel]))
    write_dataset_outputs(out_dir, result, videos, video_p, curves)
    return result


def write_dataset_outputs(out_dir: Path, result: dict, videos: list[Video], video_p: np.ndarray,
                          curves: list) -> None:
    """videos.csv, roc.png (none for one class) and metrics.json, which lists the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"videos": out_dir / "videos.csv", "metrics": out_dir / "metrics.json",
             "roc": out_dir / "roc.png"}
    with open(files["videos"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "source", "label", "n_frames", "p_fake", "path", "file"])
        for v, p in zip(videos, video_p):
            w.writerow([v.video_id, v.source, v.label, len(v.frames), f"{p:.6f}", v.path, v.file])
    title = f"{display(result['dataset'])} {result['split']} - {result['model']}"
    if write_roc_png(files["roc"], curves, title) is None:  # one class: no curve to draw
        files["roc"].unlink(missing_ok=True)                  # nor a stale one from a past run
        files["roc"] = None
    result["files"] = {k: (str(p) if p else None) for k, p in files.items()}
    with open(files["metrics"], "w") as f:
        json.dump(result, f, indent=2)


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


# ----------------------------------------------------------------------------- ROC figure

COLORS = [(200, 90, 30), (30, 130, 240), (60, 160, 60), (40, 40, 210), (160, 80, 150),
          (20, 160, 190), (120, 120, 120), (90, 60, 30)]  # BGR


def write_roc_png(path: Path, curves: list, title: str, size: int = 560) -> Path | None:
    """ROC curves (label, labels, scores) drawn with OpenCV; None when no curve is defined."""
    drawable = [(name, y, s) for name, y, s in curves if 0 < int(np.sum(y)) < len(y)]
    if not drawable:
        return None
    font, aa = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA
    left, right, top, bottom = 70, 20, 50, 60
    side = size - left - right                    # square plot area
    img = np.full((top + side + bottom, size, 3), 255, np.uint8)

    def xy(fx: float, fy: float) -> tuple[int, int]:
        return int(round(left + fx * side)), int(round(top + (1 - fy) * side))

    for t in np.linspace(0, 1, 6):                # grid, ticks and tick labels
        cv2.line(img, xy(t, 0), xy(t, 1), (232, 232, 232), 1, aa)
        cv2.line(img, xy(0, t), xy(1, t), (232, 232, 232), 1, aa)
        (w, h), _ = cv2.getTextSize(f"{t:.1f}", font, 0.45, 1)
        x, y = xy(t, 0)
        cv2.putText(img, f"{t:.1f}", (x - w // 2, y + h + 8), font, 0.45, (60, 60, 60), 1, aa)
        x, y = xy(0, t)
        cv2.putText(img, f"{t:.1f}", (x - w - 8, y + h // 2), font, 0.45, (60, 60, 60), 1, aa)
    for i in range(0, 40, 2):                     # dashed chance diagonal
        cv2.line(img, xy(i / 40, i / 40), xy((i + 1) / 40, (i + 1) / 40), (150, 150, 150), 1, aa)
    cv2.rectangle(img, xy(0, 1), xy(1, 0), (0, 0, 0), 1)

    legend = []
    for k, (name, y, s) in enumerate(drawable):
        fpr, tpr, _ = roc_curve(y, s)
        pts = np.array([xy(a, b) for a, b in zip(fpr, tpr)], np.int32)
        color = COLORS[k % len(COLORS)]
        cv2.polylines(img, [pts], False, color, 2, aa)
        legend.append((f"{name}: AUROC {100 * roc_auc_score(y, s):.2f}% (n={len(y)})", color))

    # legend box in the lower right corner, where ROC curves rarely are
    widths = [cv2.getTextSize(t, font, 0.45, 1)[0][0] for t, _ in legend]
    bw, bh = max(widths) + 44, 22 * len(legend) + 10
    x0, y0 = left + side - bw - 8, top + side - bh - 8
    cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), (255, 255, 255), -1)
    cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), (180, 180, 180), 1)
    for k, (text, color) in enumerate(legend):
        yy = y0 + 18 + 22 * k
        cv2.line(img, (x0 + 8, yy - 4), (x0 + 32, yy - 4), color, 2, aa)
        cv2.putText(img, text, (x0 + 38, yy), font, 0.45, (0, 0, 0), 1, aa)

    (w, _), _ = cv2.getTextSize(title, font, 0.55, 1)
    scale = min(0.55, 0.55 * (size - 20) / max(w, 1))
    (w, _), _ = cv2.getTextSize(title, font, scale, 1)
    cv2.putText(img, title, ((size - w) // 2, 30), font, scale, (0, 0, 0), 1, aa)
    text = "False positive rate"
    (w, _), _ = cv2.getTextSize(text, font, 0.5, 1)
    cv2.putText(img, text, (left + (side - w) // 2, top + side + 48), font, 0.5, (0, 0, 0), 1, aa)
    # y label: draw horizontally on a strip, rotate it 90 degrees counter-clockwise
    text = "True positive rate"
    (w, h), base = cv2.getTextSize(text, font, 0.5, 1)
    strip = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(strip, text, (2, h + 2), font, 0.5, (0, 0, 0), 1, aa)
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = top + (side - strip.shape[0]) // 2
    img[y0:y0 + strip.shape[0], 8:8 + strip.shape[1]] = strip

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
    return path


# ----------------------------------------------------------------------------- benchmarks

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


def run_benchmarks(args) -> dict:
    data_dir = Path(args.data)
    names = PAPER_DATASETS + ["ff++"] if args.dataset == "all" else [args.dataset]
    found = {d: find_split(data_dir, d, args.split) for d in names}
    missing = [d for d in names if found[d] is None]
    if len(missing) == len(names):
        raise SystemExit(no_data_error(data_dir, names, args.split))
    # every index.csv is checked before the model loads (minutes for a download) and a broken
    # dataset is listed in the `all` table, not allowed to stop the others
    videos, failed = {}, {}
    for d in names:
        if found[d] is not None:
            try:
                videos[d] = load_videos(data_dir, d, args.split, sources=None, max_frames=None)
            except DataError as e:
                failed[d] = str(e)
    if not videos:
        raise SystemExit("; ".join(failed.values()))
    model, label, default_out = load_model(args, benchmark=True)
    out = Path(args.out or default_out)
    results = {}
    for d in videos:
        try:
            results[d] = evaluate_dataset(model, d, found[d], videos[d], args, out / d, label)
        except DataError as e:  # unreadable crops
            failed[d] = str(e)
    if not results:
        raise SystemExit("; ".join(failed.values()))
    for d, why in failed.items():
        print(f"{display(d)}: not evaluated: {why}", file=sys.stderr)
    return write_summary(args, out, label, results, missing, failed)


def write_summary(args, out: Path, label: str, results: dict, missing: list[str],
                  failed: dict[str, str]) -> dict:
    """Print the table(s); write them as <stem>.md and everything as <stem>.json."""
    table = metrics_table(list(results.values()))
    if args.dataset == "all":
        table = paper_table(results, label, missing, failed) + "\n\n" + table
    print(table)
    summary = {"model": label, "split": args.split, "results": results,
               "missing": missing, "failed": failed, "table": table}
    out.mkdir(parents=True, exist_ok=True)
    stem = "summary" if args.dataset == "all" else f"{args.dataset}-summary"
    (out / f"{stem}.md").write_text(table + "\n")
    with open(out / f"{stem}.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nwritten to {out}/ (per dataset: videos.csv, metrics.json, roc.png)")
    return summary


# ----------------------------------------------------------------------------- any video / image

def list_inputs(args) -> list[tuple[Path, str]]:
    """(file, name of its --save-crops folder): the file's stem, or its path under --input
    without the extension; made unique (a~2), so two files never share a crops folder."""
    named = []
    for p in map(Path, (args.video or []) + (args.image or [])):
        if p.is_dir():
            raise SystemExit(f"{p} is a folder, not a file: use --input {p} to score every file in it")
        if not p.is_file():
            raise SystemExit(f"{p}: file not found")
        named.append((p, p.stem))
    if args.input:
        root = Path(args.input)
        if not root.is_dir():
            raise SystemExit(f"--input {root}: not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        exts = VIDEO_EXTS | IMAGE_EXTS
        media = [p for p in files if p.suffix.lower() in exts]
        if not media:
            raise SystemExit(f"--input {root}: no video or image file ({' '.join(sorted(exts))}) found")
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
        (folder / f"person{k + 1}").mkdir(parents=True, exist_ok=True)
        for c in track:
            path = folder / f"person{k + 1}" / f"{c.frame}.png"
            cv2.imwrite(str(path), cv2.cvtColor(c.image, cv2.COLOR_RGB2BGR))


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


def score_files(args) -> list[dict]:
    """Score every file; predictions.csv (with --out) is written row by row, so a long folder
    run that stops keeps what it scored."""
    inputs = list_inputs(args)
    face_models = preprocess.load_face_models(args.landmarks)
    model, _, _ = load_model(args, benchmark=False)
    csv_file = None
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        csv_file = open(Path(args.out) / "predictions.csv", "w", newline="")
        writer = csv.DictWriter(csv_file, fieldnames=list(row(Path())))
        writer.writeheader()
    rows = []
    try:
        for path, name in tqdm(inputs, desc="files", unit="file", disable=None if len(inputs) > 1 else True):
            crops_dir = Path(args.save_crops) / name if args.save_crops else None
            new = score_file(path, crops_dir, args, face_models, model)
            rows += new
            if csv_file:
                writer.writerows(new)
                csv_file.flush()
    finally:
        if csv_file:
            csv_file.close()
            print(f"written to {csv_file.name}")
    return rows


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to evaluate (default: --dataset all)")
    what.add_argument("--dataset", metavar="NAME",
                      help=f"preprocessed benchmark under --data: {', '.join(ALL_DATASETS)} (ff++-c40, "
                      "dfd-c40, ... for other compressions), or 'all' = the paper's table + FF++")
    what.add_argument("--video", action="append", help="score a video file (repeatable)")
    what.add_argument("--image", action="append", help="score an image file (repeatable)")
    what.add_argument("--input", help="score every video and image under this folder")
    p.add_argument("--checkpoint", help="runs/<name>/best.pt, the authors' model.ckpt, or 'authors' "
                   "(default: benchmarks: newest runs/*/best.pt, else authors; files: authors)")
    p.add_argument("--clip", help="base CLIP weights: ViT-L/14 (download), a path, or 'tiny'")
    p.add_argument("--zero-shot", action="store_true", help="zero-shot CLIP baseline with text prompts")
    p.add_argument("--prompts", nargs=2, default=list(PROMPTS), metavar=("REAL", "FAKE"),
                   help="zero-shot text prompts for class real and class fake")
    p.add_argument("--bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: downloaded, cached)")
    p.add_argument("--data", default="data", help="preprocess.py's output folder (default data/)")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", default="runs", help="where to look for the newest run")
    p.add_argument("--out", help="output folder (default: eval-<checkpoint stem> next to the "
                   "checkpoint; eval/authors; eval/zero-shot-<clip>)")
    p.add_argument("--save-crops", help="keep the face crops of --video/--image/--input here")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video (files)")
    p.add_argument("--landmarks", help="dlib landmark model (default: 68-point from face-recognition-models)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    files = bool(args.video or args.image or args.input)
    if files and args.dataset:
        p.error("give either --dataset or --video/--image/--input, not both")
    if not files and not args.dataset:
        args.dataset = "all"
    if args.dataset and args.dataset != "all" and args.dataset.partition("-")[0] not in ALL_DATASETS:
        p.error(f"--dataset {args.dataset}: expected all, {', '.join(ALL_DATASETS)}, or ff++-c40 etc.")
    if args.zero_shot and args.checkpoint:
        p.error("--zero-shot uses CLIP's text prompts, not a --checkpoint: give one or the other")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is available here (use --device cpu)")
    if args.save_crops and not files:
        p.error("--save-crops goes with --video/--image/--input")
    inside = args.save_crops and args.input and \
        Path(args.save_crops).resolve().is_relative_to(Path(args.input).resolve())
    if inside:
        p.error("--save-crops inside --input: the next run would score the crops as images")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.video or args.image or args.input:
        return score_files(args)
    return run_benchmarks(args)


if __name__ == "__main__":
    main()
