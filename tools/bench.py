"""Speed of every stage, against what the hardware can do and against the reference procedures.

    python -m tools.bench                                  # CPU or CUDA, whichever is there
    python -m tools.bench --device cuda --json bench.json  # batch 128 (the paper's), bf16 autocast
    python -m tools.bench --device cuda --batch-size 64    # a smaller batch
    python -m tools.bench --parts forward,train_step       # a subset
    python -m tools.bench --parts preprocess --frames 8 --preprocess-videos 1   # a quick look
    python -m tools.bench --parts forward,video    # CPU: fp32 against bf16, ours against OpenAI's
    python -m pytest -q tests/test_bench.py tests/test_cuda.py   # test_cuda: skipped without a GPU

On the CPU: batch 8, each training step in a fresh process; --precision auto (the default) takes
bf16 where the processor multiplies bf16 natively (util.precision), as train.py and evaluate.py do.

Parts (JSON keys):
  forward     ViT-L/14 image tower (random weights), images/s and achieved FLOP/s as a fraction of
              the FLOP/s of one large GEMM in the same precision, measured in the same run; beside it
              OpenAI's own tower (the openai-clip wheel) on the same weights under the same autocast.
              On the CPU both precisions (`precisions`: fp32, bf16), `forward` = the run's; CUDA: bf16.
  train_step  one LN-tuning step of train.py (its train_step: forward, slerp, losses, backward,
              AdamW) at train_step.batch_size (CUDA: 128, the paper's), with and
              without gradient checkpointing: images/s, peak memory, ratio to the forward time.
  data        augmented training images/s: one worker alone (images_per_s_per_worker), and
              train.py's DataLoader (data.FrameDataset + train_transform + make_loader) with its
              default workers (TrainConfig().workers, at most the CPU count) on a synthetic crop
              tree (loader_images_per_s).
  preprocess  frames/s of preprocess.py's pipeline and of the reference procedure (full-frame HOG
              at upsample 1, largest face, re-detection in the crop) on the same 720p video on one
              core, and the distance between the five keypoints found again in both crops; then
              whole runs of `python preprocess.py --dataset folder --root R --out O --workers 1
              [--reference]` (start-up included; ours the median of 4, around the reference's) on
              synthetic 720p videos of scikit-image's astronaut photo: small_faces (dlib box ~70 px),
              typical_faces (~180-200 px) and two_faces (two people, ~190 and ~150 px; `people`:
              found per video).
  video       whole `python evaluate.py --video` runs on a synthetic 720p clip of --frames frames
              (start-up included): fp32, bf16, and --report (saliency maps + report folder).
  bottleneck  (train_step + data) whether the loader or the GPU/CPU limits the paper's recipe,
              and how many workers the loader would need when it is the slower one.
  recipe_minutes  (train_step) 10 epochs x 115,200 FF++ c23 training frames at the measured
              rate (the loader's when it is slower), validation excluded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from torch import nn

import clip_vit as cv
import data
import train
from util import checkpoint
from util.cli import at_least, device_flag, resolve_device
from util.layouts import Video
from util.precision import PRECISIONS, autocast, resolve_precision

VIT_L14_FLOPS = 162.2e9  # one 224x224 image through the ViT-L/14 image tower (2 FLOPs per multiply-add)
PARTS = ("forward", "train_step", "preprocess", "data", "video")
FFPP_TRAIN_VIDEOS = 720  # per source in FF++'s official train split (x 5 sources x 32 frames = 115,200)
HERE = Path(__file__).resolve().parent.parent  # the scripts' folder
# astronaut photo scales per face: a dlib box of ~70 px, ~180-200 px, and two people (~190 and ~150 px)
FACE_ZOOMS = {"small_faces": (0.75,), "typical_faces": (2.0,), "two_faces": (2.0, 1.6)}


class BenchError(RuntimeError):
    """A stage that cannot run here: a missing package, a failed subprocess (main says it in one line)."""


# ----------------------------------------------------------------------------- timing helpers

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int) -> float:
    """Best wall time of `repeat` calls after a warm-up call (the best is the least disturbed)."""
    fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_flops(device: torch.device, n: int, precision: str) -> float:
    """FLOP/s of one large square GEMM in `precision`: the device's practical peak for it."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, repeat=5 if device.type == "cpu" else 50)


