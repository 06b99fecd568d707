"""Speed of every stage, against what the hardware can do and against the reference procedures.

    python -m tools.bench --json bench.json      # every part, on CUDA (batch 128, the paper's) or the CPU
    python -m tools.bench --parts forward,video  # CPU: fp32 against bf16, ours against OpenAI's
    python -m tools.bench --model tiny --repeat 1 --parts forward,train_step,data   # a smoke run

Parts, and their JSON keys (CPU: batch 8; --precision auto takes bf16 where the CPU has it natively):
  forward     ViT-L/14 (random weights) against a large GEMM in the same precision and against OpenAI's
              tower on the same weights; the CPU times fp32 and bf16 (`precisions`; `forward`: the run's).
              --compile: each beside its `compiled` figures (evaluate.py --compile), the compile time
              (compile_s) and the images after which compiling pays (pays_after_images, null: never).
  train_step  train.py's LN-tuning step, plain and with gradient checkpointing (`checkpointing`).
  data        augmented images/s of one worker, and of train.py's loader with its default workers.
  preprocess  against the reference procedure: in this process on one 720p video, then whole
              preprocess.py runs on synthetic videos (small_faces, typical_faces, two_faces).
  video       whole `evaluate.py --video` runs: fp32, bf16, and --report in the run's precision.
  bottleneck, recipe, recipe_minutes  (train_step) the paper's 10 epochs x 115,200 FF++ frames.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import clip_vit as cv
import data
import preprocess as pp
import train
from util import checkpoint
from util.cli import at_least
from util.distributed import Processes, device_flag, resolve_device
from util.layouts import Video
from util.precision import PRECISIONS, autocast, resolve_precision

PARTS = ("forward", "train_step", "preprocess", "data", "video")
# astronaut scales per face: a dlib box of ~70 px, ~180-200 px, and two people (~190 and ~150 px)
FACE_ZOOMS = {"small_faces": (0.75,), "typical_faces": (2.0,), "two_faces": (2.0, 1.6)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GEMMS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution", "aten::cudnn_convolution")


class BenchError(RuntimeError):
    """A stage that cannot run here (a missing package, a failed run): main says it in one line."""


def timed(fn: Callable, device: torch.device = torch.device("cpu")) -> tuple[object, float]:
    """fn's result and its wall time, the device's queue drained on both sides."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def best_seconds(fn: Callable, device: torch.device, repeat: int) -> float:
    """Best of `repeat` calls after a warm-up call (the best is the least disturbed)."""
    fn()
    return min(timed(fn, device)[1] for _ in range(repeat))


def run_seconds(*command: str) -> float:
    """Wall time of a whole script run from the scripts' folder, start-up included."""
    done, seconds = timed(lambda: subprocess.run([sys.executable, *command], capture_output=True, text=True,
                                                 errors="replace", cwd=Path(__file__).parent.parent))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"`python {command[0]} ...` failed ({done.returncode}): {tail[0]}")
    return seconds


def build(model: str, device: torch.device) -> cv.DeepfakeDetector:
    torch.manual_seed(0)  # the head
    visual = cv.tiny_visual() if model == "tiny" else cv.VisionTransformer(224, 14, 1024, 24, 16, 768)
    visual.transformer.init_weights()  # OpenAI's initialisation: finite, trainable random weights
    return cv.DeepfakeDetector(visual).to(device)


