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
import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import clip_vit
from data import compute_metrics, predict, video_scores
from util import plots
from util.cli import at_least, device_flag, resolve_device
from util.distributed import Processes, interleaved, processes, rank_zero_first, torchrun_env
from util.files import CSVRows, csv_text, write_json, write_output, write_person_crops
from util.layouts import FFPP_METHODS, DataError, Video, list_inputs, load_splits
from util.tokenizer import load_tokenizer
from util.train_log import Curve, read_curve

if TYPE_CHECKING:
    from preprocess import FaceCrop  # dlib: imported only to score raw videos and images

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


# ----------------------------------------------------------------------------- the benchmarks

def evaluate_dataset(model: nn.Module, dataset: str, split_dir: Path, videos: list[Video], args,
                     procs: Processes, out_dir: Path, label: str) -> dict:
    """Score every crop of a split (shared over torchrun's ranks); rank 0 writes videos.csv,
    metrics.json and roc.png under out_dir."""
    scores = interleaved(lambda crops: predict(model, crops, procs.device, args.batch_size, args.workers,
                                               f"{dataset} {split_dir.name}"),
                         [f for v in videos for f in v.frames], procs, errors=(DataError,))
    per_video = video_scores([v.path for v in videos for _ in v.frames], scores)
    video_p = np.array([per_video[v.path] for v in videos])  # mean p_fake of each video's frames
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
    if procs.main:
        write_dataset_outputs(out_dir, result, videos, video_p, curves)
    return result


def write_dataset_outputs(out_dir: Path, result: dict, videos: list[Video], video_p: np.ndarray,
                          curves: list) -> None:
    """videos.csv, roc.png (none for one class) and metrics.json, which lists the files and is
    written last: its presence means the others are complete."""
    videos_csv, roc, metrics = out_dir / "videos.csv", out_dir / "roc.png", out_dir / "metrics.json"
    rows = [{"video_id": v.video_id, "source": v.source, "label": v.label, "n_frames": len(v.frames),
             "p_fake": f"{p:.6f}", "path": v.path, "file": v.file} for v, p in zip(videos, video_p)]
    write_output(videos_csv, csv_text(list(rows[0]), rows))
    figure = plots.roc_figure(curves, f"{display(result['dataset'])} {result['split']} - {result['model']}")
    if figure is not None:
        write_output(roc, plots.png(figure))
    else:  # one class: no curve to draw, nor a stale one from a past run
        roc.unlink(missing_ok=True)
    result["files"] = {"videos": str(videos_csv), "metrics": str(metrics),
                       "roc": str(roc) if figure is not None else None}
    write_json(metrics, result)


# ----------------------------------------------------------------------------- the paper's table

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


def run_benchmarks(args, procs: Processes) -> dict:
    """The datasets of --dataset scored and tabled. Every index.csv is read before the model loads
    (minutes for a download); a broken dataset is listed in the table, not allowed to stop the others."""
    names = PAPER_DATASETS + ["ff++"] if args.dataset == "all" else [args.dataset]
    videos, found, missing, failed = load_splits(Path(args.data), names, args.split)
    model, label, default_out = load_model(args, procs, benchmark=True)
    out = Path(args.out or default_out)
    results = {}
    for d in videos:
        try:
            results[d] = evaluate_dataset(model, d, found[d], videos[d], args, procs, out / d, label)
        except DataError as e:  # unreadable crops
            failed[d] = str(e)
    if not results:
        raise DataError("; ".join(failed.values()))
    if procs.main:  # ranks > 0 show what they write to stderr
        for d, why in failed.items():
            print(f"{display(d)}: not evaluated: {why}", file=sys.stderr)
    return write_summary(args, procs, out, label, results, missing, failed)


def write_summary(args, procs: Processes, out: Path, label: str, results: dict, missing: list[str],
                  failed: dict[str, str]) -> dict:
    """Print the table(s); rank 0 writes them as <stem>.md and everything as <stem>.json."""
    table = metrics_table(list(results.values()))
    if args.dataset == "all":
        table = paper_table(results, label, missing, failed) + "\n\n" + table
    print(table)
    summary = {"model": label, "split": args.split, "results": results,
               "missing": missing, "failed": failed, "table": table}
    if procs.main:
        stem = "summary" if args.dataset == "all" else f"{args.dataset}-summary"
        write_output(out / f"{stem}.md", table + "\n")
        write_json(out / f"{stem}.json", summary)
        print(f"\nwritten to {out}/ (per dataset: videos.csv, metrics.json, roc.png)")
    return summary