# ----------------------------------------------------------------------------- model: forward, train step

def build(model: str, device: torch.device) -> cv.DeepfakeDetector:
    torch.manual_seed(0)
    visual = cv.VisionTransformer(224, 14, 1024, 24, 16, 768) if model == "vit-l-14" else cv.tiny_visual()
    return cv.DeepfakeDetector(visual).to(device)


def bench_forward(detector: nn.Module, device: torch.device, batch: int, repeat: int, gemm: float,
                  precision: str) -> dict:
    """evaluate.py's forward (data.predict's autocast) in `precision`."""
    images = torch.randn(batch, 3, 224, 224, device=device)         # [B, 3, 224, 224]
    detector.eval()
    with torch.inference_mode(), autocast(device, precision):
        seconds = timed(lambda: detector(images), device, repeat)
    flops = VIT_L14_FLOPS * batch / seconds
    return {"images_per_s": batch / seconds, "seconds": seconds, "batch_size": batch, "precision": precision,
            "dtype": "bfloat16" if precision == "bf16" else "float32", "tflop_per_s": flops / 1e12,
            "gemm_tflop_per_s": gemm / 1e12, "gemm_fraction": flops / gemm}


def openai_tower(detector: cv.DeepfakeDetector) -> nn.Module | None:
    """The peer: OpenAI's own VisionTransformer (the openai-clip wheel, a test dependency) holding the
    same weights; None when the wheel is not installed. Its file is imported by path: the package's
    __init__ needs pkg_resources, gone from setuptools."""
    import importlib.util
    import sysconfig
    path = Path(sysconfig.get_paths()["purelib"]) / "clip" / "model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    v = detector.visual
    tower = module.VisionTransformer(v.input_resolution, v.conv1.kernel_size[0], v.width, len(v.transformer.resblocks),
                                     v.width // 64, v.proj.shape[1] if v.proj is not None else v.width)
    state = v.state_dict() | ({} if v.proj is not None else {"proj": torch.eye(v.width)})
    tower.load_state_dict(state)
    return tower.to(next(v.parameters()).device)


def peer_forward(detector: cv.DeepfakeDetector, device: torch.device, batch: int, repeat: int,
                 precision: str) -> dict:
    """OpenAI's tower on the same weights and input, under the same autocast (as its users run it)."""
    tower = openai_tower(detector)
    if tower is None:
        return {"error": "openai-clip is not installed (pip install -r requirements-dev.txt)"}
    images = torch.randn(batch, 3, 224, 224, device=device)         # [B, 3, 224, 224]
    with torch.inference_mode(), autocast(device, precision):
        seconds = timed(lambda: tower(images), device, repeat)
    return {"images_per_s": batch / seconds, "seconds": seconds}


def bench_precisions(detector: cv.DeepfakeDetector, device: torch.device, batch: int, repeat: int,
                     precisions: list[str], gemm_side: int) -> dict:
    """For each precision: the GEMM's FLOP/s, our forward as a share of it, and OpenAI's forward on the
    same weights (the ratio holds precision for precision)."""
    out = {}
    for precision in precisions:
        r = bench_forward(detector, device, batch, repeat, gemm_flops(device, gemm_side, precision), precision)
        peer = peer_forward(detector, device, batch, repeat, precision)
        r["peer"] = peer
        if "error" not in peer:
            r["ratio_to_peer"] = r["images_per_s"] / peer["images_per_s"]
        out[precision] = r
    return out


def train_step_seconds(model: str, device: torch.device, batch: int, repeat: int, checkpointing: bool,
                       precision: str = "fp32") -> dict:
    """One training step of train.py with the paper's recipe (its train_step, TrainForward and
    objective: features -> slerp -> head -> CE + uniformity + alignment -> backward -> AdamW), best
    of `repeat`, and the peak memory above the model's own."""
    cfg = train.TrainConfig()
    detector = build(model, device)
    cv.set_trainable(detector, "ln")
    detector.train().visual.transformer.grad_checkpointing = checkpointing
    forward = train.TrainForward(detector, cfg.slerp)
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    images = torch.randn(batch, 3, 224, 224, device=device)                   # [B, 3, 224, 224]
    labels = (torch.arange(batch, device=device) % 5 > 0).long()  # [B], 4 fake : 1 real, as FF++

    def step():  # train.py's own step: its autocast, the loss-is-finite check, AdamW
        train.train_step(forward, optimizer, images, labels, shares=None, generator=train.step_generator(cfg.seed, 0),
                         lr=cfg.lr, cfg=cfg, precision=precision)

    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resident_bytes()
    seconds = timed(step, device, repeat)
    # CUDA: every live tensor, weights included; CPU: the process's peak resident set
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_memory_mb": (peak - base) / 2 ** 20, "peak_memory_total_mb": peak / 2 ** 20,
            "time_shares": time_shares(step, device)}