def openai_tower(detector: cv.DeepfakeDetector) -> torch.nn.Module | None:
    """OpenAI's tower on the detector's weights, or None; by path (its __init__ needs pkg_resources)."""
    path = Path(sysconfig.get_paths()["purelib"]) / "clip" / "model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    v = detector.visual
    dim = v.width if v.proj is None else v.proj.shape[1]  # tiny: no projection, OpenAI's needs one
    tower = module.VisionTransformer(v.input_resolution, v.conv1.kernel_size[0], v.width,
                                     len(v.transformer.resblocks), v.width // 64, dim)
    tower.load_state_dict(v.state_dict() | ({"proj": torch.eye(dim)} if v.proj is None else {}))
    return tower.to(v.conv1.weight.device)


def forward_seconds(model: torch.nn.Module, device: torch.device, batch: int, repeat: int,
                    precision: str) -> float:
    """evaluate.py's forward: inference mode under the run's autocast."""
    images = torch.randn(batch, 3, 224, 224, device=device)  # [B, 3, 224, 224]
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        return best_seconds(lambda: model(images), device, repeat)


def tower_flops(visual: cv.VisionTransformer) -> float:
    """One image through the tower, 2 FLOPs per multiply-add, as if every token left the last block: the
    blocks' GEMMs (4w² attention, 8w² MLP per token), QKᵀ and AV, the patch embedding (162e9 for ViT-L/14)."""
    n, w = visual.positional_embedding.shape[0], visual.width  # 257 tokens, 1024 for ViT-L/14
    block = 2 * n * 12 * w * w + 4 * n * n * w
    return visual.transformer.layers * block + 2 * (n - 1) * visual.conv1.weight[0].numel() * w


def compiled_figures(compiled: cv.DeepfakeDetector, device: torch.device, batch: int, repeat: int,
                     precision: str, eager: dict) -> dict:
    """The forward through the compiled tower beside the eager one's figures `eager`."""
    seconds, wall = timed(lambda: forward_seconds(compiled, device, batch, repeat, precision), device)
    compile_s = max(wall - (repeat + 1) * seconds, 0.0)  # the first call compiles, then repeat + 1 calls
    saved = (eager["seconds"] - seconds) / batch  # per image: 1 / eager rate - 1 / compiled rate
    speedup = eager["seconds"] / seconds
    return {"images_per_s": batch / seconds, "seconds": seconds, "speedup": speedup,
            "tflop_per_s": eager["tflop_per_s"] * speedup, "gemm_fraction": eager["gemm_fraction"] * speedup,
            "compile_s": compile_s, "pays_after_images": math.ceil(compile_s / saved) if saved > 0 else None}


def forward_part(detector: cv.DeepfakeDetector, device: torch.device, batch: int, repeat: int,
                 precisions: list[str], side: int, compile: bool = False) -> dict:
    """Per precision: ours against a square GEMM (the device's practical peak) and OpenAI's tower."""
    tower, out = openai_tower(detector), {}
    for precision in precisions:
        a, b = torch.randn(2, side, side, device=device, dtype=DTYPES[precision])  # 2 x [side, side]
        gemm = 2 * side ** 3 / best_seconds(lambda: a @ b, device, 5 if device.type == "cpu" else 50)
        model = detector
        if precision == "bf16":  # as evaluate.py scores: the frozen weights cast once, not on every call
            model = copy.deepcopy(detector)
            cv.cast_for_inference(model.visual, torch.bfloat16)
        seconds = forward_seconds(model, device, batch, repeat, precision)
        flops = tower_flops(detector.visual) * batch / seconds
        r = {"images_per_s": batch / seconds, "seconds": seconds, "batch_size": batch, "precision": precision,
             "dtype": str(DTYPES[precision]).removeprefix("torch."), "tflop_per_s": flops / 1e12,
             "gemm_tflop_per_s": gemm / 1e12, "gemm_fraction": flops / gemm}
        if tower is None:
            r["peer"] = {"error": "openai-clip is not installed (pip install -r requirements-dev.txt)"}
        else:
            peer = forward_seconds(tower, device, batch, repeat, precision)
            r |= {"peer": {"images_per_s": batch / peer, "seconds": peer}, "ratio_to_peer": peer / seconds}
        out[precision] = r
    if compile:  # after every eager figure: the tower is compiled in place, frozen, as evaluate.py's
        cv.compile_tower(detector.visual, frozen=True)
        for precision, r in out.items():
            r["compiled"] = compiled_figures(detector, device, batch, repeat, precision, r)
    return out


def time_shares(fn: Callable, device: torch.device) -> dict:
    """Shares of one call's time (torch.profiler): GEMMs (linear, patch conv), attention, the rest."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        timed(fn, device)
    shares = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if cuda and event.device_type != DeviceType.CPU:
            continue  # a kernel's own row: its time is in the device time of the op that launched it
        attention = "scaled_dot_product" in event.key or "flash" in event.key
        share = "gemm" if event.key in GEMMS else "attention" if attention else "other"
        shares[share] += event.self_device_time_total if cuda else event.self_cpu_time_total
    return {k: v / (sum(shares.values()) or 1.0) for k, v in shares.items()}


def peak_memory(device: torch.device) -> int:
    """Bytes at the peak since the last reset: CUDA's live tensors, else the resident set (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return int(re.search(r"VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def train_step_figures(model: str, device: torch.device, batch: int, repeat: int, checkpointing: bool,
                       precision: str, forward_s: float) -> dict:
    """train.train_step with the paper's recipe (TrainConfig's defaults): best of `repeat`, and the
    peak memory above what was in use before (CUDA: a batch that does not fit is a result)."""
    cfg, detector = train.TrainConfig(precision=precision), build(model, device)
    cv.set_trainable(detector, cfg.tuning)
    detector.train().visual.transformer.grad_checkpointing = checkpointing
    optimizer = train.optimizer_for(detector, cfg)
    images = torch.randn(batch, 3, 224, 224, device=device)         # [B, 3, 224, 224]
    labels = (torch.arange(batch, device=device) % 5 > 0).long()    # [B], 4 fake : 1 real, as FF++
    procs = Processes(rank=0, world=1, device=device)
    step = partial(train.train_step, detector, optimizer, images, labels, 0, cfg.lr, cfg, procs)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:  # freed heap back to the system, then the peak resident set reset to the current one (Linux)
        ctypes.CDLL(None).malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    base = peak_memory(device)  # what is in use now
    try:
        seconds = best_seconds(step, device, repeat)
    except torch.cuda.OutOfMemoryError:
        return {"error": f"CUDA out of memory at batch {batch}"}
    peak = peak_memory(device)
    return {"images_per_s": batch / seconds, "ratio_to_forward": seconds / forward_s, "seconds": seconds,
            "peak_memory_mb": (peak - base) / 2 ** 20, "peak_memory_total_mb": peak / 2 ** 20,
            "time_shares": time_shares(step, device)}


