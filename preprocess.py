"""Face preprocessing: benchmark videos -> aligned 256x256 face crops, by the paper's protocol.
32 frames at linspace over the frames that decode, dlib's HOG face detector, 68-point landmarks,
keypoints 37, 44, 30, 49, 55, the least-squares similarity transform onto the 5-point template,
warpAffine to 256 px with margin 1.3, re-detection inside the crop (reference_crop, one frame).
face_tracks finds the same boxes faster (util/face_search.py) and the landmarks on the full frame,
so its crops are the reference's. util/jobs.py runs the videos.
"""
from __future__ import annotations

import argparse
import errno
import functools
import itertools
import json
import math
import os
import sys
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import dlib
import numpy as np

from util import jobs
from util.cli import at_least
from util.face_search import Box, detect_in_frames, frontal_detector, link_tracks
from util.files import png_bytes
from util.layouts import DATASETS, IMAGE_EXTS, LayoutError, Video, find_dataset, list_videos, output_name
from util.signals import StopSignals

# FFmpeg logs a broken file's faults ("moov atom not found") straight to stderr; the failure is
# reported as one line instead. OpenCV reads this once, before its first video in the process.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

# ---------------------------------------------------------------- 1. The protocol

def sample_indices(n: int, n_frames: int | None = 32) -> list[int]:
    """np.linspace(0, n-1, n_frames) as integers; all frames when fewer (or n_frames None)."""
    if not n_frames or n <= n_frames:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, n_frames).astype(int).tolist()))


@dataclass
class FaceModels:
    detector: "dlib.fhog_object_detector"
    predictor: "dlib.shape_predictor"
    landmarks: str  # path of the landmark model file


LANDMARKS_REL = "face_recognition_models/models/shape_predictor_68_face_landmarks.dat"


@functools.lru_cache(maxsize=4)
def load_face_models(landmarks: str | None = None) -> FaceModels:
    """dlib's HOG face detector and shape predictor: --landmarks, or the 68-point model of
    face-recognition-models (found by path: importing that package fails on recent setuptools)."""
    if landmarks is None:
        found = [p for r in sys.path if (p := Path(r) / LANDMARKS_REL).is_file()]
        landmarks = str(found[0]) if found else LANDMARKS_REL
    try:  # a missing file, or not a model: RuntimeError; the number of points shows on a prediction
        predictor = dlib.shape_predictor(landmarks)
        parts = predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
    except RuntimeError:
        parts = 0
    if parts < 68:
        raise ValueError(f"--landmarks {landmarks}: no dlib 68- or 81-point shape predictor there "
                         "(`pip install face-recognition-models` gives the 68-point one)")
    return FaceModels(frontal_detector(), predictor, landmarks)


KEYPOINTS_68 = (37, 44, 30, 49, 55)  # left eye, right eye, nose tip, mouth corners (0-based)


def landmarks5(frame: np.ndarray, box: Box, models: FaceModels) -> np.ndarray:
    """The five protocol keypoints [5, 2] of the face in `box` (frame pixels)."""
    shape = models.predictor(frame, dlib.rectangle(*(int(round(v)) for v in box)))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in KEYPOINTS_68], np.float64)


# 5-point template on a 96x112 face (x, y), the one the protocol aligns to
TEMPLATE_96x112 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                            [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float64)


def crop_template(size: int = 256, scale: float = 1.3) -> np.ndarray:
    """The five keypoints' target positions in the SxS crop, [5, 2]."""
    t = TEMPLATE_96x112.copy()
    t[:, 0] += 8.0                       # 96x112 -> 112x112
    t *= size / 112.0
    t += size * (scale - 1.0) / 2.0      # margin on each side
    return t / scale                     # shrink back into SxS


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares rotation, uniform scale and shift of src [N, 2] onto dst (Umeyama): [2, 3]."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))                     # [2, 2] covariance
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    c = np.trace(np.diag(sig) @ sign) / (s ** 2).sum(1).mean()
    return np.hstack([c * rot, (mu_d - c * rot @ mu_s)[:, None]])


def align_face(frame: np.ndarray, keypoints: np.ndarray, size: int = 256,
               scale: float = 1.3) -> tuple[np.ndarray, np.ndarray]:
    """Five keypoints [5, 2] -> (crop [S, S, 3], matrix [2, 3])."""
    matrix = similarity_transform(keypoints, crop_template(size, scale))
    return cv2.warpAffine(frame, matrix, (size, size)), matrix