def time_shares(fn, device: torch.device) -> dict:
    """Where one call's time goes, from torch.profiler: GEMMs (linear layers, forward and backward,
    and the patch-embedding convolution), attention, and everything else (LayerNorm, activations,
    additions, copies, optimizer)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    shares = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if device.type == "cuda" and event.device_type != DeviceType.CPU:
            continue  # a kernel's own row: its time is already in the self device time of the op that launched it
        t = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if event.key in ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution", "aten::cudnn_convolution"):
            shares["gemm"] += t
        elif "scaled_dot_product" in event.key or "flash" in event.key:
            shares["attention"] += t
        else:
            shares["other"] += t
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def train_step_in_process(model: str, device: torch.device, batch: int, repeat: int, checkpointing: bool,
                          precision: str) -> dict:
    """CUDA: in this process, the freed memory of the previous run returned first. A batch that
    does not fit is a result ("error"), not a crash: the checkpointed run may still fit."""
    torch.cuda.empty_cache()
    try:
        return train_step_seconds(model, device, batch, repeat, checkpointing, precision)
    except torch.cuda.OutOfMemoryError:
        return {"error": f"CUDA out of memory at batch {batch}"}
    finally:
        torch.cuda.empty_cache()


def train_step_subprocess(model: str, batch: int, repeat: int, checkpointing: bool, precision: str) -> dict:
    """CPU: a fresh process, since the process's peak resident memory is the only honest peak there
    (freed memory is not returned)."""
    code = (f"import json, torch; from tools import bench; print(json.dumps(bench.train_step_seconds({model!r}, "
            f"torch.device('cpu'), {batch}, {repeat}, {checkpointing}, {precision!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
    if out.returncode != 0:  # its traceback, not only "exit status 1"
        raise BenchError(f"the training step failed in its own process:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_train_step(model: str, device: torch.device, batch: int, repeat: int, forward_seconds: float,
                     precision: str) -> dict:
    """With and without gradient checkpointing; the plain step's figures at the top level."""
    result = {}
    for checkpointing in (False, True):
        if device.type == "cuda":
            r = train_step_in_process(model, device, batch, repeat, checkpointing, precision)
        else:
            r = train_step_subprocess(model, batch, repeat, checkpointing, precision)
        if "error" not in r:
            r = {"images_per_s": batch / r["seconds"], "ratio_to_forward": r["seconds"] / forward_seconds, **r}
        result["checkpointing" if checkpointing else "plain"] = r
    return {"batch_size": batch, "precision": precision, **result["plain"], "checkpointing": result["checkpointing"]}


# ----------------------------------------------------------------------------- data loading

def crop_tree(root: Path, n_images: int) -> list[Video]:
    """A real and a fake video of 8 PNG crops each (256x256, as preprocess.py writes them), their
    frame lists repeated to `n_images` items: a long epoch from a few files."""
    rng = np.random.default_rng(0)
    videos = []
    for label, source in enumerate(("youtube", "Deepfakes")):
        folder = root / source / "000"
        folder.mkdir(parents=True)
        frames = []
        for i in range(8):
            crop = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 3)  # [256, 256, 3]
            cv2.imwrite(str(folder / f"{i}.png"), crop)
            frames.append(folder / f"{i}.png")
        repeats = math.ceil(n_images / (2 * len(frames)))
        videos.append(Video("train", source, "000", label, "", frames=frames * repeats))
    return videos