def data_part(n_images: int | None, batch: int, device: torch.device) -> dict:
    """One worker alone (single-threaded, here), then train.py's loader with its default workers at the
    training batch (smaller when n_images holds under 3 rounds), on a 256x256 PNG crop; the loader is
    timed from when the workers' first round (their start-up) has arrived."""
    workers = train.TrainConfig().loader_workers
    n_images = n_images or max(256, 3 * workers * batch)
    cfg = train.TrainConfig(batch_size=max(1, min(batch, n_images // (3 * workers))))
    with tempfile.TemporaryDirectory() as tmp:
        crop = Path(tmp) / "crop.png"
        noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)          # [256, 256, 3]
        cv2.imwrite(str(crop), cv2.GaussianBlur(noise, (0, 0), 3))
        frames = [crop] * math.ceil(max(n_images, 3 * workers * cfg.batch_size) / 2)
        videos = [Video("train", source, "000", label, "", frames=frames)
                  for label, source in enumerate(("youtube", "Deepfakes"))]
        dataset = data.FrameDataset(videos, data.train_transform(), seed=0)
        threads = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(1)  # as in a loader's worker
        cv2.setNumThreads(1)
        n_one = min(n_images, 64)
        one = n_one / timed(lambda: [dataset[i % len(dataset)] for i in range(n_one)])[1]
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
        loader = train.epoch_loader(dataset, 0, 0, cfg, Processes(rank=0, world=1, device=device))
        arrivals = [(time.perf_counter(), len(images)) for images, _, _ in loader]  # images: [b, 3, 224, 224]
    first = max(workers, 1) - 1  # worker i delivers batches i, i + workers, ...
    loaded = sum(n for _, n in arrivals[first + 1:]) / (arrivals[-1][0] - arrivals[first][0])
    return {"images_per_s_per_worker": one, "workers": workers, "loader_batch_size": cfg.batch_size,
            "loader_images": len(dataset), "loader_images_per_s": loaded,
            "loader_images_per_s_per_worker": loaded / workers}


def synthetic_720p_video(path: Path, n_frames: int, zooms: tuple[float, ...], phase: int = 0) -> Path:
    """scikit-image's astronaut (a real face) moving, turning and zooming in 1280x720 frames (`phase`
    varies a video); a second zoom adds a second person's head 500 px to the right."""
    try:
        from skimage import data as skimage_data  # optional: a development dependency
    except ImportError:
        raise BenchError("the synthetic videos need scikit-image (pip install -r requirements-dev.txt); "
                         "run the other --parts without it") from None
    face = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)                   # [512, 512, 3]
    head = np.zeros(face.shape[:2], np.uint8)
    head[20:230, 120:320] = 255                                                        # the head, no suit
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (1280, 720))
    for i in range(n_frames):  # (240, 130), near the face, lands at the frame's centre at any zoom
        frame = None
        for person, zoom in enumerate(zooms):
            angle, scale = 4 * np.sin(i / 5 + phase + person), zoom * (1 + 0.12 * i / n_frames)
            m = cv2.getRotationMatrix2D((240, 130), angle, scale)
            m[:, 2] += (400 + 4 * i + 40 * phase + 500 * person - 260 * (len(zooms) - 1), 230)
            drawn = cv2.warpAffine(face, m, (1280, 720), borderMode=cv2.BORDER_REPLICATE)  # [720, 1280, 3]
            if frame is None:
                frame = drawn
            else:  # the second person's head alone, over the first's frame
                keep = cv2.warpAffine(head, m, (1280, 720)) > 127                     # [720, 1280]
                frame[keep] = drawn[keep]
        writer.write(frame)
    writer.release()
    return path