def has_face(crop: np.ndarray, models: FaceModels) -> bool:
    """The reference's re-detection in the crop (upsample 1; no face: the frame is dropped). The face
    fills the crop: a 9/16 copy at upsample 0 (a scale of that pyramid) finds it at a third of the cost."""
    side = crop.shape[0] * 9 // 16
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)  # [S*9/16, S*9/16, 3]
    return bool(len(models.detector(small, 0)) or len(models.detector(crop, 0))
                or len(models.detector(crop, 1)))


@dataclass
class FaceCrop:
    frame: int                                # frame index in the video (0 for an image)
    image: np.ndarray                         # [S, S, 3] uint8 RGB aligned crop
    box: Box                                  # x0, y0, x1, y1 in frame pixels
    keypoints: np.ndarray                     # [5, 2] float, in frame pixels
    score: float                              # detector score
    matrix: np.ndarray                        # [2, 3] float, frame -> crop similarity transform


def reference_crop(frame: np.ndarray, models: FaceModels, size: int = 256,
                   scale: float = 1.3) -> FaceCrop | None:
    """The protocol as published: HOG upsample 1 on the full frame, the largest face, its landmarks,
    alignment, and re-detection (upsample 1) inside the crop; None if no face."""
    rects, scores, _ = models.detector.run(frame, 1, 0.0)
    if len(rects) == 0:
        return None
    i = max(range(len(rects)), key=lambda j: rects[j].width() * rects[j].height())
    box = (float(rects[i].left()), float(rects[i].top()), float(rects[i].right()), float(rects[i].bottom()))
    keypoints = landmarks5(frame, box, models)
    crop, matrix = align_face(frame, keypoints, size, scale)
    if len(models.detector(crop, 1)) == 0:
        return None
    return FaceCrop(0, crop, box, keypoints, float(scores[i]), matrix)


# ---------------------------------------------------------------- 2. Frames, and the people in them

def _decode(path: Path, wanted: set[int], to_end: bool = False,
            colour: int = cv2.COLOR_BGR2RGB) -> tuple[dict[int, np.ndarray], int]:
    """The frames at `wanted` by sequential decoding (grab() skips the others' colour conversion),
    and how many frames decoded: up to the last one wanted, or `to_end`."""
    cap = cv2.VideoCapture(str(path))
    kept, n, last = {}, 0, max(wanted, default=-1)
    while (to_end or n <= last) and cap.grab():
        if n in wanted:
            ok, frame = cap.retrieve()
            if ok and frame is not None:
                kept[n] = cv2.cvtColor(frame, colour)
        n += 1
    cap.release()
    return kept, n