def per_worker_images_per_s(dataset: data.FrameDataset, n_images: int) -> float:
    """Augmented images/s of one single-threaded worker (PNG decode, augmentations, CLIP transform)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    cv2.setNumThreads(1)
    dataset[0]
    start = time.perf_counter()
    for i in range(n_images):
        dataset[i % len(dataset)]
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return n_images / seconds


def loader_images_per_s(dataset: data.FrameDataset, batch: int, workers: int, pin_memory: bool) -> float:
    """Images/s out of train.py's DataLoader. Worker i delivers batches i, i + workers, ...; the
    first round (one batch per worker) carries the workers' start-up, so the clock starts when it
    is complete and counts the rounds after it."""
    sampler = data.make_sampler(dataset, shuffle=True, seed=0)
    loader = data.make_loader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, seed=0,
                              pin_memory=pin_memory)
    arrivals = []
    for images, _, _ in loader:                                   # images: [batch, 3, 224, 224]
        arrivals.append((time.perf_counter(), len(images)))
    first = max(workers, 1) - 1
    seconds = arrivals[-1][0] - arrivals[first][0]
    return sum(n for _, n in arrivals[first + 1:]) / seconds


def bench_data(n_images: int | None, batch: int, pin_memory: bool) -> dict:
    """One worker alone, then the loader with train.py's default workers at the training batch
    (smaller when n_images holds fewer than 3 batches per worker, so that 2 rounds are timed)."""
    workers = train.TrainConfig().loader_workers
    n_images = n_images or max(256, 3 * workers * batch)
    loader_batch = max(1, min(batch, n_images // (3 * workers)))
    n_loaded = max(n_images, 3 * workers * loader_batch)  # at least 3 rounds
    with tempfile.TemporaryDirectory() as tmp:
        dataset = data.FrameDataset(crop_tree(Path(tmp), n_loaded), data.train_transform(), seed=0)
        one = per_worker_images_per_s(dataset, min(n_images, 64))
        loaded = loader_images_per_s(dataset, loader_batch, workers, pin_memory)
    return {"images_per_s_per_worker": one, "workers": workers, "loader_batch_size": loader_batch,
            "loader_images": len(dataset), "loader_images_per_s": loaded,
            "loader_images_per_s_per_worker": loaded / workers}


# ----------------------------------------------------------------------------- preprocessing

def synthetic_720p_video(path: Path, n_frames: int, zooms: tuple[float, ...] = (1.7,), phase: int = 0) -> Path:
    """scikit-image's astronaut photo (a real face) moving and zooming inside 1280x720 frames.
    zoom 1.7: a dlib face box of ~155-175 px, as in FF++'s 720p videos; 0.75: ~70 px. `phase`
    moves and turns each video of a dataset differently. A second zoom adds a second person's head,
    500 px to the right of the first."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        raise BenchError("the preprocessing benchmark needs scikit-image (`pip install scikit-image`) for its "
                         "synthetic videos; pass --parts without preprocess to skip it") from None
    face = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)                   # [512, 512, 3]
    head = np.zeros(face.shape[:2], np.uint8)
    head[20:230, 120:320] = 255                                                        # the head, no suit
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (1280, 720))
    for i in range(n_frames):  # (240, 130), near the face, lands at the frame's centre, at any zoom
        frame = None
        for person, zoom in enumerate(zooms):
            m = cv2.getRotationMatrix2D((240, 130), 4 * np.sin(i / 5 + phase + person), zoom * (1 + 0.12 * i / n_frames))
            m[:, 2] += (400 + 4 * i + 40 * phase + 500 * person - 260 * (len(zooms) - 1), 230)
            drawn = cv2.warpAffine(face, m, (1280, 720), borderMode=cv2.BORDER_REPLICATE)  # [720, 1280, 3]
            if frame is None:
                frame = drawn
            else:
                keep = cv2.warpAffine(head, m, (1280, 720)) > 127                     # [720, 1280]
                frame[keep] = drawn[keep]
        writer.write(frame)
    writer.release()
    return path