def preprocess_part(video: Path | None, n_frames: int) -> dict:
    """preprocess.py and the reference procedure on one video, one core: frames/s, keypoints apart."""
    cv2.setNumThreads(1)
    models = pp.load_face_models()
    with tempfile.TemporaryDirectory() as tmp:
        video = video or synthetic_720p_video(Path(tmp) / "bench_720p.mp4", n_frames, (1.7,))
        indices, frames = pp.read_frames(video, n_frames)
    people, seconds = timed(lambda: pp.face_tracks(frames, indices, models))
    reference, reference_seconds = timed(lambda: [pp.reference_crop(frame, models) for frame in frames])
    ours = {c.frame: c.image for c in (people[0] if people else [])}
    pairs = [(ours[i], ref.image) for i, ref in zip(indices, reference) if ref is not None and i in ours]
    again = [(pp.reference_crop(a, models), pp.reference_crop(b, models)) for a, b in pairs]  # the keypoints
    distances = [float(np.linalg.norm(a.keypoints - b.keypoints, axis=1).mean())
                 for a, b in again if a is not None and b is not None]
    return {"frames": len(frames), "frame_size": list(frames[0].shape[:2]),
            "frames_per_s": len(frames) / seconds, "reference_frames_per_s": len(frames) / reference_seconds,
            "speedup": reference_seconds / seconds, "frames_compared": len(distances),
            "keypoint_px": statistics.fmean(distances) if distances else None}


