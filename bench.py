"""Speed of every stage, against what the hardware can do and against the reference procedures.

    python bench.py                                  # CPU or CUDA, whichever is there
    python bench.py --device cuda --batch-size 64 --json bench.json
    python bench.py --parts forward,train_step       # a subset

Parts (JSON keys):
  forward     ViT-L/14 image tower (random weights), images/s and achieved FLOP/s as a fraction of
              the FLOP/s of one large GEMM measured in the same run (fp32 on CPU, bf16 on CUDA).
  train_step  one LN-tuning step (forward, slerp, losses, backward, AdamW), with and without
              gradient checkpointing: images/s, peak memory, ratio to the inference forward time.
  preprocess  frames/s of preprocess.py's pipeline and of the reference procedure (full-frame HOG
              at upsample 1, largest face, re-detection in the crop) on the same 720p video on one
              core, and the distance between the five keypoints found again in both crops.
  data        augmented training images/s from one data-loading worker.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import clip_vit as cv
import train

VIT_L14_FLOPS = 162.2e9  # one 224x224 image through the ViT-L/14 image tower (2 FLOPs per multiply-add)
PARTS = ("forward", "train_step", "preprocess", "data")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Best wall time of `repeat` calls after `warmup` (the best is the least disturbed)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def autocast(device: torch.device):
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def gemm_flops(device: torch.device, n: int) -> float:
    """FLOP/s of one large square GEMM in the dtype the model runs in: the device's practical peak."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, repeat=5 if device.type == "cpu" else 50)


def build(model: str, device: torch.device) -> cv.DeepfakeDetector:
    torch.manual_seed(0)
    visual = cv.VisionTransformer(224, 14, 1024, 24, 16, 768) if model == "vit-l-14" else cv.tiny_visual()
    return cv.DeepfakeDetector(visual).to(device)


def bench_forward(detector: cv.DeepfakeDetector, device: torch.device, batch: int, repeat: int,
                  gemm: float) -> dict:
    images = torch.randn(batch, 3, 224, 224, device=device)
    detector.eval()
    with torch.inference_mode(), autocast(device):
        seconds = timed(lambda: detector(images), device, repeat)
    flops = VIT_L14_FLOPS * batch / seconds
    return {"images_per_s": batch / seconds, "seconds": seconds, "tflop_per_s": flops / 1e12,
            "gemm_tflop_per_s": gemm / 1e12, "gemm_fraction": flops / gemm}


def train_step_seconds(model: str, device: torch.device, batch: int, repeat: int, checkpointing: bool) -> dict:
    """One training step of train.py with the paper's recipe (its TrainForward and objective:
    features -> slerp -> head -> CE + uniformity + alignment -> backward -> AdamW), best of
    `repeat`, and the peak memory above the model's own."""
    cfg = train.TrainConfig()
    detector = build(model, device)
    cv.enable_ln_tuning(detector)
    detector.train().visual.transformer.grad_checkpointing = checkpointing
    forward = train.TrainForward(detector, cfg.slerp)
    optimizer = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = (torch.arange(batch, device=device) % 5 > 0).long()  # 4 fake : 1 real, as FF++

    def step():
        with autocast(device):
            features, logits = forward(images, labels, train.step_generator(cfg.seed, 0, 0))
        loss, _ = train.objective(features, logits, labels, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resident_bytes()
    seconds = timed(step, device, repeat)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_memory_mb": (peak - base) / 2 ** 20, "time_shares": time_shares(step, device)}


def time_shares(fn, device: torch.device) -> dict:
    """Where one call's time goes, from torch.profiler: GEMMs (linear layers, forward and backward,
    and the patch-embedding convolution), attention, and everything else (LayerNorm, activations,
    additions, copies, optimizer)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    shares = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
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


def bench_train_step(model: str, device: torch.device, batch: int, repeat: int, forward_seconds: float) -> dict:
    """With and without gradient checkpointing. On the CPU each runs in a fresh process, since the
    process's peak resident memory is the only honest peak there (freed memory is not returned)."""
    result = {}
    for checkpointing in (False, True):
        if device.type == "cuda":
            r = train_step_seconds(model, device, batch, repeat, checkpointing)
        else:
            code = (f"import bench, json, torch; print(json.dumps(bench.train_step_seconds({model!r}, "
                    f"torch.device('cpu'), {batch}, {repeat}, {checkpointing})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).parent)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        result["checkpointing" if checkpointing else "plain"] = {
            "images_per_s": batch / r["seconds"], "seconds": r["seconds"],
            "ratio_to_forward": r["seconds"] / forward_seconds, "peak_memory_mb": r["peak_memory_mb"],
            "time_shares": r["time_shares"]}
    return result["plain"] | {"checkpointing": result["checkpointing"]}


def synthetic_720p_video(path: Path, n_frames: int = 32) -> Path:
    """scikit-image's astronaut photo (a real face) moving and zooming inside 1280x720 frames."""
    import cv2
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("the preprocessing benchmark needs a 720p video with a face: pass --video PATH, "
                         "or `pip install scikit-image` for the synthetic one") from None
    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)                   # [512, 512, 3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (1280, 720))
    for i in range(n_frames):  # the face is ~230 px tall, as in FF++'s 720p videos
        m = cv2.getRotationMatrix2D((240, 130), 4 * np.sin(i / 5), 1.7 + 0.2 * i / n_frames)
        m[:, 2] += (400 + 4 * i, 230)
        writer.write(cv2.warpAffine(face, m, (1280, 720), borderMode=cv2.BORDER_REPLICATE))
    writer.release()
    return path