def bench_preprocess(video: Path | None, n_frames: int) -> dict:
    """preprocess.py's pipeline and the reference procedure in this process, on the frames of one
    video: frames/s and the keypoints found again in both crops."""
    import preprocess as pp
    cv2.setNumThreads(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = pp.load_face_models()
    with tempfile.TemporaryDirectory() as tmp:
        video = video or synthetic_720p_video(Path(tmp) / "bench_720p.mp4", n_frames)
        indices, frames = pp.read_frames(video, n_frames)
    start = time.perf_counter()
    people = pp.face_tracks(frames, indices, models)
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = [pp.reference_crop(frame, models) for frame in frames]
    reference_seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    ours = {c.frame: c.image for c in (people[0] if people else [])}
    distances = []
    for index, ref in zip(indices, reference):
        if ref is None or index not in ours:
            continue
        a, b = (_keypoints_in_crop(image, models) for image in (ours[index], ref.image))
        if a is not None and b is not None:
            distances.append(float(np.linalg.norm(a - b, axis=1).mean()))
    return {"frames": len(frames), "frame_size": list(frames[0].shape[:2]),
            "frames_per_s": len(frames) / fast_seconds, "reference_frames_per_s": len(frames) / reference_seconds,
            "speedup": reference_seconds / fast_seconds, "frames_compared": len(distances),
            "keypoint_px": statistics.fmean(distances) if distances else None}


def largest_face(image: np.ndarray, models):
    """The largest dlib face box in `image` (upsample 1, as the reference), or None."""
    rects = models.detector(image, 1)
    return max(rects, key=lambda r: r.width() * r.height()) if len(rects) else None


def _keypoints_in_crop(image: np.ndarray, models) -> np.ndarray | None:
    import preprocess as pp
    face = largest_face(image, models)
    if face is None:
        return None
    return pp.landmarks5(image, (face.left(), face.top(), face.right(), face.bottom()), models)


def face_box_px(video: Path) -> int | None:
    """Width of the largest dlib face box in the video's first frame."""
    import preprocess as pp
    _, frames = pp.read_frames(video, 1)
    face = largest_face(frames[0], pp.load_face_models())
    return None if face is None else face.width()


def preprocess_run(root: Path, out: Path, n_frames: int, reference: bool) -> float:
    """Seconds of one whole `python preprocess.py` run, start-up included, on one worker."""
    command = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(root), "--out", str(out),
               "--workers", "1", "--frames", str(n_frames)] + (["--reference"] if reference else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"`{' '.join(command)}` failed ({done.returncode}): {tail[0]}")
    return seconds


def preprocess_case(zooms: tuple[float, ...], n_videos: int, n_frames: int, repeat: int) -> dict:
    """preprocess.py against --reference on a `folder` dataset <root>/real/<name>.mp4 of `n_videos`
    synthetic 720p videos; each run writes into its own fresh folder (a done video is skipped).
    preprocess.py's run takes seconds, and a shared machine's speed drifts by tens of percent over
    minutes: its `repeat` runs are split before and after the reference's one, and their median
    is quoted (all in `runs_seconds`)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        (root / "real").mkdir(parents=True)
        videos = [synthetic_720p_video(root / "real" / f"v{k}.mp4", n_frames, zooms, k) for k in range(n_videos)]
        runs = [preprocess_run(root, Path(tmp) / f"fast{i}", n_frames, reference=False) for i in range((repeat + 1) // 2)]
        reference_seconds = preprocess_run(root, Path(tmp) / "reference", n_frames, reference=True)
        runs += [preprocess_run(root, Path(tmp) / f"fast{i}", n_frames, reference=False) for i in range(len(runs), repeat)]
        seconds = statistics.median(runs)
        crops = [len(list((Path(tmp) / name).rglob("*.png"))) for name in ("fast0", "reference")]
        people = [json.loads(p.read_text())["n_people"] for p in sorted((Path(tmp) / "fast0").rglob("meta.json"))]
        face_px = face_box_px(videos[0])
    frames = n_videos * n_frames
    return {"videos": n_videos, "frames": frames, "face_px": face_px, "seconds": seconds, "runs_seconds": runs,
            "frames_per_s": frames / seconds, "crops": crops[0], "people": people, "reference_seconds": reference_seconds,
            "reference_frames_per_s": frames / reference_seconds, "reference_crops": crops[1],
            "speedup": reference_seconds / seconds}


# ----------------------------------------------------------------------------- any video: evaluate.py --video

def video_checkpoint(folder: Path, model: str) -> Path:
    """A checkpoint in train.py's format on a random tower (the figures are speeds, not scores): for
    ViT-L/14 its weights are written as the plain state dict the checkpoint names as its CLIP."""
    detector = build(model, torch.device("cpu"))
    cv.set_trainable(detector, "ln")
    clip = "tiny"
    if model == "vit-l-14":
        clip = str(folder / "vit-l-14.pt")
        torch.save({"visual." + k: v for k, v in detector.visual.state_dict().items()}, clip)
    checkpoint.save_checkpoint(folder / "best.pt", detector, {"clip": clip, "normalize": True})
    return folder / "best.pt"


def video_run(video: Path, ckpt: Path, n_frames: int, precision: str, report: Path | None) -> float:
    """Seconds of one whole `python evaluate.py --video` run on the CPU, start-up included."""
    command = [sys.executable, "evaluate.py", "--video", str(video), "--checkpoint", str(ckpt), "--device", "cpu",
               "--frames", str(n_frames), "--precision", precision] + (["--report", str(report)] if report else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"`{' '.join(command)}` failed ({done.returncode}): {tail[0]}")
    return time.perf_counter() - start


def bench_video(model: str, n_frames: int, precision: str) -> dict:
    """evaluate.py --video on a synthetic 720p clip: fp32, bf16, and with --report (saliency maps and
    the report folder) in the run's precision."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = synthetic_720p_video(tmp / "clip.mp4", n_frames, (2.0,))
        ckpt = video_checkpoint(tmp, model)
        seconds = {p: video_run(video, ckpt, n_frames, p, None) for p in ("fp32", "bf16")}
        seconds["report"] = video_run(video, ckpt, n_frames, precision, tmp / "report")
    return {"frames": n_frames, "model": model, "seconds": seconds, "report_precision": precision,
            "bf16_speedup": seconds["fp32"] / seconds["bf16"], "report_cost": seconds["report"] / seconds[precision]}