def preprocess_case(zooms: tuple[float, ...], n_videos: int, n_frames: int, repeat: int) -> dict:
    """Whole `preprocess.py --workers 1` runs against --reference; a machine's speed drifts, so ours
    are split around the reference's one and their median is quoted."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos" / "real").mkdir(parents=True)
        videos = [synthetic_720p_video(tmp / "videos" / "real" / f"v{k}.mp4", n_frames, zooms, k)
                  for k in range(n_videos)]
        command = ("preprocess.py", "--dataset", "folder", "--root", str(tmp / "videos"), "--workers", "1",
                   "--frames", str(n_frames), "--out")
        before = (repeat + 1) // 2
        runs = [run_seconds(*command, str(tmp / f"fast{i}")) for i in range(before)]
        reference_seconds = run_seconds(*command, str(tmp / "ref"), "--reference")
        runs += [run_seconds(*command, str(tmp / f"fast{i}")) for i in range(before, repeat)]
        crops = [len(list((tmp / name).rglob("*.png"))) for name in ("fast0", "ref")]
        people = [json.loads(p.read_text())["n_people"] for p in sorted((tmp / "fast0").rglob("meta.json"))]
        face = pp.reference_crop(pp.read_frames(videos[0], 1)[1][0], pp.load_face_models())
    median, frames = statistics.median(runs), n_videos * n_frames
    face_px = None if face is None else int(face.box[2] - face.box[0])  # the largest face's dlib box
    return {"videos": n_videos, "frames": frames, "face_px": face_px, "seconds": median, "runs_seconds": runs,
            "frames_per_s": frames / median, "crops": crops[0], "people": people,
            "reference_seconds": reference_seconds, "reference_frames_per_s": frames / reference_seconds,
            "reference_crops": crops[1], "speedup": reference_seconds / median}


def video_part(model: str, n_frames: int, precision: str) -> dict:
    """Whole `evaluate.py --video` runs on a random tower's checkpoint (the figures are speeds)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = synthetic_720p_video(tmp / "clip.mp4", n_frames, (2.0,))
        detector, clip = build(model, torch.device("cpu")), "tiny"
        cv.set_trainable(detector, "ln")
        if model == "vit-l-14":
            clip = str(tmp / "vit-l-14.pt")
            torch.save({"visual." + k: v for k, v in detector.visual.state_dict().items()}, clip)
        checkpoint.save_checkpoint(tmp / "best.pt", detector, {"clip": clip, "normalize": True})
        command = ("evaluate.py", "--video", str(video), "--checkpoint", str(tmp / "best.pt"),
                   "--device", "cpu", "--frames", str(n_frames), "--precision")
        seconds = {p: run_seconds(*command, p) for p in ("fp32", "bf16")}
        seconds["report"] = run_seconds(*command, precision, "--report", str(tmp / "report"))
    return {"frames": n_frames, "model": model, "seconds": seconds, "report_precision": precision,
            "bf16_speedup": seconds["fp32"] / seconds["bf16"],
            "report_cost": seconds["report"] / seconds[precision]}