# ----------------------------------------------------------------------------- the models

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


def load_model(args, procs: Processes, benchmark: bool) -> tuple[nn.Module, str, str]:
    """(model giving logits [N, 2] in eval mode on the device, a label for tables, the default
    output folder). Under torchrun rank 0 loads first (it downloads what is missing)."""
    with rank_zero_first(procs):
        model, label, out = load_zero_shot(args) if args.zero_shot else load_trained_detector(args, benchmark)
    return model.to(procs.device).eval(), label, out


# ----------------------------------------------------------------------------- Figure 1

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
    write_output(path, plots.png(plots.curves_figure(curves, args.x)))
    print(f"written to {path}")
    return curves


# ----------------------------------------------------------------------------- any video / image

def row(path: Path, person: int | None = None, seen: int = 0, with_face: int = 0,
        p_fake: float | None = None, note: str = "") -> dict:
    """One line of predictions.csv."""
    return {"file": str(path), "person": person, "frames_seen": seen,
            "frames_with_face": with_face, "p_fake": p_fake, "note": note}


def score_file(path: Path, crops_dir: Path | None, args, procs: Processes, face_models, model: nn.Module) -> list[dict]:
    """Print the verdict of one file; its rows for predictions.csv (a file row, then one per
    person when several appear). No face or an unreadable file: said so, no score."""
    import preprocess  # dlib: only this path needs it
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
        write_person_crops(crops_dir, [{c.frame: preprocess.crop_png(c) for c in t} for t in tracks])
    persons = [float(predict(model, [c.image for c in t], procs.device, args.batch_size, desc="crops").mean())
               for t in tracks]
    return report(path, len(frames), tracks, persons)


def verdict(p_fake: float) -> str:
    return "FAKE" if p_fake > 0.5 else "real"


def report(path: Path, n_seen: int, tracks: list[list[FaceCrop]], persons: list[float]) -> list[dict]:
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


def score_files(args, procs: Processes) -> list[dict]:
    """Score every file; predictions.csv with --out."""
    import preprocess  # dlib: only this path needs it
    inputs = list_inputs((args.video or []) + (args.image or []), args.input)
    face_models = preprocess.load_face_models(args.landmarks)
    model, _, _ = load_model(args, procs, benchmark=False)
    saved = CSVRows(Path(args.out) / "predictions.csv", list(row(Path()))) if args.out else None
    rows = []
    try:
        for path, name in tqdm(inputs, desc="files", unit="file", disable=None if len(inputs) > 1 else True):
            crops_dir = Path(args.save_crops) / name if args.save_crops else None
            new = score_file(path, crops_dir, args, procs, face_models, model)
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


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    _, world, local_rank = torchrun_env()  # (0, 1, 0) for a plain `python evaluate.py`
    files = bool(args.video or args.image or args.input)
    if sum((files, bool(args.dataset), bool(args.curves))) > 1:
        p.error("give one of --dataset, --video/--image/--input, --curves")
    if not files and not args.curves and not args.dataset:
        args.dataset = "all"
    if args.dataset and args.dataset != "all" and args.dataset.partition("-")[0] not in ALL_DATASETS:
        p.error(f"--dataset {args.dataset}: expected all, {', '.join(ALL_DATASETS)}, or ff++-c40 etc.")
    if world > 1 and not args.dataset:
        p.error("--video/--image/--input and --curves run in one process: start them with python, "
                "not torchrun")
    if args.zero_shot and args.checkpoint:
        p.error("--zero-shot uses CLIP's text prompts, not a --checkpoint: give one or the other")
    device = resolve_device(args.device, local_rank if world > 1 else None)
    if device.type == "cuda" and world > 1 and local_rank >= torch.cuda.device_count():
        p.error(f"--device cuda (torchrun LOCAL_RANK {local_rank}): this machine has "
                f"{torch.cuda.device_count()} GPU(s)")
    args.device = str(device)
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
        with processes(args.device, quiet=True) as procs:  # under torchrun: ranks > 0 print only errors
            if args.curves:
                return run_curves(args)
            if args.dataset:
                return run_benchmarks(args, procs)
            return score_files(args, procs)
    except (ValueError, OSError) as e:  # DataError, bad checkpoint, unwritable output, ...
        raise SystemExit("error: " + str(e).replace("\n", " ")) from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (outputs already written are complete)") from None


if __name__ == "__main__":
    main()