def video_rows(v: dict) -> list[str]:
    s = v["seconds"]
    return [f"| `evaluate.py --video`, {v['frames']}-frame 720p clip ({v['model']}) | fp32 {s['fp32']:.1f} s, bf16 "
            f"{s['bf16']:.1f} s (**{v['bf16_speedup']:.2f}x**); with `--report` ({v['report_precision']}) "
            f"{s['report']:.1f} s ({v['report_cost']:.2f}x) |"]


# ----------------------------------------------------------------------------- bottleneck, recipe

def paper_step(step: dict) -> dict:
    """The step the paper's recipe runs (no checkpointing), or the checkpointed one when the plain
    step did not fit in memory."""
    return step["checkpointing"] if "error" in step else step


def bottleneck(results: dict, device: torch.device) -> dict:
    """Loader images/s against training-step images/s; when the loader is slower, the workers it
    would need at its measured per-worker rate."""
    step_ips = paper_step(results["train_step"]).get("images_per_s")
    d = results["data"]
    if step_ips is None:
        return {"limited_by": None, "verdict": "no training step fitted in memory"}
    compute = "gpu" if device.type == "cuda" else "cpu"
    if d["loader_images_per_s"] >= step_ips:
        return {"limited_by": compute, "workers_needed": None,
                "verdict": f"{compute.upper()}: the training step takes {step_ips:.3g} images/s, the loader "
                           f"gives {d['loader_images_per_s']:.0f} with {d['workers']} workers"}
    per_worker = d["loader_images_per_s_per_worker"]
    needed, cpus = math.ceil(step_ips / per_worker), os.cpu_count() or 1
    verdict = (f"loader: {d['loader_images_per_s']:.0f} images/s with {d['workers']} workers < the training step's "
               f"{step_ips:.3g}; it needs ~{needed} workers at {per_worker:.3g} images/s each")
    if needed > cpus:
        verdict += f" (more than the {cpus} CPUs here)"
    return {"limited_by": "loader", "workers_needed": needed, "verdict": verdict}