def recipe_part(results: dict, device: torch.device, model: str) -> dict:
    """The paper's training at the slower of the step and the loader, and the workers it would need."""
    step = results["train_step"]
    step_ips = (step["checkpointing"] if "error" in step else step).get("images_per_s")  # plain, if it fits
    if step_ips is None:
        return {"bottleneck": {"limited_by": None, "verdict": "no training step fitted in memory"}}
    cfg, d, out = train.TrainConfig(), results.get("data"), {}
    loader_ips = d["loader_images_per_s"] if d else math.inf
    ips = min(step_ips, loader_ips)
    if d:
        slow = loader_ips < step_ips
        needed = math.ceil(step_ips / d["loader_images_per_s_per_worker"]) if slow else None
        verdict = f"the step takes {step_ips:.3g} images/s, the loader {loader_ips:.0f} with " \
                  f"{d['workers']} workers" + (f"; it needs ~{needed}" if slow else "")
        out["bottleneck"] = {"limited_by": "loader" if slow else "gpu" if device.type == "cuda" else "cpu",
                             "workers_needed": needed, "verdict": verdict}
    frames = 720 * len(cfg.sources) * cfg.frames  # FF++'s train split: 720 videos a source
    minutes = cfg.epochs * frames / ips / 60
    out["recipe"] = {"model": model, "epochs": cfg.epochs, "frames_per_epoch": frames, "images_per_s": ips,
                     "limited_by": "loader" if ips < step_ips else "train_step", "minutes": minutes}
    return out | {"recipe_minutes": minutes}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(usage="%(prog)s [--device D] [--parts LIST] [options] (--help: all)",
                                     description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = parser.add_argument
    add("--device", type=lambda s: resolve_device(device_flag(s)), default="auto", help="auto, cpu, cuda[:N]")
    add("--batch-size", type=at_least(int, 1), help="default 128 (the paper's) on CUDA, 8 on the CPU")
    add("--repeat", type=at_least(int, 1), help="timed repetitions (CPU 2, CUDA 10; preprocess.py runs 4)")
    add("--parts", type=lambda s: s.split(","), default=list(PARTS), help=f"comma-separated, of {PARTS}")
    add("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on CUDA and where the CPU has it")
    add("--model", choices=("vit-l-14", "tiny"), default="vit-l-14", help="tiny: a smoke run of this script")
    add("--video", type=Path, help="a video for the preprocess part (default: a synthetic 720p one)")
    add("--frames", type=at_least(int, 1), default=32, help="frames per video (preprocess, video)")
    add("--preprocess-videos", type=at_least(int, 1), default=3, help="videos per whole preprocess.py run")
    add("--data-images", type=at_least(int, 1), help="images through the loader (default 256, or 3 rounds)")
    add("--compile", action="store_true", help="forward: compiled too (a minute per precision, 2 cores)")
    add("--json", type=Path, help="write the results here (they are printed either way)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.parts) - set(PARTS)):
        parser.error(f"argument --parts: unknown {unknown}; choose from {PARTS}")
    if args.json and not args.json.parent.is_dir():  # checked first: a long run must not end unwritable
        parser.error(f"argument --json: no folder {args.json.parent}")
    try:
        if args.video:
            pp.read_frames(args.video, 1)
    except ValueError as e:
        parser.error(f"argument --video: {args.video}: {e}")
    return args


def run(args: argparse.Namespace) -> dict:
    parts, device, cuda = args.parts, args.device, args.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    batch = args.batch_size or (train.TrainConfig().batch_size if cuda else 8)
    repeat = args.repeat or (10 if cuda else 2)
    precision, why = resolve_precision(args.precision, device)
    cpu = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()) or [os.uname().machine]
    name = torch.cuda.get_device_name(device) if cuda else f"{cpu[0]} x{os.cpu_count()} CPU, " \
                                                          f"{torch.get_num_threads()} threads"
    results = {"device": f"{name}, torch {torch.__version__}", "batch_size": batch,
               "precision": f"{precision} ({why})"}
    print(f"bench: {results['device']}, precision {results['precision']}: {','.join(parts)}", file=sys.stderr)
    if "forward" in parts or "train_step" in parts:  # the step's ratio needs the forward
        both = [precision] if cuda else ["fp32", "bf16"]  # which one pays depends on the processor
        side = 8192 if cuda else 4096 if args.model == "vit-l-14" else 1024  # tiny: a smoke run
        results["precisions"] = forward_part(build(args.model, device), device, batch, repeat, both, side,
                                             args.compile)
        results["forward"] = results["precisions"][precision]
    if "train_step" in parts:
        plain, checkpointed = (train_step_figures(args.model, device, batch, repeat, c, precision,
                                                  results["forward"]["seconds"]) for c in (False, True))
        results["train_step"] = {"batch_size": batch, "precision": precision, **plain,
                                 "checkpointing": checkpointed}
    if "data" in parts:
        results["data"] = data_part(args.data_images, batch, device)
    if "train_step" in results:
        results |= recipe_part(results, device, args.model)
    if "video" in parts:
        results["video"] = video_part(args.model, args.frames, precision)
    if "preprocess" in parts:
        results["preprocess"] = preprocess_part(args.video, args.frames) | {
            name: preprocess_case(zooms, args.preprocess_videos, args.frames, args.repeat or 4)
            for name, zooms in FACE_ZOOMS.items()}
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        results = run(args)
    except BenchError as e:
        raise SystemExit(f"bench: {e}") from None
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
