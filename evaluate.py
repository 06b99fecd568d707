"""Evaluate a deepfake detector: the paper's benchmark table (every AUROC with its 95% interval,
the paper's number beside it), robustness under perturbations, the paired comparison of two
models, p_fake for any video / image, and the paper's Figure 1 (validation AUROC during training)
from train.py's logs.

Benchmarks (face crops written by preprocess.py under --data; tables print and go to summary.md/json):
    python evaluate.py --dataset cdfv2 --checkpoint runs/<name>/best.pt
    python evaluate.py --dataset all                      # paper's table + FF++ per manipulation
    python evaluate.py --dataset all --zero-shot          # zero-shot CLIP baseline
    python evaluate.py --dataset cdfv2 --perturb          # + video AUROC under JPEG, blur, resize, noise
    python evaluate.py --dataset cdfv2 --perturb jpeg=90,70,50,30 blur=1,2,3 resize=112,64 noise=0.05,0.1
    torchrun --nproc_per_node=4 evaluate.py --dataset all # the same; 4 GPUs share the frames
Two models on the same videos (compare.md, compare.json, compare.csv):
    python evaluate.py --compare runs/full/best.pt runs/ln-norm/best.pt --dataset cdfv2
Any file (one process):
    python evaluate.py --video clip.mp4 | --image face.jpg | --input DIR  [--save-crops DIR]
    python evaluate.py --calibrate --checkpoint authors   # once: FF++ val's scores, what verdicts rank against
    python evaluate.py --video clip.mp4 --report report/ --frames all  # + timeline, saliency, annotated video
Figure 1, val video AUROC during training of four runs (writes curves.png, prints each best):
    python evaluate.py --curves runs/ln runs/ln-norm runs/ln-norm-unal runs/full [--x epoch]

Frame score = p_fake = softmax(logits)[:, 1]; video score = mean of its frames' p_fake
(the paper's protocol). Label 1 = fake. Every AUROC's 95% interval is the percentile bootstrap of
2,000 class-stratified resamples of the videos (numpy seed 0); at the frame level whole videos are
resampled, as a video's frames are not independent.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import clip_vit
from data import compute_metrics, eval_transform, predict, read_crop, read_rgb, video_scores
from util import calibration, plots, report
from util.cli import Watched, at_least, count_or_all, device_flag, resolve_device
from util.distributed import Processes, interleaved, processes, rank_zero_first, torchrun_env
from util.files import CSVRows, write_json, write_output, write_person_crops
from util.layouts import FFPP_METHODS, IMAGE_EXTS, DataError, Video, list_inputs, load_splits, load_videos
from util.paper import DATASETS as PAPER_DATASETS, checkpoint_row
from util.perturb import DEFAULT_PERTURB, DEFAULT_TOKENS, parse_perturb
from util.precision import PRECISIONS, resolve_precision
from util.results import (benchmark_summary, comparison, comparison_table, display, write_comparison,
                          write_dataset_outputs)
from util.robustness import perturbed_scores
from util.saliency import saliency_maps
from util.stats import bootstrap_auroc_ci
from util.tokenizer import load_tokenizer
from util.train_log import Curve, read_curve

ALL_DATASETS = [*PAPER_DATASETS, "ff++", "dfdcp", "folder"]
PROMPTS = ("a photo of a real face", "a photo of a fake face")  # class 0, class 1
N_BOOT, SEED = 2000, 0  # every interval's bootstrap resamples and their seed; the seed of the crops' noise


# ----------------------------------------------------------------------------- the benchmarks

def scorer(model: nn.Module, args, procs: Processes, desc: str) -> Callable[[list], np.ndarray]:
    """Crop files or RGB arrays -> their p_fake (data.predict with the flags' batch and workers)."""
    return lambda items: predict(model=model, items=items, device=procs.device, batch_size=args.batch_size,
                                 workers=args.workers, desc=desc, precision=args.precision)


def frame_scores(model: nn.Module, videos: list[Video], args, procs: Processes, desc: str) -> np.ndarray:
    """p_fake of every crop of `videos`, in order, shared over torchrun's ranks: [n_frames]."""
    return interleaved(scorer(model, args, procs, desc), [f for v in videos for f in v.frames], procs,
                       errors=(DataError,))


def video_means(videos: list[Video], frame_p: np.ndarray) -> np.ndarray:
    """The paper's video score, the mean p_fake of the video's frames: [len(videos)]."""
    per_video = video_scores([v.path for v in videos for _ in v.frames], frame_p)
    return np.array([per_video[v.path] for v in videos])


def measured(labels, scores, groups=None) -> dict:
    """data.compute_metrics and `auroc_ci`, the AUROC's 95% percentile bootstrap interval (groups:
    each frame's video, so that whole videos are resampled); None for one class."""
    m = compute_metrics(labels, scores)
    m["auroc_ci"] = None if m["auroc"] is None else \
        list(bootstrap_auroc_ci(labels, scores, groups, n_boot=N_BOOT, seed=SEED))
    return m


def evaluate_dataset(model: nn.Module, dataset: str, split_dir: Path, videos: list[Video], args,
                     procs: Processes, out_dir: Path, label: str, threshold: calibration.Threshold) -> dict:
    """Score every crop of a split (shared over torchrun's ranks), with --perturb under every
    perturbation too; rank 0 writes videos.csv, roc.png, robustness.csv/png and metrics.json under out_dir."""
    scores = frame_scores(model, videos, args, procs, f"{dataset} {split_dir.name}")
    video_p = video_means(videos, scores)
    frame_labels = np.array([v.label for v in videos for _ in v.frames])
    video_labels = np.array([v.label for v in videos])

    result = {"dataset": dataset, "split": split_dir.name, "model": label,
              "data": str(split_dir), "video": measured(video_labels, video_p),
              "frame": measured(frame_labels, scores, [v.path for v in videos for _ in v.frames]),
              "threshold": {"value": threshold.value, "how": threshold.how}}
    for level, labels, p in (("video", video_labels, video_p), ("frame", frame_labels, scores)):
        result[level] |= calibration.table_metrics(labels, p, threshold)  # accuracy at it, TPR at 1% / 5% FPR
    ffpp = dataset.startswith("ff++")
    curves = [("all videos" if ffpp else "video", video_labels, video_p, result["video"]),
              ("all frames" if ffpp else "frame", frame_labels, scores, result["frame"])]
    if ffpp:
        # FF++ test per manipulation: all real videos against one method's fakes
        result["per_source"] = {}
        real = video_labels == 0
        for src in sorted({v.source for v in videos if v.label == 1}):
            sel = real | np.array([v.source == src for v in videos])
            m = result["per_source"][src] = measured(video_labels[sel], video_p[sel])
            curves.append((f"{FFPP_METHODS.get(src, src)} videos", video_labels[sel], video_p[sel], m))
    perturbed = None
    if args.perturb is not None:
        result["robustness"], perturbed = evaluate_robustness(model, videos, args, procs, result["video"])
    if procs.main:
        write_dataset_outputs(out_dir, result, videos, video_p, curves, perturbed)
    return result


def evaluate_robustness(model: nn.Module, videos: list[Video], args, procs: Processes,
                        clean: dict) -> tuple[dict, np.ndarray]:
    """Video AUROC [95% CI] under each --perturb (name, severity) applied to every crop before the
    CLIP transform, its noise seeded by the crop's path under the split; every crop is decoded
    once for all of them (util.robustness). The unperturbed row is the plain evaluation's.
    Also each video's p_fake under each: [len(perturb), len(videos)]."""
    frames = [f for v in videos for f in v.frames]
    keys = [f"{v.path}/{f.name}" for v in videos for f in v.frames]
    scores = perturbed_scores(scorer(model, args, procs, "perturbed crops"),
                              lambda f: read_rgb(f).permute(1, 2, 0).numpy(), frames, keys, args.perturb,
                              procs, seed=SEED, threads=max(1, args.workers))  # [len(perturb), n_frames]
    labels, video_p = np.array([v.label for v in videos]), np.stack([video_means(videos, s) for s in scores])
    rows = [{"perturbation": "none", "severity": None, "video": clean}]
    rows += [{"perturbation": name, "severity": severity, "video": measured(labels, p)}
             for (name, severity), p in zip(args.perturb, video_p)]
    return {"seed": SEED, "rows": rows}, video_p


def run_benchmarks(args, procs: Processes) -> dict:
    """The datasets of --dataset scored and tabled (util.results.benchmark_summary). Every index.csv is
    read before the model loads (minutes for a download); a broken dataset is listed in the table,
    not allowed to stop the others."""
    names = [*PAPER_DATASETS, "ff++"] if args.dataset == "all" else [args.dataset]
    videos, found, missing, failed = load_splits(Path(args.data), names, args.split)
    source = None if args.zero_shot else choose_checkpoint(args, benchmark=True)
    model, label, default_out, row, why = load_model(args, procs, benchmark=True, source=source)
    threshold, _ = calibration.calibrated(source, args.threshold)  # the verdicts' threshold, also in the table
    out = Path(args.out or default_out)
    results = {}
    for d in videos:
        try:
            results[d] = evaluate_dataset(model, d, found[d], videos[d], args, procs, out / d, label, threshold)
        except DataError as e:  # unreadable crops
            failed[d] = str(e)
    if not results:
        raise DataError("; ".join(failed.values()))
    if procs.main:  # ranks > 0 show what they write to stderr
        for d, reason in failed.items():
            print(f"{display(d)}: not evaluated: {reason}", file=sys.stderr)
    summary = benchmark_summary(label, args.split, results, row, why, missing, failed,
                                paper_columns=args.dataset == "all", n_boot=N_BOOT, seed=SEED)
    print(summary["table"])
    if procs.main:  # the tables as <stem>.md, everything as <stem>.json
        stem = "summary" if args.dataset == "all" else f"{args.dataset}-summary"
        write_output(out / f"{stem}.md", summary["table"] + "\n")
        write_json(out / f"{stem}.json", summary)
        extra = ", robustness.csv, robustness.png" if args.perturb is not None else ""
        print(f"\nwritten to {out}/ (per dataset: videos.csv, metrics.json, roc.png{extra})")
    return summary


# ----------------------------------------------------------------------------- two models compared

def run_compare(args, procs: Processes) -> dict:
    """--compare A B: both models scored now, one after the other, on the same videos of --dataset's
    split (so their videos cannot differ): each video AUROC [95% CI], and A - B with DeLong's paired
    test (util.stats.paired_comparison: 95% CI and two-sided p-value) and a paired bootstrap CI.
    Rank 0 writes compare.csv, compare.md and compare.json under --out."""
    for source in args.compare:  # both named before minutes of scoring the first
        check_checkpoint(source)
    videos, found, _, _ = load_splits(Path(args.data), [args.dataset], args.split)
    videos = videos[args.dataset]
    labels = np.array([v.label for v in videos])
    if labels.min() == labels.max():
        raise DataError(f"--compare needs real and fake videos: {found[args.dataset]} holds one class only")
    sides, scores = {}, []
    for key, source in zip(("a", "b"), args.compare):
        print(f"model {key.upper()}: {source}")
        model, _, _, row, _ = load_model(args, procs, benchmark=True, source=source)
        scores.append(video_means(videos, frame_scores(model, videos, args, procs, f"{key.upper()}: {source}")))
        sides[key] = {"model": source, "row": row, **measured(labels, scores[-1])}
        del model  # one model in memory at a time
    c = comparison(labels, sides, scores, N_BOOT, SEED, dataset=args.dataset, split=args.split,
                   data=str(found[args.dataset]))
    print(comparison_table(c))
    if procs.main:
        tags = [s if s == "authors" else f"{Path(s).parent.name}-{Path(s).stem}" for s in args.compare]
        out = Path(args.out or Path("eval") / f"compare-{tags[0]}-vs-{tags[1]}-{args.dataset}")
        write_comparison(out, c, videos, scores)
        print(f"\nwritten to {out}/ (compare.md, compare.json, compare.csv)")
    return c


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


def check_checkpoint(source: str) -> None:
    """A --checkpoint that is missing or a folder, said in one line before minutes of loading."""
    path = Path(source)
    expected = "expected a file written by train.py (runs/<name>/best.pt), the authors' model.ckpt, or 'authors'"
    if source != "authors" and not path.is_file():
        if path.is_dir():
            raise IsADirectoryError(f"checkpoint {source} is a folder: {expected}")
        raise FileNotFoundError(f"checkpoint {source} not found: {expected}")


def load_trained_detector(source: str, clip: str | None) -> tuple[nn.Module, str, str]:
    """(detector of `source`, a label for tables, the default output folder)."""
    check_checkpoint(source)
    try:
        detector = clip_vit.load_detector(source, clip=clip, device="cpu")
    except (ValueError, OSError, RuntimeError) as e:  # wrong file, wrong base weights, offline
        # torch's zip reader says only "[Errno 22] Invalid argument" for some truncated files
        why = ("the file is truncated or corrupt (copy it again, or use the run's last.pt)"
               if isinstance(e, OSError) and e.errno == errno.EINVAL else str(e))
        raise ValueError(f"cannot load checkpoint {source}: {why}") from None
    if source == "authors":
        return detector, "authors' weights", str(Path("eval") / "authors")
    path = Path(source)
    return detector, f"{path.parent.name}/{path.name}", str(path.parent / f"eval-{path.stem}")


def load_model(args, procs: Processes, benchmark: bool,
               source: str | None = None) -> tuple[nn.Module, str, str, str | None, str]:
    """(model giving logits [N, 2] in eval mode on the device, a label for tables, the default output
    folder, the paper's row it reproduces or None, how that row was found or why there is none):
    --zero-shot CLIP, or the detector of `source` (default: --checkpoint or the default one).
    Under torchrun rank 0 loads first (it downloads what is missing)."""
    with rank_zero_first(procs):
        if args.zero_shot:
            (model, label, out), row, why = load_zero_shot(args), None, "zero-shot CLIP is no row of the paper's table"
        else:
            source = source or choose_checkpoint(args, benchmark)
            model, label, out = load_trained_detector(source, args.clip)
            row, why = checkpoint_row(source)
    return model.to(procs.device).eval(), label, out, row, why


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

def score_file(path: Path, name: str, args, procs: Processes, face_models, model: nn.Module,
               threshold: calibration.Threshold, reference: calibration.Reference | None) -> list[dict]:
    """Print the verdict of one file; its rows for predictions.csv (util.report.say_verdict). No
    face or an unreadable file: said so, no score. --report: its folder, every crop's saliency map in it."""
    import preprocess  # dlib: only this path needs it
    try:
        # preprocess.extract_faces's own two steps: the number of frames read is needed too
        indices, frames = preprocess.read_frames(path, args.frames)   # an image is one frame
        tracks = [t for t in preprocess.face_tracks(Watched(frames, path.name), indices, face_models) if t]
    except Exception as e:  # one unreadable file must not stop a folder of them
        print(f"{path}: cannot read ({type(e).__name__}: {e}); no score")
        return [report.row(path, note=f"cannot read: {e}")]
    if not tracks:
        print(f"{path}: no face found in {len(frames)} frame(s); no score")
        return [report.row(path, seen=len(frames), note="no face found")]
    if args.save_crops:
        write_person_crops(Path(args.save_crops) / name, [{c.frame: preprocess.crop_png(c) for c in t} for t in tracks])
    persons = []
    for t in tracks:
        p_fake = predict(model, [c.image for c in t], procs.device, batch_size=args.batch_size, desc="crops",
                         precision=args.precision)
        maps = None
        if args.report:  # where p_fake comes from: the maps of the crops as the detector takes them
            transform = eval_transform(model.visual.input_resolution)
            maps = saliency_maps(model, torch.stack([transform(read_crop(c.image)) for c in t]))  # [n, S, S]
        persons.append(report.person_of(t, p_fake, maps))
    rows = report.say_verdict(path, len(frames), persons, threshold, reference)
    if args.report:
        verdict = calibration.judge(persons[0].score, threshold, reference)
        for note in report.write_report(Path(args.report) / name, path, persons, verdict, len(frames), indices,
                                        video=path.suffix.lower() not in IMAGE_EXTS):
            print(f"{path}: {note}")
    return rows


def score_files(args, procs: Processes) -> list[dict]:
    """--calibrate first (util.calibration, beside the checkpoint or the authors' cached download);
    then every file, its verdict read against the checkpoint's reference; predictions.csv with
    --out, a folder per file with --report."""
    inputs = list_inputs((args.video or []) + (args.image or []), args.input)
    if args.report:
        report.check_folder(Path(args.report))  # before minutes of loading and scoring
    val = load_videos(args.data, "ff++", "val") if args.calibrate else None  # said before loading the model
    if inputs:
        import preprocess  # dlib: only this path needs it
        face_models = preprocess.load_face_models(args.landmarks)
    source = None if args.zero_shot else choose_checkpoint(args, benchmark=False)
    model, *_ = load_model(args, procs, benchmark=False, source=source)
    if args.calibrate:  # FF++ val's video scores, beside the checkpoint: the reference from now on
        scores = video_means(val, frame_scores(model, val, args, procs, "FF++ val"))
        calibration.calibrate(source, [v.label for v in val], scores)
    threshold, reference = calibration.calibrated(source, args.threshold)
    if not inputs:  # --calibrate alone
        return []
    saved = CSVRows(Path(args.out) / "predictions.csv", report.FIELDS) if args.out else None
    rows = []
    try:
        for path, name in tqdm(inputs, desc="files", unit="file", disable=None if len(inputs) > 1 else True):
            new = score_file(path, name, args, procs, face_models, model, threshold, reference)
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
    what.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two checkpoints (or 'authors') on the "
                      "same videos of --dataset NAME: A - B with DeLong's paired 95%% CI and p-value")
    what.add_argument("--calibrate", action="store_true", help="score FF++ val (--data) once with --checkpoint and "
                      "store its video scores beside it: the reference the verdicts on files are read against")
    p.add_argument("--perturb", nargs="*", metavar="NAME=V,V", help="benchmarks: video AUROC under perturbed "
                   f"crops too, e.g. jpeg=90,70 blur=1,2 resize=112 noise=0.1 (default: {' '.join(DEFAULT_TOKENS)})")
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
    p.add_argument("--out", help="output folder (default: eval-<checkpoint stem> next to the checkpoint; "
                   "eval/authors; eval/zero-shot-<clip>; eval/compare-<A>-vs-<B>-<dataset>; --curves: .)")
    p.add_argument("--x", choices=["step", "epoch"], default="step", help="--curves: x axis")
    p.add_argument("--save-crops", help="keep the face crops of --video/--image/--input here")
    p.add_argument("--frames", type=count_or_all, default=32, help="frames scored per video (files): N or all")
    p.add_argument("--threshold", type=calibration.threshold_flag, help="p_fake above it is FAKE (files; "
                   "benchmarks: the table's Acc@thr): "
                   f"{calibration.THRESHOLD_HELP} (default: eer with reference scores, else 0.5, uncalibrated)")
    p.add_argument("--report", metavar="DIR", help="files: a folder per file here: timeline.png, faces.png "
                   "(crops and saliency), saliency.npz, annotated.mp4 (videos), report.json")
    p.add_argument("--landmarks", help="dlib landmark model (default: 68-point from face-recognition-models)")
    p.add_argument("--batch-size", type=at_least(int, 1), default=64)
    p.add_argument("--workers", type=at_least(int, 0), default=min(4, os.cpu_count() or 1))
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 autocast on CUDA and on "
                   "a CPU with native bf16 matrix instructions (AMX), fp32 on any other CPU")
    p.add_argument("--device", type=device_flag, default="auto",
                   help="auto (cuda when there is a GPU), cpu, cuda or cuda:N (under torchrun with cuda: "
                   "cuda:LOCAL_RANK)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    _, world, local_rank = torchrun_env()  # (0, 1, 0) for a plain `python evaluate.py`
    files = bool(args.video or args.image or args.input)
    if sum((files, bool(args.dataset or args.compare), bool(args.curves))) > 1:
        p.error("give one of --dataset, --video/--image/--input, --curves")
    if args.calibrate and (args.dataset or args.compare or args.curves or args.zero_shot):
        p.error("--calibrate stores the reference of a --checkpoint: give it alone or with --video/--image/--input")
    if args.compare and (not args.dataset or args.dataset == "all"):
        p.error("--compare scores both models on one split: give --dataset NAME (e.g. --dataset cdfv2), not all")
    if args.compare and (args.checkpoint or args.zero_shot or args.perturb is not None):
        p.error("--compare A B names both models, scored unperturbed: drop --checkpoint, --zero-shot, --perturb")
    if args.compare and same_file(*args.compare):
        p.error(f"--compare: {args.compare[0]} and {args.compare[1]} are the same file: give two different checkpoints")
    if not files and not args.curves and not args.dataset and not args.calibrate:
        args.dataset = "all"
    if args.perturb is not None:
        try:
            args.perturb = parse_perturb(args.perturb) if args.perturb else DEFAULT_PERTURB
        except ValueError as e:
            p.error(f"argument --perturb: {e}")
        if not args.dataset:
            p.error("--perturb goes with --dataset: it perturbs a benchmark's crops")
    if args.dataset and args.dataset != "all" and args.dataset.partition("-")[0] not in ALL_DATASETS:
        p.error(f"--dataset {args.dataset}: expected all, {', '.join(ALL_DATASETS)}, or ff++-c40 etc.")
    if world > 1 and not args.dataset:
        p.error("--video/--image/--input, --calibrate and --curves run in one process: start them with python, "
                "not torchrun")
    if args.zero_shot and args.checkpoint:
        p.error("--zero-shot uses CLIP's text prompts, not a --checkpoint: give one or the other")
    device = resolve_device(args.device, local_rank if world > 1 else None)
    if device.type == "cuda" and world > 1 and local_rank >= torch.cuda.device_count():
        p.error(f"--device cuda (torchrun LOCAL_RANK {local_rank}): this machine has "
                f"{torch.cuda.device_count()} GPU(s)")
    args.device = str(device)
    for flag, folder, what in (("--save-crops", args.save_crops, "the crops as images"),
                               ("--report", args.report, "its files as videos and images")):
        if folder and not files:
            p.error(f"{flag} goes with --video/--image/--input")
        if folder and args.input and Path(folder).resolve().is_relative_to(Path(args.input).resolve()):
            p.error(f"{flag} inside --input: the next run would score {what}")
    if args.report and args.zero_shot:
        p.error("--report maps where a detector's p_fake comes from: it needs a --checkpoint, not --zero-shot")
    return args


def same_file(a: str, b: str) -> bool:
    return a == b or os.path.isfile(a) and os.path.isfile(b) and os.path.samefile(a, b)


def main(argv=None):
    """The only place errors become a one-line message (exit status 1); argparse exits 2."""
    args = parse_args(argv)
    try:
        with processes(args.device, quiet=True) as procs:  # under torchrun: ranks > 0 print only errors
            if args.curves:
                return run_curves(args)
            args.precision, why = resolve_precision(args.precision, procs.device)
            print(f"precision {args.precision} ({why})")  # a run's first line: what every score was computed in
            if args.compare:
                return run_compare(args, procs)
            if args.dataset:
                return run_benchmarks(args, procs)
            return score_files(args, procs)
    except (ValueError, OSError) as e:  # DataError, bad checkpoint, unwritable output, ...
        raise SystemExit("error: " + str(e).replace("\n", " ")) from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (outputs already written are complete)") from None


if __name__ == "__main__":
    main()