def recipe(results: dict, model: str) -> dict | None:
    """The paper's whole training (TrainConfig: 10 epochs of FF++ c23's 720 train videos x 5 sources
    x 32 frames) at the measured rate: the slower of the training step and (when measured) the loader."""
    cfg = train.TrainConfig()
    step_ips = paper_step(results["train_step"]).get("images_per_s")
    if step_ips is None:
        return None
    ips, limited_by = step_ips, "train_step"
    if "data" in results and results["data"]["loader_images_per_s"] < step_ips:
        ips, limited_by = results["data"]["loader_images_per_s"], "loader"
    frames = FFPP_TRAIN_VIDEOS * len(cfg.sources) * cfg.frames
    return {"model": model, "epochs": cfg.epochs, "frames_per_epoch": frames, "images_per_s": ips,
            "limited_by": limited_by, "minutes": cfg.epochs * frames / ips / 60}


# ----------------------------------------------------------------------------- report

def device_info(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        name = models[0] if models else name
    return f"{name} x{os.cpu_count()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def step_row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {r['error']} |"
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["time_shares"].items())
    return (f"| {name} | {r['images_per_s']:.2f} images/s, {r['ratio_to_forward']:.2f}x the forward's time, "
            f"peak {r['peak_memory_mb']:.0f} MB above the model ({r['peak_memory_total_mb']:.0f} MB in all); "
            f"time: {shares} |")


def preprocess_rows(p: dict) -> list[str]:
    px = "n/a" if p["keypoint_px"] is None else f"{p['keypoint_px']:.2f} px"
    rows = [f"| preprocess ({p['frame_size'][1]}x{p['frame_size'][0]}, 1 core) | {p['frames_per_s']:.1f} frames/s vs "
            f"reference {p['reference_frames_per_s']:.1f} ({p['speedup']:.1f}x), keypoints {px} |"]
    for name in FACE_ZOOMS:
        c = p[name]
        face = f"~{c['face_px']} px" if c["face_px"] else "no face found"
        what = f"{name.replace('_', ' ')} ({face}), {c['videos']} x {c['frames'] // c['videos']}-frame videos"
        ours = f"{c['frames_per_s']:.1f} frames/s ({c['seconds']:.1f} s, {c['crops']} crops)"
        ref = f"{c['reference_frames_per_s']:.1f} ({c['reference_seconds']:.1f} s, {c['reference_crops']} crops)"
        rows.append(f"| preprocess.py runs, {what} | {ours} vs --reference {ref}: {c['speedup']:.1f}x |")
    return rows


def table(results: dict) -> str:
    rows = ["| part | figure |", "|---|---|"]
    for f in results.get("precisions", {}).values():
        peer = f["peer"].get("error") or (f"OpenAI's tower {f['peer']['images_per_s']:.2f} images/s: "
                                          f"**{f['ratio_to_peer']:.2f}x**")
        rows.append(f"| forward ({f['precision']}, batch {f['batch_size']}) | {f['images_per_s']:.2f} images/s, "
                    f"{f['tflop_per_s']:.3f} TFLOP/s = {100 * f['gemm_fraction']:.0f}% of a {f['precision']} GEMM's "
                    f"{f['gemm_tflop_per_s']:.3f} TFLOP/s; {peer} |")
    if v := results.get("video"):
        rows += video_rows(v)
    if t := results.get("train_step"):
        rows.append(step_row(f"train step (batch {t['batch_size']})", t))
        rows.append(step_row("train step, checkpointing", t["checkpointing"]))
    if d := results.get("data"):
        rows.append(f"| data loading | {d['images_per_s_per_worker']:.0f} augmented images/s from one worker; "
                    f"train.py's loader, {d['workers']} workers: {d['loader_images_per_s']:.0f} images/s |")
    if b := results.get("bottleneck"):
        rows.append(f"| bottleneck | {b['verdict']} |")
    if r := results.get("recipe"):
        rows.append(f"| paper recipe ({r['model']}, {r['epochs']} epochs x {r['frames_per_epoch']:,} frames) | "
                    f"{results['recipe_minutes']:,.0f} min at {r['images_per_s']:.3g} images/s ({r['limited_by']}) |")
    if p := results.get("preprocess"):
        rows += preprocess_rows(p)
    return "\n".join(rows)


# ----------------------------------------------------------------------------- command line

