"""Evaluate a deepfake detector: the paper's benchmark table (each AUROC with its 95% interval, the
paper's number beside it), robustness under perturbations, two models compared, a verdict for any
video or image, and Figure 1 from train.py's logs (README.md lists every command).

    python evaluate.py --dataset all --checkpoint runs/full/best.pt      # the paper's table + FF++
    python evaluate.py --compare runs/full/best.pt runs/ln-norm/best.pt --dataset cdfv2
    python evaluate.py --video clip.mp4 | --image face.jpg | --input DIR [--report DIR]
    python evaluate.py --curves runs/ln runs/ln-norm runs/ln-norm-unal runs/full
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import clip_vit
import preprocess
from data import compute_metrics, crops_batch, predict, read_rgb, score_videos, video_scores
from util import calibration, plots, report
from util.cli import Watched, at_least, count_or_all
from util.distributed import (Processes, device_flag, processes, rank_zero_first, resolve_device,
                              torchrun_env)
from util.files import CSVRows, write_json, write_output, write_person_crops
from util.layouts import (FFPP_METHODS, IMAGE_EXTS, DataError, Video, list_inputs, load_splits,
                          load_videos)
from util.perturb import DEFAULT_PERTURB, DEFAULT_TOKENS, parse_perturb, perturbed_scores
from util.precision import PRECISIONS, resolve_precision
from util.results import (DATASETS as PAPER_DATASETS, benchmark_summary, comparison_table, display,
                          paper_row_of, write_comparison, write_dataset_outputs)
from util.run import Curve, read_curve
from util.report import scores_and_maps
from util.stats import bootstrap_auroc_ci, paired_comparison
from util.tokenizer import load_tokenizer

ALL_DATASETS = [*PAPER_DATASETS, "ff++", "dfdcp", "folder"]
PROMPTS = ("a photo of a real face", "a photo of a fake face")  # class 0, class 1
N_BOOT, SEED = 2000, 0  # every interval's bootstrap resamples and seed; also the crops' noise seed


# ----------------------------------------------------------------------------- the benchmarks

def scored(model: nn.Module, videos: list[Video], args, procs: Processes, desc: str) -> tuple:
    """data.score_videos with the flags: (p_fake [n_frames], video scores [len(videos)])."""
    return score_videos(model, videos, procs.device, args.batch_size, args.workers, args.precision, desc,
                        procs)


def measured(labels, scores, groups=None, threshold: calibration.Threshold | None = None) -> dict:
    """data.compute_metrics with `auroc_ci` (groups: resample whole videos) and the table's columns."""
    m = compute_metrics(labels, scores)
    m["auroc_ci"] = None if m["auroc"] is None else \
        list(bootstrap_auroc_ci(labels, scores, groups, n_boot=N_BOOT, seed=SEED))
    if threshold is not None:
        m["acc_ref"] = compute_metrics(labels, scores, threshold.value)["acc"]
        for r in calibration.TABLE_FPRS:
            m[f"tpr@{100 * r:g}%fpr"] = calibration.tpr_at_fpr(labels, scores, r)
    return m


def evaluate_dataset(model: nn.Module, dataset: str, split_dir: Path, videos: list[Video], args,
                     procs: Processes, out_dir: Path, label: str, threshold: calibration.Threshold) -> dict:
    """A split scored (shared over torchrun's ranks), --perturb too; rank 0 writes its files."""
    scores, video_p = scored(model, videos, args, procs, f"{dataset} {split_dir.name}")
    frame_labels = np.array([v.label for v in videos for _ in v.frames])
    video_labels = np.array([v.label for v in videos])
    result = {"dataset": dataset, "split": split_dir.name, "model": label, "data": str(split_dir),
              "video": measured(video_labels, video_p, threshold=threshold),
              "frame": measured(frame_labels, scores, [v.path for v in videos for _ in v.frames], threshold),
              "threshold": {"value": threshold.value, "how": threshold.how}}
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
    """Video AUROC under each --perturb, and video p_fake [len(perturb), len(videos)]."""
    frames = [f for v in videos for f in v.frames]
    keys = [f"{v.path}/{f.name}" for v in videos for f in v.frames]
    score = partial(predict, model, device=procs.device, batch_size=args.batch_size, workers=args.workers,
                    desc="perturbed crops", precision=args.precision)
    scores = perturbed_scores(score, lambda f: read_rgb(f).permute(1, 2, 0).numpy(), frames, keys,
                              args.perturb, procs, seed=SEED, threads=max(1, args.workers))  # [K, n_frames]
    video_of = [v.path for v in videos for _ in v.frames]
    means = [video_scores(video_of, p) for p in scores]                        # one dict per perturbation
    video_p = np.array([[m[v.path] for v in videos] for m in means])           # [len(perturb), len(videos)]
    labels = np.array([v.label for v in videos])
    rows = [{"perturbation": "none", "severity": None, "video": clean}]
    rows += [{"perturbation": name, "severity": severity, "video": measured(labels, p)}
             for (name, severity), p in zip(args.perturb, video_p)]
    return {"seed": SEED, "rows": rows}, video_p