def bench_preprocess(video: Path | None, n_frames: int) -> dict:
    import cv2
    import preprocess as pp
    cv2.setNumThreads(1)
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


def _keypoints_in_crop(image: np.ndarray, models) -> np.ndarray | None:
    import preprocess as pp
    rects = models.detector(image, 1)
    if len(rects) == 0:
        return None
    largest = max(rects, key=lambda r: r.width() * r.height())
    return pp.landmarks5(image, (largest.left(), largest.top(), largest.right(), largest.bottom()), models)


def bench_data(n_images: int) -> dict:
    """Augmented training images/s of one worker: PNG decode, the paper's augmentations, CLIP transform."""
    import cv2
    import data
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames = []
        for i in range(8):
            crop = cv2.GaussianBlur(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
            cv2.imwrite(str(folder / f"{i}.png"), crop)
            frames.append(folder / f"{i}.png")
        dataset = data.FrameDataset([data.Video("v", "youtube", 0, folder, frames)], data.train_transform(), seed=0)
        dataset[0]
        start = time.perf_counter()
        for i in range(n_images):
            dataset[i % len(dataset)]
        seconds = time.perf_counter() - start
    return {"images_per_s_per_worker": n_images / seconds}


def device_info(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        name = models[0] if models else name
    return f"{name} x{os.cpu_count()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def table(results: dict) -> str:
    rows = ["| part | figure |", "|---|---|"]
    if f := results.get("forward"):
        rows.append(f"| forward (batch {results['batch_size']}) | {f['images_per_s']:.2f} images/s, "
                    f"{f['tflop_per_s']:.3f} TFLOP/s = {100 * f['gemm_fraction']:.0f}% of GEMM ({f['gemm_tflop_per_s']:.3f} TFLOP/s) |")
    if t := results.get("train_step"):
        for name, r in (("train step", t), ("train step, checkpointing", t["checkpointing"])):
            shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["time_shares"].items())
            rows.append(f"| {name} | {r['images_per_s']:.2f} images/s, {r['ratio_to_forward']:.2f}x the forward, "
                        f"peak {r['peak_memory_mb']:.0f} MB; time: {shares} |")
    if p := results.get("preprocess"):
        px = "n/a" if p["keypoint_px"] is None else f"{p['keypoint_px']:.2f} px"
        rows.append(f"| preprocess ({p['frame_size'][1]}x{p['frame_size'][0]}, 1 core) | {p['frames_per_s']:.1f} frames/s vs "
                    f"reference {p['reference_frames_per_s']:.1f} ({p['speedup']:.1f}x), keypoints {px} |")
    if d := results.get("data"):
        rows.append(f"| data loading | {d['images_per_s_per_worker']:.0f} augmented images/s per worker |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 64 on CUDA")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 2 on CPU, 10 on CUDA)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--model", choices=("vit-l-14", "tiny"), default="vit-l-14", help="tiny: only to test this script")
    parser.add_argument("--video", type=Path, default=None, help="720p video for the preprocessing part "
                        "(default: a synthetic one from scikit-image's astronaut photo)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--data-images", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (64 if cuda else 8)
    repeat = args.repeat or (10 if cuda else 2)
    results = {"device": device_info(device), "batch_size": batch}

    def stage(name: str) -> None:  # a CPU run takes minutes: say what is running
        print(f"bench: {name} ...", file=sys.stderr, flush=True)

    if "forward" in parts or "train_step" in parts:
        stage(f"forward, {args.model}, batch {batch}")
        detector = build(args.model, device)
        gemm = gemm_flops(device, 8192 if cuda else 4096)
        results["forward"] = bench_forward(detector, device, batch, repeat, gemm)
        if "train_step" in parts:
            del detector
            stage("training step, without and with gradient checkpointing")
            results["train_step"] = bench_train_step(args.model, device, batch, repeat, results["forward"]["seconds"])
        if "forward" not in parts:
            del results["forward"]
    if "data" in parts:
        stage("data loading")
        results["data"] = bench_data(args.data_images)
    if "preprocess" in parts:
        stage("preprocessing and the reference procedure")
        results["preprocess"] = bench_preprocess(args.video, args.frames)

    print(f"{results['device']}\n\n{table(results)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