def read_frames(path, n_frames: int | None = 32) -> tuple[list[int], list[np.ndarray]]:
    """Indices np.linspace(0, n-1, n_frames) over the n frames that decode, and those frames (RGB
    [H, W, 3] uint8; an image is frame 0). Container counts lie (cut files, variable frame rate):
    a pass keeps what the container's count asks for and counts; where they differ a second pass
    reads the right frames. ValueError when no frame decodes."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTS:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        frames = {0: cv2.cvtColor(image, cv2.COLOR_BGR2RGB)} if image is not None else {}
        n = len(frames)
    else:
        count = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
        frames, n = _decode(path, set(sample_indices(count, n_frames)), to_end=True)
    indices = sample_indices(n, n_frames)
    if set(indices) - set(frames):
        frames.update(_decode(path, set(indices) - set(frames))[0])
    indices = [i for i in indices if i in frames]
    if not indices:
        raise ValueError("no decodable frame (empty, cut short, or not a video or image)")
    return indices, [frames[i] for i in indices]


def face_tracks(frames: list[np.ndarray], indices: list[int], models: FaceModels, size: int = 256,
                scale: float = 1.3, detect_side: int = 640) -> list[list[FaceCrop]]:
    """Each face tracked across the frames, largest first: its crops with a face on re-detection."""
    tracks = []
    for track in link_tracks(detect_in_frames(frames, models.detector, detect_side)):
        # every frame's landmarks first, then the crops: back to back, the landmark model's trees
        # stay in the CPU caches, which the crop's HOG re-detection evicts (2x faster)
        points = [landmarks5(frames[pos], box, models) for pos, box, _ in track]
        crops = []
        for (pos, box, score), keypoints in zip(track, points):
            crop, matrix = align_face(frames[pos], keypoints, size, scale)
            if has_face(crop, models):
                crops.append(FaceCrop(indices[pos], crop, box, keypoints, score, matrix))
        if crops:
            tracks.append(crops)
    return tracks


def persons(tracks: list[list[FaceCrop]], n_frames: int) -> list[list[FaceCrop]]:
    """The tracks that are people (evaluate.py's --video/--input): seen in at least a quarter of the
    `n_frames` frames scanned and in at least 2, with a median detector score at least a quarter of
    the clearest track's. HOG scores faces near 1 and false faces (a badge, a pattern) near 0, and a
    tracked false face is found again near its box: holding alone is not enough. A still image
    (one frame) keeps every face."""
    if n_frames <= 1:
        return tracks
    median = [float(np.median([c.score for c in t])) for t in tracks]
    need, clearest = max(2, math.ceil(n_frames / 4)), max(median, default=0.0)
    return [t for t, m in zip(tracks, median) if len(t) >= need and m >= clearest / 4]


def mask_overlaps(tracks: list[list[FaceCrop]], masks: dict[int, np.ndarray]) -> list[int]:
    """Manipulated pixels (mask > 127) inside each track's boxes, summed over its frames: the
    benchmark keeps the track the manipulation mask covers most (else the largest, the first)."""
    overlaps = []
    for crops in tracks:
        boxes = [(c.frame, *(max(int(round(v)), 0) for v in c.box)) for c in crops if c.frame in masks]
        overlaps.append(sum(int((masks[i][y0:y1, x0:x1] > 127).sum()) for i, x0, y0, x1, y1 in boxes))
    return overlaps


def crop_png(crop: FaceCrop) -> bytes:
    """The crop's RGB image as the bytes of a PNG file <frame>.png."""
    return png_bytes(cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------- 3. One video

def process_video(a: argparse.Namespace, dataset: str, root: Path, v: Video, out_dir: Path,
                  models: FaceModels) -> tuple[str, int]:
    """Decode, find and track faces, keep one person, write its crops and meta.json whole or not at
    all; (why the video cannot be used or "", frames searched). A failed write (full disk) raises."""
    try:
        indices, frames = read_frames(v.file, a.frames)
    except ValueError as e:
        return f"unreadable: {e}", 0
    if a.reference:  # the published procedure frame by frame: the largest face, no tracking
        crops = [replace(c, frame=i) for i, frame in zip(indices, frames)
                 if (c := reference_crop(frame, models, a.size, a.scale)) is not None]
        tracks = [crops] if crops else []
    else:
        tracks = face_tracks(frames, indices, models, a.size, a.scale, a.detect_side)
    if not tracks:
        return f"no face in {len(indices)} sampled frames", len(indices)
    overlaps = [0]  # the mask is only needed to choose between people
    if v.mask is not None and len(tracks) > 1:
        h, w = frames[0].shape[:2]
        masks = _decode(v.mask, set(indices), colour=cv2.COLOR_BGR2GRAY)[0]
        overlaps = mask_overlaps(tracks, {i: cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
                                          for i, m in masks.items()})
    chosen = int(np.argmax(overlaps))  # the first (largest) unless the mask covers another
    crops = tracks[chosen]
    meta = {"dataset": dataset, "split": v.split, "source": v.source, "video_id": v.video_id,
            "label": v.label, "file": str(v.file.relative_to(root)),
            "frames": [c.frame for c in crops],
            "boxes": [[round(x, 2) for x in c.box] for c in crops],
            "keypoints": [np.round(c.keypoints, 2).tolist() for c in crops],
            "scores": [round(c.score, 4) for c in crops],
            "matrices": [np.round(c.matrix, 6).tolist() for c in crops],
            "n_frames": len(crops), "n_sampled": len(indices),
            "n_no_face": len(indices) - len(crops), "sampled_frames": indices,
            "n_people": len(tracks), "person": chosen, "mask_used": overlaps[chosen] > 0,
            "size": a.size, "scale": a.scale, "reference": a.reference,
            "landmarks": Path(models.landmarks).name}
    pngs = ((f"{c.frame}.png", crop_png(c)) for c in crops)  # encoded one at a time, as written
    jobs.write_folder(out_dir, itertools.chain(pngs, [("meta.json", json.dumps(meta).encode())]))
    return "", len(indices)


# ---------------------------------------------------------------- 4. The command line

def parse_args(argv=None) -> argparse.Namespace:
    count, number = at_least(int, 0, above=True), at_least(float, 0, above=True)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS, help="the dataset; omitted: every one under --datasets-dir")
    p.add_argument("--root", help="its folder; omitted: its usual folder under --datasets-dir")
    p.add_argument("--out", default="data", help="output folder (data)")
    p.add_argument("--split", help="only this split (e.g. test); omitted: all splits")
    p.add_argument("--frames", type=count, default=32, help="frames at linspace(0, n-1, frames) (32)")
    p.add_argument("--size", type=count, default=256, help="crop size S (256)")
    p.add_argument("--scale", type=number, default=1.3, help="margin scale (1.3)")
    p.add_argument("--workers", type=count, default=jobs.cpu_count(), help="processes (all cores)")
    p.add_argument("--landmarks", help="a dlib 68/81-point shape predictor .dat (face-recognition-models')")
    p.add_argument("--compression", default="c23", choices=["raw", "c23", "c40"], help="FF++/DFD (c23)")
    p.add_argument("--splits", help="folder of FF++'s train/val/test.json (under --root)")
    p.add_argument("--detect-side", type=count, default=640, help="first search at this longest side (640)")
    p.add_argument("--reference", action="store_true", help="the reference procedure: slow, to compare")
    p.add_argument("--retry-failed", action="store_true", help="process the videos in failures.csv again")
    p.add_argument("--limit", type=count, help="at most N videos per split and source (a quick subset)")
    p.add_argument("--shard", type=jobs.shard_flag, metavar="K/N", help="part K (0..N-1) of N of the videos: "
                   "N jobs on one --out cover the dataset once (default: a SLURM array task's, else 0/1)")
    p.add_argument("--datasets-dir", default="datasets", help="where datasets are looked for (datasets)")
    a = p.parse_args(argv)
    if a.root and not a.dataset:
        p.error("--root needs --dataset")
    return a


def _datasets(a: argparse.Namespace) -> list[tuple[str, Path, list[Video]]]:
    """(name, root, videos) of --dataset at --root or its usual folder, or of every dataset found
    under --datasets-dir (the others listed with where to get them)."""
    if a.root:
        return [(a.dataset, Path(a.root), list_videos(a.dataset, a.root, a.compression, a.splits))]
    if a.dataset:
        return [(a.dataset, *find_dataset(a.dataset, a.datasets_dir, a.compression, a.splits))]
    found = []
    for name in DATASETS:
        try:
            found.append((name, *find_dataset(name, a.datasets_dir, a.compression, a.splits)))
        except LayoutError as e:
            print(f"missing {e}")
    if not found:
        raise LayoutError(f"no dataset found under {a.datasets_dir}/; put them in the folders above "
                          "or pass --dataset NAME --root PATH")
    return found


def _select(videos: list[Video], split: str | None, limit: int | None) -> list[Video]:
    """--split (LayoutError where the dataset has no such split) and at most --limit videos per
    split and source."""
    splits = sorted({v.split for v in videos})
    if split and split not in splits:
        raise LayoutError(f"--split {split}: this dataset's splits are {', '.join(splits)}")
    kept, seen = [], Counter()
    for v in videos:
        if not split or v.split == split:
            seen[(v.split, v.source)] += 1
            if not limit or seen[(v.split, v.source)] <= limit:
                kept.append(v)
    return kept


def _run(a: argparse.Namespace) -> None:
    """Every dataset asked for, through util/jobs.py with process_video per video."""
    load_face_models(a.landmarks)  # a bad --landmarks file: said before anything is listed or written
    shard = jobs.shard_for(a.shard, os.environ)
    setup = functools.partial(load_face_models, a.landmarks)  # once per worker process
    for name, root, videos in _datasets(a):
        try:
            videos = _select(videos, a.split, a.limit)
        except LayoutError as e:
            if a.dataset:
                raise
            print(f"skipped {name}: {e}")  # --split val where this dataset has none: the others go on
            continue
        out_name = output_name(name, a.compression)
        jobs.run_dataset(functools.partial(process_video, a, out_name, root), setup, out_name, root, videos,
                         out=a.out, workers=a.workers, shard=shard, retry_failed=a.retry_failed)


AGAIN = "finished videos are kept; run the same command again to continue"


def main(argv=None) -> int:
    """The command line; every error ends here as one line and exit status 1 (argparse's: 2)."""
    a = parse_args(argv)
    try:
        with StopSignals(defer=False):  # SIGTERM (kill, scancel, a time limit) stops as Ctrl-C does
            _run(a)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the video folders in flight never appear
        raise SystemExit(f"interrupted: {AGAIN}") from None
    except BrokenProcessPool:  # the out-of-memory killer, most often
        raise SystemExit(f"error: a worker died; {AGAIN} (with fewer --workers if memory ran out)") from None
    except (OSError, ValueError) as e:  # a full disk, --out, --landmarks, a dataset's layout, SLURM
        why = f"{e.strerror} ({e.filename})" if getattr(e, "filename", None) else str(e)
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        raise SystemExit(f"error: {why}" + (f"; free some space: {AGAIN}" if full else "")) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