def run_benchmarks(args, procs: Processes) -> dict:
    """The datasets of --dataset scored and tabled; a broken one is listed, not fatal."""
    names = [*PAPER_DATASETS, "ff++"] if args.dataset == "all" else [args.dataset]
    videos, found, missing, failed = load_splits(Path(args.data), names, args.split)
    source = None if args.zero_shot else choose_checkpoint(args, benchmark=True)
    model, label, default_out, paper = load_model(args, procs, source)
    threshold, _ = calibration.calibrated(source, args.threshold)  # the verdicts' threshold, in the table
    out = Path(args.out or default_out)
    results = {}
    for d in videos:
        try:
            results[d] = evaluate_dataset(model, d, found[d], videos[d], args, procs, out / d, label,
                                          threshold)
        except DataError as e:  # unreadable crops
            failed[d] = str(e)
    if not results:
        raise DataError("; ".join(failed.values()))
    if procs.main:  # ranks > 0 show what they write to stderr
        for d, reason in failed.items():
            print(f"{display(d)}: not evaluated: {reason}", file=sys.stderr)
    summary = benchmark_summary(label, args.split, results, paper, missing, failed,
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
    """--compare A B on the same videos: DeLong's paired test and a paired bootstrap."""
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
        model, _, _, paper = load_model(args, procs, source)
        scores.append(scored(model, videos, args, procs, f"{key.upper()}: {source}")[1])
        sides[key] = {"model": source, **paper, **measured(labels, scores[-1])}
        del model  # one model in memory at a time
    c = {"dataset": args.dataset, "split": args.split, "data": str(found[args.dataset]), "n": len(labels),
         "n_real": int((labels == 0).sum()), "n_fake": int(labels.sum()), **sides,
         **paired_comparison(labels, *scores, n_boot=N_BOOT, seed=SEED),
         "method": "DeLong's paired test of the two video AUROCs (ci: the difference +- 1.96 standard "
                   f"errors); bootstrap_ci: paired percentile bootstrap, {N_BOOT} class-stratified "
                   f"resamples of the videos (seed {SEED})"}  # compare.json
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
        context = len(clip.positional_embedding)
        tokens = clip_vit.tokenize(list(prompts), context, tokenizer=tokenizer)  # [2, 77]
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
        raise ValueError(f"cannot load CLIP {name} for --zero-shot: {e} (evaluate.py takes the file as "
                         "--clip PATH)") from None
    tag = Path(name).stem if os.path.exists(name) else name.replace("/", "-")
    print(f"model: zero-shot CLIP {name}, prompts {args.prompts}")
    return model, f"zero-shot CLIP {name}", str(Path("eval") / f"zero-shot-{tag}")


def choose_checkpoint(args, benchmark: bool) -> str:
    """--checkpoint; else for benchmarks the newest runs/*/best.pt; else the authors' weights; said."""
    runs = sorted(Path(args.runs).glob("*/best.pt"), key=lambda p: p.stat().st_mtime) if benchmark else []
    if args.checkpoint is not None or runs:
        source = args.checkpoint or str(runs[-1])
        print(f"model: {source}" if args.checkpoint else f"model: newest run's checkpoint {source} (pass "
              "--checkpoint to choose another)")
        return source
    why = f"no run found under {args.runs}/, " if benchmark else ""
    print(f"model: {why}using the authors' released weights (pass --checkpoint to use another)")
    return "authors"


def check_checkpoint(source: str) -> None:
    """A --checkpoint that is missing or a folder, said before minutes of loading."""
    if source != "authors" and not Path(source).is_file():
        what = "is a folder" if Path(source).is_dir() else "not found"
        raise FileNotFoundError(f"checkpoint {source} {what}: expected runs/<name>/best.pt, the authors' "
                                "model.ckpt, or 'authors'")


def load_model(args, procs: Processes, source: str | None) -> tuple[nn.Module, str, str, dict]:
    """(model giving logits [N, 2] in eval mode, a label for tables, the default output folder, its
    paper's row): zero-shot CLIP (source None) or the detector of `source`."""
    with rank_zero_first(procs):  # rank 0 first: it downloads what is missing
        if source is None:
            model, label, out = load_zero_shot(args)
            paper = {"row": None, "why": "zero-shot CLIP is no row of the paper's table", "departures": []}
        else:
            check_checkpoint(source)
            try:
                model = clip_vit.load_detector(source, clip=args.clip, device="cpu")
            except (ValueError, OSError, RuntimeError) as e:  # wrong file, wrong base weights, offline
                raise ValueError(f"cannot load checkpoint {source}: {e}") from None
            path = Path(source)
            label, out = (("authors' weights", str(Path("eval") / "authors")) if source == "authors" else
                          (f"{path.parent.name}/{path.name}", str(path.parent / f"eval-{path.stem}")))
            paper = paper_row_of(source)
    model = model.to(procs.device).eval()
    visual = model.clip.visual if source is None else model.visual
    if args.precision == "bf16":  # the run only scores: autocast's per-call weight casts made once
        clip_vit.cast_for_inference(visual, torch.bfloat16)
    if args.compile:  # compiled on the first batch; frozen: the weights never change and the run only scores
        clip_vit.compile_tower(visual, frozen=True)
    return model, label, out, paper


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
    """One file's verdict, printed; its predictions.csv rows. Unreadable or no face: no score."""
    try:
        # the frames, then the people in them (tracks seen in enough frames: preprocess.persons)
        indices, frames = preprocess.read_frames(path, args.frames)   # an image is one frame
        tracks = preprocess.persons(preprocess.face_tracks(Watched(frames, path.name), indices, face_models),
                                    len(frames))
    except Exception as e:  # any decoder failure: one unreadable file must not stop a folder of them
        print(f"{path}: cannot read ({type(e).__name__}: {e}); no score", file=sys.stderr)
        return [report.row(path, note=f"cannot read: {e}")]
    if not tracks:
        print(f"{path}: no face found in {len(frames)} frame(s); no score", file=sys.stderr)
        return [report.row(path, seen=len(frames), note="no face found")]
    if args.save_crops:
        crops = [{c.frame: preprocess.crop_png(c) for c in t} for t in tracks]
        write_person_crops(Path(args.save_crops) / name, crops)
    persons = []
    for t in tracks:
        if args.report:  # p_fake and, from the same forward, where it comes from (util.report)
            images, _ = crops_batch([c.image for c in t], model.visual.input_resolution)  # [n, 3, S, S]
            p_fake, maps = scores_and_maps(model, images, procs.device, args.precision, args.batch_size)
        else:
            p_fake, maps = predict(model, [c.image for c in t], procs.device, batch_size=args.batch_size,
                                   desc="crops", precision=args.precision), None
        persons.append(report.person_of(t, p_fake, maps))
    rows = report.say_verdict(path, len(frames), persons, threshold, reference)
    if args.report:
        verdict = calibration.judge(persons[0].score, threshold, reference)
        for note in report.write_report(Path(args.report) / name, path, persons, verdict, len(frames),
                                        indices, video=path.suffix.lower() not in IMAGE_EXTS):
            print(f"{path}: {note}")
    return rows


def score_files(args, procs: Processes) -> list[dict]:
    """--calibrate first, then every file's verdict (predictions.csv, --report folders)."""
    inputs = list_inputs((args.video or []) + (args.image or []), args.input)
    if args.report:
        report.check_folder(Path(args.report))  # before minutes of loading and scoring
    val = load_videos(args.data, "ff++", "val") if args.calibrate else None  # said before loading the model
    face_models = preprocess.load_face_models(args.landmarks) if inputs else None
    source = None if args.zero_shot else choose_checkpoint(args, benchmark=False)
    model, *_ = load_model(args, procs, source)
    if args.calibrate:  # FF++ val's video scores, beside the checkpoint: the reference from now on
        scores = scored(model, val, args, procs, "FF++ val")[1]
        calibration.calibrate(calibration.build_reference([v.label for v in val], scores), source)
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
    what.add_argument("--calibrate", action="store_true", help="score FF++ val (--data) once with "
                      "--checkpoint and store its video scores beside it: what verdicts are read against")
    p.add_argument("--perturb", nargs="*", metavar="NAME=V,V", help="benchmarks: video AUROC under perturbed "
                   f"crops too, e.g. jpeg=90,70 blur=1,2 resize=112 (default: {' '.join(DEFAULT_TOKENS)})")
    p.add_argument("--checkpoint", help="runs/<name>/best.pt, the authors' model.ckpt, or 'authors' "
                   "(default: benchmarks: newest runs/*/best.pt, else authors; files: authors)")
    p.add_argument("--clip", help="base CLIP weights: ViT-L/14 (download), a path, or 'tiny'")
    p.add_argument("--zero-shot", action="store_true", help="zero-shot CLIP baseline with text prompts")
    p.add_argument("--prompts", nargs=2, default=list(PROMPTS), metavar=("REAL", "FAKE"),
                   help="zero-shot text prompts for class real and class fake")
    p.add_argument("--bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: downloaded, cached)")
    p.add_argument("--data", default="data", help="preprocess.py's output folder (default data/)")
    p.add_argument("--split", default="test", help="benchmarks: the split scored (default test)")
    p.add_argument("--runs", default="runs", help="where to look for the newest run")
    p.add_argument("--out", help="output folder (default: eval-<checkpoint stem> next to the checkpoint; "
                   "eval/authors; eval/zero-shot-<clip>; eval/compare-<A>-vs-<B>-<dataset>; --curves: .)")
    p.add_argument("--x", choices=["step", "epoch"], default="step", help="--curves: x axis")
    p.add_argument("--save-crops", help="keep the face crops of --video/--image/--input here")
    p.add_argument("--frames", type=count_or_all, default=32,
                   help="frames scored per video (files): N or all (default 32)")
    p.add_argument("--threshold", type=calibration.threshold_flag, help="p_fake above it is FAKE (files; "
                   f"benchmarks: the table's Acc@thr): {calibration.THRESHOLD_HELP} (default: eer with "
                   "reference scores, else 0.5, uncalibrated)")
    p.add_argument("--report", metavar="DIR", help="files: a folder per file here: timeline.png, faces.png "
                   "(crops and saliency), saliency.npz, annotated.mp4 (videos), report.json")
    p.add_argument("--landmarks", help="dlib landmark model (default: 68-point from face-recognition-models)")
    p.add_argument("--batch-size", type=at_least(int, 1), default=64,
                   help="crops per forward pass (default 64)")
    p.add_argument("--workers", type=at_least(int, 0), default=min(4, os.cpu_count() or 1),
                   help="crop-decoding processes (default: min(4, CPUs))")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 autocast on CUDA "
                   "and on a CPU with native bf16 matrix instructions (AMX), fp32 on any other CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower (inductor, frozen "
                   "weights): faster scoring after about a minute of compiling on 2 cores")
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
    if not all(text.strip() for text in args.prompts):
        p.error("argument --prompts: a prompt is empty: give two texts")
    if args.calibrate and (args.dataset or args.compare or args.curves or args.zero_shot):
        p.error("--calibrate stores the reference of a --checkpoint: give it alone or with "
                "--video/--image/--input")
    if args.compare and (not args.dataset or args.dataset == "all"):
        p.error("--compare scores both models on one split: give --dataset NAME (e.g. cdfv2), not all")
    if args.compare and (args.checkpoint or args.zero_shot or args.perturb is not None):
        p.error("--compare A B names both models, scored unperturbed: drop --checkpoint, --zero-shot, "
                "--perturb")
    a, b = args.compare or ("", "")
    if a and (a == b or os.path.isfile(a) and os.path.isfile(b) and os.path.samefile(a, b)):
        p.error(f"--compare: {a} and {b} are the same file: give two checkpoints")
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
        p.error("--video/--image/--input, --calibrate and --curves run in one process: start them with "
                "python, not torchrun")
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
    if args.report and args.compile:
        p.error("--report hooks into the eager tower for its saliency maps: drop --compile")
    if args.report and args.zero_shot:
        p.error("--report maps where a detector's p_fake comes from: it needs a --checkpoint, not "
                "--zero-shot")
    return args


def main(argv=None):
    """The only place errors become a one-line message (exit status 1); argparse exits 2."""
    args = parse_args(argv)
    try:
        with processes(args.device, quiet=True) as procs:  # under torchrun: ranks > 0 print only errors
            if args.curves:
                return run_curves(args)
            args.precision, why = resolve_precision(args.precision, procs.device)
            compiled = ", compiled tower (torch.compile, frozen)" if args.compile else ""
            print(f"precision {args.precision} ({why}){compiled}")  # first line: what every score is in
            if args.compare:
                return run_compare(args, procs)
            if args.dataset:
                return run_benchmarks(args, procs)
            rows = score_files(args, procs)
    except (ValueError, OSError) as e:  # DataError, bad checkpoint, download, unwritable output, ...
        raise SystemExit("error: " + str(e).replace("\n", " ")) from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted (outputs already written are complete)") from None
    if any(r["p_fake"] is None for r in rows):  # each said on stderr; every other file scored and written
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