def device_arg(text: str) -> torch.device:
    """train.py's --device check (valid and present), as a torch.device with an explicit index (the
    memory counters and the card's name need one)."""
    return resolve_device(device_flag(text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # a one-line usage: a wrong flag gives two short lines, not a screenful
    usage = "%(prog)s [--device auto|cpu|cuda[:N]] [--parts LIST] [options] (--help: all)"
    parser = argparse.ArgumentParser(usage=usage, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_arg, default="auto",
                        help="auto (cuda when there is a GPU), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=at_least(int, 1), default=None,
                        help=f"default {train.TrainConfig().batch_size} (the paper's) on CUDA, 8 on CPU")
    parser.add_argument("--repeat", type=at_least(int, 1), default=None,
                        help="timed repetitions (default 2 on CPU, 10 on CUDA; whole preprocess.py runs: "
                             "4, around the reference's, the median quoted)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on CUDA and on a CPU with native bf16, else fp32 (the forward part "
                             "times fp32 and bf16 on the CPU either way)")
    parser.add_argument("--model", choices=("vit-l-14", "tiny"), default="vit-l-14",
                        help="tiny: only to test this script")
    parser.add_argument("--video", type=Path, default=None, help="720p video for the keypoint comparison "
                        "(default: a synthetic one from scikit-image's astronaut photo)")
    parser.add_argument("--frames", type=at_least(int, 1), default=32,
                        help="frames per video in the preprocessing part")
    parser.add_argument("--preprocess-videos", type=at_least(int, 1), default=3,
                        help="videos per whole preprocess.py run (small and typical faces)")
    parser.add_argument("--data-images", type=at_least(int, 1), default=None,
                        help="images through the loader (default: 256, or 3 batches per worker if more)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if unknown := set(args.parts.split(",")) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        raise SystemExit(f"bench: {e}") from None


def run(args: argparse.Namespace) -> dict:
    parts, device = args.parts.split(","), args.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    batch = args.batch_size or (train.TrainConfig().batch_size if cuda else 8)
    repeat = args.repeat or (10 if cuda else 2)
    results = {"device": device_info(device), "batch_size": batch}

    def stage(name: str) -> None:  # a CPU run takes minutes: say what is running
        print(f"bench: {name} ...", file=sys.stderr, flush=True)

    precision, why = resolve_precision(args.precision, device)
    results["precision"] = f"{precision} ({why})"
    print(f"bench: precision {results['precision']}", file=sys.stderr, flush=True)
    if "forward" in parts or "train_step" in parts:
        # on the CPU both precisions side by side: which one pays depends on the processor
        both = [precision] if cuda else ["fp32", "bf16"]
        stage(f"forward, {args.model}, batch {batch}, {' and '.join(both)}, ours and OpenAI's")
        detector = build(args.model, device)
        # a 4096 fp32 GEMM takes ~0.7 s on a small CPU: the tiny model (only a test) times a smaller one
        side = 8192 if cuda else 4096 if args.model == "vit-l-14" else 1024
        results["precisions"] = bench_precisions(detector, device, batch, repeat, both, side)
        results["forward"] = results["precisions"][precision]
        if "train_step" in parts:
            del detector
            stage("training step, without and with gradient checkpointing")
            results["train_step"] = bench_train_step(args.model, device, batch, repeat, results["forward"]["seconds"],
                                                     precision)
        if "forward" not in parts:
            del results["forward"], results["precisions"]
    if "data" in parts:
        stage("data loading")
        results["data"] = bench_data(args.data_images, batch, pin_memory=cuda)
    if "train_step" in results and "data" in results:
        results["bottleneck"] = bottleneck(results, device)
    if "train_step" in results and (plan := recipe(results, args.model)):
        results["recipe"], results["recipe_minutes"] = plan, plan["minutes"]
    if "video" in parts:
        stage(f"evaluate.py --video, {args.frames}-frame 720p clip, fp32, bf16 and --report")
        results["video"] = bench_video(args.model, args.frames, precision)
    if "preprocess" in parts:
        stage("preprocessing and the reference procedure")
        results["preprocess"] = bench_preprocess(args.video, args.frames)
        stage(f"whole preprocess.py runs, {', '.join(FACE_ZOOMS)}: {args.preprocess_videos} x {args.frames}-frame videos")
        results["preprocess"] |= {name: preprocess_case(zooms, args.preprocess_videos, args.frames, args.repeat or 4)
                                  for name, zooms in FACE_ZOOMS.items()}

    print(f"{results['device']}, precision {results['precision']}\n\n{table(results)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
