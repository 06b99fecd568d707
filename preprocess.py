"""Face preprocessing: benchmark videos -> aligned 256x256 face crops, by the protocol
the paper's numbers were made with.

    python preprocess.py                                  # every dataset found under datasets/
    python preprocess.py --dataset ff++ --root datasets/FaceForensics++ --workers 8
    python preprocess.py --dataset ff++ --root datasets/FaceForensics++ --shard 3/16  # 0..15

Output: <out>/<dataset>/<split>/<source>/<video_id>/<frame_index>.png + meta.json per video,
<out>/<dataset>/<split>/index.csv per split, <out>/<dataset>/failures.csv. Shards (--shard K/N,
or a SLURM array task) write into the same tree, their failures to failures.shard-K-of-N.csv;
every run ends by rewriting index.csv and failures.csv for the whole dataset from the disk.

The crop protocol is the reference one (dlib HOG detector, 68-point landmarks, five keypoints,
least-squares similarity transform onto the 5-point template, warpAffine to SxS, re-detection
inside the crop). What differs is only how the face box is found: on a downscaled copy of the
frame first (much faster than upsample 1 on the full frame), then mapped back. The sampled
frames are searched in order and faces are tracked: a face found in one frame is searched in
the next one in a region around its last box (1.5 box sizes on each side), resized so that the
face is ~110 px, above HOG's 80 px window (small faces, ~70 px in 720p, need no full-frame
upsample-1 scan after the first frame); the cheap downscaled search still runs first (once
faces are tracked, in grayscale and at the scale where the smallest of them is 72 px), so a
larger face entering is found (and a smaller tracked face beside it is still searched near its
box), and a frame where a tracked face is not found near its box gets the full search. The
landmarks always run on the full-resolution colour frame, so the crops are the reference crops
(keypoints within 1 px).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import hashlib
import importlib.util
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np
from tqdm import tqdm

try:
    import fcntl  # file locks for shards ending at once (not on Windows)
except ImportError:
    fcntl = None

from util.files import atomic_write, csv_text
from util.layouts import (DATASETS, FAILURE_FIELDS, IMAGE_EXTS, WHERE_TO_GET, LayoutError, Video,
                          default_roots, find_dataset, list_videos, output_name, read_failures,
                          rel_path, write_index)

KEYPOINTS_68 = (37, 44, 30, 49, 55)  # left eye, right eye, nose tip, mouth corners (0-based)
# 5-point template on a 96x112 face (x, y), the one the protocol aligns to
TEMPLATE_96x112 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                            [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float64)
LANDMARKS_REL = "face_recognition_models/models/shape_predictor_68_face_landmarks.dat"
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
Detection = tuple[Box, float]            # box, detector score


# ----------------------------------------------------------------------------- face models

@dataclass
class FaceModels:
    detector: "dlib.fhog_object_detector"
    predictor: "dlib.shape_predictor"
    landmarks: str  # path of the landmark model file


@dataclass
class FaceCrop:
    frame: int                                # frame index in the video (0 for an image)
    image: np.ndarray                         # [S, S, 3] uint8 RGB aligned crop
    box: Box
    keypoints: np.ndarray                     # [5, 2] float, in frame pixels
    score: float                              # detector score
    matrix: np.ndarray                        # [2, 3] float, frame -> crop similarity transform


def default_landmarks_path() -> Path | None:
    """The 68-point model shipped by `face-recognition-models`, found by path (importing the
    package fails on recent setuptools because it imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    roots = list(spec.submodule_search_locations or []) if spec else []
    roots = [str(Path(r).parent) for r in roots] + sys.path
    for root in roots:
        path = Path(root) / LANDMARKS_REL
        if path.is_file():
            return path
    return None


def frontal_detector() -> "dlib.fhog_object_detector":
    """dlib's HOG face detector. dlib decodes its built-in copy from a compressed string in
    ~0.8 s, paid by every run and every worker; the copy it saves into the user's cache
    (<XDG_CACHE_HOME or ~/.cache>/dlib) loads in ~5 ms. A cache that cannot be read or
    written only costs that time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dlib"
    path = cache / f"frontal_face_detector-{dlib.__version__}.svm"
    if path.is_file():
        with contextlib.suppress(RuntimeError):  # damaged: decoded and saved again below
            return dlib.fhog_object_detector(str(path))
    detector = dlib.get_frontal_face_detector()
    with contextlib.suppress(OSError, RuntimeError), tempfile.TemporaryDirectory() as tmp:
        detector.save(str(Path(tmp) / "detector.svm"))
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (Path(tmp) / "detector.svm").read_bytes())
    return detector


@functools.lru_cache(maxsize=4)
def load_face_models(landmarks: str | None = None) -> FaceModels:
    """dlib HOG face detector + shape predictor (68-point default, or the 81-point file).
    FileNotFoundError when the landmark file is missing, ValueError when it is not one."""
    path = Path(landmarks) if landmarks else default_landmarks_path()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"landmark model not found (expected {landmarks or LANDMARKS_REL}); "
            "install it with `pip install face-recognition-models` or pass --landmarks PATH "
            "(68- or 81-point dlib shape predictor .dat)")
    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot load landmark model {path} (expected a dlib shape "
                         f"predictor .dat, 68 or 81 points): {e}") from None
    # the number of points is only visible on a prediction
    parts = predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
    if parts < 68:
        raise ValueError(f"{path} predicts {parts} landmarks, expected a 68- or "
                         "81-point dlib shape predictor")
    return FaceModels(frontal_detector(), predictor, str(path))


# ----------------------------------------------------------------------------- alignment

def crop_template(size: int = 256, scale: float = 1.3) -> np.ndarray:
    """The five keypoints' target positions in the SxS crop, [5, 2]."""
    t = TEMPLATE_96x112.copy()
    t[:, 0] += 8.0                       # 96x112 -> 112x112
    t *= size / 112.0
    t += size * (scale - 1.0) / 2.0      # margin on each side
    return t / scale                     # shrink back into SxS


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src [N,2] onto dst [N,2]
    (Umeyama 1991, no reflection). Returns the [2, 3] matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)                              # [2, 2]
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    c = np.trace(np.diag(sig) @ sign) / (s ** 2).sum(1).mean()
    t = mu_d - c * rot @ mu_s
    return np.hstack([c * rot, t[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [2, 3] affine matrix to [N, 2] points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(frame: np.ndarray, keypoints: np.ndarray, size: int = 256,
               scale: float = 1.3) -> tuple[np.ndarray, np.ndarray]:
    """Five keypoints [5, 2] -> (crop [S, S, 3], matrix [2, 3])."""
    matrix = similarity_transform(keypoints, crop_template(size, scale))
    crop = cv2.warpAffine(frame, matrix, (size, size))
    return crop, matrix


def _rect(box) -> "dlib.rectangle":
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


def landmarks5(frame: np.ndarray, box, models: FaceModels) -> np.ndarray:
    """The five protocol keypoints [5, 2] of the face in `box` (frame pixels)."""
    shape = models.predictor(frame, _rect(box))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in KEYPOINTS_68], np.float64)


def _box(rect: "dlib.rectangle") -> Box:
    return (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def has_face(crop: np.ndarray, models: FaceModels) -> bool:
    """The reference re-detects a face inside the crop (upsample 1) and drops the frame if
    none. The aligned face fills the crop, so HOG finds it on a 9/16 copy at upsample 0 (one of
    the scales the reference's upsample-1 pyramid scans) in almost every case at a third of the
    cost; only when it does not, the full crop at upsample 0 and then upsample 1 decide, as in
    the reference."""
    side = crop.shape[0] * 9 // 16
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)  # [S*9/16, S*9/16, 3]
    return bool(len(models.detector(small, 0)) or len(models.detector(crop, 0))
                or len(models.detector(crop, 1)))


def reference_crop(frame: np.ndarray, models: FaceModels, size: int = 256,
                   scale: float = 1.3) -> FaceCrop | None:
    """The protocol as published: HOG upsample 1 on the full frame, the largest face, its
    landmarks, alignment, and re-detection (upsample 1) inside the crop; None if no face."""
    rects, scores, _ = models.detector.run(frame, 1, 0.0)
    if len(rects) == 0:
        return None
    i = max(range(len(rects)), key=lambda j: rects[j].width() * rects[j].height())
    box = _box(rects[i])
    keypoints = landmarks5(frame, box, models)
    crop, matrix = align_face(frame, keypoints, size, scale)
    if len(models.detector(crop, 1)) == 0:
        return None
    return FaceCrop(0, crop, box, keypoints, float(scores[i]), matrix)


REGION_FACE_PX = 110  # a tracked face's region is resized so the face is this wide (HOG: 80)
REGION_MARGIN = 1.5   # box sizes added on each side of a tracked face's last box
CHEAP_FACE_PX = 72    # the smallest tracked face's width in the cheap check (HOG finds >= ~60 px)


def _hog(models: FaceModels, image: np.ndarray, upsample: int, factor: float = 1.0,
         origin: tuple[int, int] = (0, 0)) -> list[Detection]:
    """HOG detections on `image`, a copy of the frame (from `origin`) resized by `factor`,
    as boxes in frame pixels."""
    rects, scores, _ = models.detector.run(image, upsample, 0.0)
    return [((r.left() / factor + origin[0], r.top() / factor + origin[1],
              r.right() / factor + origin[0], r.bottom() / factor + origin[1]), float(s))
            for r, s in zip(rects, scores)]


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    inter = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                      interpolation=inter)


def search_near(frame: np.ndarray, box: Box, models: FaceModels) -> list[Detection]:
    """Faces in the region around a tracked face's last box (REGION_MARGIN box sizes on each
    side, clipped to the frame), resized so that a face of that box's size is REGION_FACE_PX
    wide: comfortably above HOG's 80 px window at upsample 0, whatever the face's size."""
    h, w = frame.shape[:2]
    side = max(_area(box) ** 0.5, 1.0)
    pad = REGION_MARGIN * side
    x0, y0 = max(0, int(box[0] - pad)), max(0, int(box[1] - pad))
    x1, y1 = min(w, int(np.ceil(box[2] + pad))), min(h, int(np.ceil(box[3] + pad)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return []
    factor = REGION_FACE_PX / side
    return _hog(models, _resize(frame[y0:y1, x0:x1], factor), 0, factor, (x0, y0))


def _iou(a, b) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(_area(a) + _area(b) - inter, 1e-9)


def _distinct(found: list[Detection]) -> list[Detection]:
    """Overlapping searches find a face twice: the better-scored box is kept."""
    kept: list[Detection] = []
    for det in sorted(found, key=lambda d: -d[1]):
        if all(_iou(det[0], k[0]) < 0.5 for k in kept):
            kept.append(det)
    return kept


def _search_tracked(frame: np.ndarray, tracked: list[Box], models: FaceModels) -> list[Detection]:
    """Every tracked face searched in its region; [] unless each one is found there (a face
    of similar size, see _link), so that a face that moved away sends the frame to the full
    search."""
    found: list[Detection] = []
    for box in tracked:
        near = search_near(frame, box, models)
        if not any(_link(box, b) < float("inf") for b, _ in near):
            return []
        found += near
    return _distinct(found)


def _add_missed(frame: np.ndarray, found: list[Detection], tracked: list[Box],
                models: FaceModels) -> list[Detection]:
    """`found` (the cheap check's faces) and those found near each tracked face it missed (one
    too small for it, beside a larger one): the faces of a two- or three-person video stay
    tracked in every frame."""
    for box in tracked:
        if all(_link(box, b) > REGION_MARGIN for b, _ in found):
            found = found + search_near(frame, box, models)
    return _distinct(found)


def cheap_check(frame: np.ndarray, f: float, tracked: list[Box]) -> tuple[np.ndarray, float]:
    """The image the search starts with, and its scale: the frame downscaled by `f` (faces
    >= 80 px there). Once faces are tracked, what it must find is those faces again and any
    larger one entering: it is downscaled further, until the smallest tracked face is
    CHEAP_FACE_PX wide, and in grayscale (dlib's HOG takes each pixel's strongest colour
    gradient; one channel costs a fifth less and finds faces as often). A new face smaller than
    every tracked one waits for a frame where tracking loses a face (the full search). An image,
    or a video's first faces, are searched in colour at `f`."""
    if not tracked:
        return (_resize(frame, f) if f < 1.0 else frame), f               # [h*f, w*f, 3]
    f = min(f, CHEAP_FACE_PX / min(max(_area(b) ** 0.5, 1.0) for b in tracked))
    small = _resize(frame, f) if f < 1.0 else frame
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), f                  # [h*f, w*f]


def detect_faces(frame: np.ndarray, models: FaceModels, detect_side: int = 640,
                 tracked: list[Box] | None = None) -> list[Detection]:
    """Face boxes (frame pixels) and scores, from the first search level that finds any: the
    cheap check, a copy downscaled to `detect_side` on its longest side, or further once faces
    are `tracked` (their boxes in an earlier frame), with each tracked face it missed searched
    near its box; when it finds none, the region around each tracked face (search_near); then
    finer scales, the last being the reference's own (full frame, upsample 1)."""
    h, w = frame.shape[:2]
    f = min(1.0, detect_side / max(h, w))
    tracked = tracked or []
    cheap, factor = cheap_check(frame, f, tracked)
    found = _hog(models, cheap, 0, factor)
    if found:
        return _add_missed(frame, found, tracked, models)
    small = cheap  # [h*f, w*f, 3]: without tracking, the cheap check's own colour copy
    if tracked:
        found = _search_tracked(frame, tracked, models)
        if found:
            return found
        small = _resize(frame, f) if f < 1.0 else frame
    levels = [(small, f, 1)]                           # faces >= 40 px on the small copy
    if f < 0.45:
        levels.append((frame, 1.0, 0))                 # big frames (1080p): full size first
    if f < 0.75:
        levels.append((frame, 1.0, 1))                 # the reference's own scale, last
    for image, factor, upsample in levels:
        found = _hog(models, image, upsample, factor)
        if found:
            return found
    return []


def detect_in_frames(frames: list[np.ndarray], models: FaceModels,
                     detect_side: int = 640) -> list[list[Detection]]:
    """detect_faces on each frame in order, the faces last found being tracked: a face seen in
    one sampled frame is searched near its last box in the next, so the full-frame upsample-1
    scan (the reference's whole cost) runs only where tracking has nothing or loses a face."""
    detections: list[list[Detection]] = []
    last: list[Detection] = []
    for frame in frames:
        found = detect_faces(frame, models, detect_side, [box for box, _ in last])
        detections.append(found)
        last = found or last
    return detections


# ----------------------------------------------------------------------------- tracking

def _link(box_a, box_b) -> float:
    """Distance between two boxes' centres in units of the first box's size (inf if the
    sizes differ by more than 2x): small = the same person in a later frame."""
    size_a, size_b = _area(box_a) ** 0.5, _area(box_b) ** 0.5
    if size_a <= 0 or size_b <= 0 or not 0.5 <= size_b / size_a <= 2.0:
        return float("inf")
    ca = np.array([box_a[0] + box_a[2], box_a[1] + box_a[3]]) / 2
    cb = np.array([box_b[0] + box_b[2], box_b[1] + box_b[3]]) / 2
    return float(np.linalg.norm(ca - cb) / size_a)


def link_tracks(detections: list[list[tuple[tuple, float]]],
                max_dist: float = 1.5) -> list[list[tuple[int, tuple, float]]]:
    """Per-frame detections -> tracks [(frame position, box, score), ...]: each detection
    continues the track whose last box is nearest (greedy, largest faces first; at most
    `max_dist` box sizes away) or starts a new one. Tracks are ordered by the sum of their box
    areas (largest, longest person first). Tracks never seen in the same frame are joined:
    a face that jumped further than `max_dist` between two sampled frames (they can be
    seconds apart) is still the one person on screen, as the reference would keep it."""
    tracks: list[list[tuple[int, tuple, float]]] = []
    for pos, dets in enumerate(detections):
        dets = sorted(dets, key=lambda d: -_area(d[0]))
        pairs = sorted((_link(t[-1][1], d[0]), ti, di)
                       for ti, t in enumerate(tracks) for di, d in enumerate(dets))
        used_t, used_d = set(), set()
        for dist, ti, di in pairs:
            if dist > max_dist:
                break
            if ti in used_t or di in used_d:
                continue
            tracks[ti].append((pos, dets[di][0], dets[di][1]))
            used_t.add(ti)
            used_d.add(di)
        tracks += [[(pos, d[0], d[1])] for di, d in enumerate(dets) if di not in used_d]
    by_size = lambda t: -sum(_area(b) for _, b, _ in t)  # noqa: E731
    joined: list[list[tuple[int, tuple, float]]] = []
    for t in sorted(tracks, key=by_size):
        frames = {pos for pos, _, _ in t}
        other = next((j for j in joined if not frames & {pos for pos, _, _ in j}), None)
        if other is None:
            joined.append(t)
        else:
            other += t
            other.sort(key=lambda x: x[0])
    return sorted(joined, key=by_size)


def face_tracks(frames: list[np.ndarray], indices: list[int], models: FaceModels,
                size: int = 256, scale: float = 1.3,
                detect_side: int = 640) -> list[list[FaceCrop]]:
    """Every person found in the frames, one list of crops per person, largest person first.
    A frame whose crop has no face on re-detection is dropped from that person's list."""
    detections = detect_in_frames(frames, models, detect_side)
    people = []
    for track in link_tracks(detections):
        # every frame's landmarks first, then the crops: back to back, the landmark model's
        # trees stay in the CPU caches, which the crop's HOG re-detection evicts (2x faster)
        points = [landmarks5(frames[pos], box, models) for pos, box, _ in track]
        crops = []
        for (pos, box, score), keypoints in zip(track, points):
            crop, matrix = align_face(frames[pos], keypoints, size, scale)
            if has_face(crop, models):
                crops.append(FaceCrop(indices[pos], crop, box, keypoints, score, matrix))
        if crops:
            people.append(crops)
    return people


def mask_overlap(crops: list[FaceCrop], masks: dict[int, np.ndarray]) -> float:
    """Manipulated pixels (mask > 127) inside this person's boxes, summed over frames."""
    total = 0.0
    for c in crops:
        mask = masks.get(c.frame)
        if mask is None:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in c.box)
        total += float((mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] > 127).sum())
    return total


def select_person(people: list[list[FaceCrop]],
                  masks: dict[int, np.ndarray] | None = None) -> int:
    """Index of the person to keep: the one overlapping the manipulation mask most when masks
    are given and overlap anything, else the largest (index 0)."""
    if not people or not masks:
        return 0
    overlaps = [mask_overlap(p, masks) for p in people]
    return int(np.argmax(overlaps)) if max(overlaps) > 0 else 0


# ----------------------------------------------------------------------------- reading

def sample_indices(n: int, n_frames: int | None = 32) -> list[int]:
    """np.linspace(0, n-1, n_frames) as integers; all frames when fewer (or n_frames None)."""
    if n <= 0:
        return []
    if not n_frames or n <= n_frames:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, n_frames).astype(int).tolist()))


def _read_at(path, indices: list[int], gray: bool = False) -> dict[int, np.ndarray]:
    """Frames at the given indices by sequential decoding (grab() skips colour conversion)."""
    wanted, out = set(indices), {}
    cap = cv2.VideoCapture(str(path))
    i = 0
    while wanted and i <= max(wanted) and cap.grab():
        if i in wanted:
            ok, frame = cap.retrieve()
            if ok and frame is not None:
                out[i] = frame
        i += 1
    cap.release()
    conv = cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB
    return {k: cv2.cvtColor(v, conv) for k, v in out.items()}


def read_frames(path, n_frames: int | None = 32) -> tuple[list[int], list[np.ndarray]]:
    """Frame indices np.linspace(0, n-1, n_frames) over the frames that really decode, and those
    frames as RGB [H, W, 3] uint8. An image is one frame with index 0.

    Container frame counts lie (truncated files, variable frame rate), so the count is verified
    by decoding: one sequential pass keeps the frames the container count asks for and counts
    the decodable ones; only when the two counts differ a second pass reads the right frames.
    Raises ValueError when the file cannot be opened or has no decodable frame."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    if path.suffix.lower() in IMAGE_EXTS:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("cannot decode image")
        return [0], [cv2.cvtColor(image, cv2.COLOR_BGR2RGB)]
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError("cannot open video")
    guess = set(sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), n_frames))
    kept, n = {}, 0
    while cap.grab():
        if n in guess:
            ok, frame = cap.retrieve()
            if ok and frame is not None:
                kept[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        n += 1
    cap.release()
    if n == 0:
        raise ValueError("no decodable frame")
    indices = sample_indices(n, n_frames)
    missing = [i for i in indices if i not in kept]
    if missing:
        kept.update(_read_at(path, missing))
    indices = [i for i in indices if i in kept]
    if not indices:
        raise ValueError("no decodable frame")
    return indices, [kept[i] for i in indices]


def extract_faces(path, n_frames: int | None = 32, size: int = 256, scale: float = 1.3,
                  models: FaceModels | None = None,
                  detect_side: int = 640) -> list[list[FaceCrop]]:
    """Video or image file -> every person's crops (largest person first)."""
    models = models or load_face_models()
    indices, frames = read_frames(path, n_frames)
    return face_tracks(frames, indices, models, size, scale, detect_side)


# ----------------------------------------------------------------------------- one video

@dataclass
class Job:
    video: Video
    out_dir: Path          # <out>/<dataset>/<split>/<source>/<video_id>
    root: Path             # dataset root, for relative paths in meta.json
    dataset: str
    n_frames: int
    size: int
    scale: float
    detect_side: int
    reference: bool


@dataclass
class Result:
    job: Job
    status: str            # "done" | "failed"
    reason: str = ""
    n_sampled: int = 0     # frames decoded and searched (for frames/s)


def tmp_dir(out_dir: Path) -> Path:
    """Hidden temporary folder next to the final one; renamed when the video is complete."""
    return out_dir.parent / f".tmp-{out_dir.name}"


def is_finished(out_dir: Path) -> bool:
    """meta.json, written last, marks a finished video folder."""
    return (out_dir / "meta.json").is_file()


def _reference_people(frames, indices, models, size, scale) -> list[list[FaceCrop]]:
    """--reference: the published procedure frame by frame (largest face, no tracking)."""
    crops = []
    for i, frame in zip(indices, frames):
        c = reference_crop(frame, models, size, scale)
        if c is not None:
            c.frame = i
            crops.append(c)
    return [crops] if crops else []


def _masks_at(path: Path, indices: list[int], shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """The manipulation mask video's frames at `indices`, [H, W] uint8 at the video's size."""
    masks = _read_at(path, indices, gray=True)
    return {i: m if m.shape == shape else
            cv2.resize(m, shape[::-1], interpolation=cv2.INTER_NEAREST) for i, m in masks.items()}


def crop_png(crop: FaceCrop) -> bytes:
    """The crop's RGB image as the bytes of a PNG file <frame>.png."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode the crop of frame {crop.frame} as PNG")
    return png.tobytes()


def _save(path: Path, data: bytes) -> None:
    """Write a file in Python (not cv2.imwrite, which reports a full disk only by returning
    False): a failure is an OSError that names the file."""
    try:
        path.write_bytes(data)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def _write_video(out_dir: Path, crops: list[FaceCrop], meta: dict) -> None:
    """Crops, then meta.json (the mark of a finished video) into a temporary folder, renamed to
    `out_dir` only when complete. A failed write (full disk) or an interruption removes the
    temporary folder: nothing is left that a rerun would take as finished."""
    tmp = tmp_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for c in crops:
            _save(tmp / f"{c.frame}.png", crop_png(c))
        _save(tmp / "meta.json", json.dumps(meta).encode())
        if out_dir.exists():  # a folder without meta.json: not finished, replace it
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _meta(job: Job, models: FaceModels, indices: list[int], people: list[list[FaceCrop]],
          chosen: int, masks: dict | None) -> dict:
    """meta.json of a video: where it comes from, the kept person's frames and geometry."""
    v, crops = job.video, people[chosen]
    return {
        "dataset": job.dataset, "split": v.split, "source": v.source, "video_id": v.video_id,
        "label": v.label, "file": rel_path(v.file, job.root),
        "frames": [c.frame for c in crops],
        "boxes": [[round(x, 2) for x in c.box] for c in crops],
        "keypoints": [np.round(c.keypoints, 2).tolist() for c in crops],
        "scores": [round(c.score, 4) for c in crops],
        "matrices": [np.round(c.matrix, 6).tolist() for c in crops],
        "n_frames": len(crops), "n_sampled": len(indices),
        "n_no_face": len(indices) - len(crops), "sampled_frames": indices,
        "n_people": len(people), "person": chosen,
        "mask_used": bool(masks) and mask_overlap(crops, masks) > 0,  # the mask chose
        "size": job.size, "scale": job.scale, "reference": job.reference,
        "landmarks": Path(models.landmarks).name,
    }


def process_video(job: Job, models: FaceModels) -> Result:
    """Decode, find and track faces, keep one person, write crops + meta.json atomically.
    A video that cannot be used is a failed Result; an OSError while writing (full disk) is
    raised, to stop the run rather than mark every later video as failed."""
    v = job.video
    try:
        indices, frames = read_frames(v.file, job.n_frames)
    except Exception as e:  # one bad video must not stop the run
        return Result(job, "failed", f"unreadable: {e}")
    if job.reference:
        people = _reference_people(frames, indices, models, job.size, job.scale)
    else:
        people = face_tracks(frames, indices, models, job.size, job.scale, job.detect_side)
    if not people:
        return Result(job, "failed", f"no face in {len(indices)} sampled frames", len(indices))
    masks = None  # only needed to choose between people
    if v.mask is not None and len(people) > 1:
        masks = _masks_at(v.mask, indices, frames[0].shape[:2])
    chosen = select_person(people, masks)
    _write_video(job.out_dir, people[chosen], _meta(job, models, indices, people, chosen, masks))
    return Result(job, "done", "", len(indices))


# ----------------------------------------------------------------------------- workers

_MODELS: FaceModels | None = None  # per worker process
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent: int) -> None:
    """End this worker when the main process is gone (SIGKILL, the out-of-memory killer, a
    closed SSH session) instead of processing on as an orphan: on Linux the kernel kills it
    (PR_SET_PDEATHSIG); everywhere, a daemon thread also looks for its parent every second
    (it also catches a parent that died before the prctl call)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(landmarks: str | None, parent: int | None = None) -> None:
    """Face models for this process. A pool worker (`parent` = the main process id) also gets
    one OpenCV thread (one process per core already), ends with its parent, and ignores
    SIGTERM: the main process decides (it lets the worker finish its video, then stops it)."""
    global _MODELS
    if parent is not None:
        cv2.setNumThreads(1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _exit_with_parent(parent)
    _MODELS = load_face_models(landmarks)


def _run_job(job: Job) -> Result:
    try:
        return process_video(job, _MODELS)
    except OSError:
        raise  # writing failed (full disk): stop, the video itself is fine
    except Exception as e:
        return Result(job, "failed", f"error: {type(e).__name__}: {e}")


@contextlib.contextmanager
def _results(jobs: list[Job], workers: int, landmarks: str | None):
    """Each job's Result as it finishes, in this process (workers=1) or in a process pool."""
    if workers == 1:
        _init_worker(landmarks)
        yield map(_run_job, jobs)
        return
    # an executor (not multiprocessing.Pool) so that a worker killed by the system (out of
    # memory) stops the run with BrokenProcessPool instead of hanging it; spawn, because a
    # fork after threads were started (tqdm, cv2) can deadlock
    pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(landmarks, os.getpid()))
    try:
        yield _in_flight(pool, jobs, workers)
    finally:  # also after Ctrl-C, SIGTERM, a full disk or a dead worker
        pool.shutdown(cancel_futures=True)  # the workers finish the videos in flight


def _in_flight(pool: ProcessPoolExecutor, jobs: list[Job], n: int):
    """Results as they finish, with only `n` jobs (one per worker) submitted at a time: the
    pool runs whatever reached its queue, so an interruption then waits for one video per
    worker, not for every queued one."""
    todo = iter(jobs)
    pending = {pool.submit(_run_job, j) for j in itertools.islice(todo, n)}
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        pending |= {pool.submit(_run_job, j) for j in itertools.islice(todo, len(finished))}
        for f in finished:
            yield f.result()


# ----------------------------------------------------------------------------- shards

@dataclass(frozen=True)
class Shard:
    """Part k (0..n-1) of n of a dataset's videos. A video's part depends only on its (split,
    source, video id), through a hash that is the same on every machine and Python (not
    hash()), so n jobs anywhere cover each video once and a rerun gets the same videos."""
    k: int = 0
    n: int = 1

    def __post_init__(self):
        if not (self.n >= 1 and 0 <= self.k < self.n):
            raise ValueError(f"shard {self.k}/{self.n}: expected K/N with N >= 1 and K = 0..N-1")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, key: tuple[str, str, str]) -> bool:
        """Whether the video (split, source, video_id) is in this part."""
        if self.n == 1:
            return True
        digest = hashlib.sha1("/".join(key).encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.n == self.k

    @property
    def failures_name(self) -> str:
        """The file this part writes its failed videos to (merged into failures.csv)."""
        return "failures.csv" if self.n == 1 else f"failures.shard-{self.k}-of-{self.n}.csv"


SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
               "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT")


def shard_from_env(env: Mapping[str, str]) -> tuple[Shard, str] | None:
    """The shard of a SLURM array task, or None outside one: k = (task id - min) / step
    (ids may start anywhere, e.g. --array=1-16, or step, --array=0-30:2) of the array's task
    count. ValueError for ids that are not min, min+step, ... (an --array list like 1,4,9)."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    said = " ".join(f"{name}={env[name]}" for name in SLURM_ARRAY if name in env)
    fix = "; pass --shard K/N (K = 0..N-1) to each task instead"
    try:
        task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        count = int(env["SLURM_ARRAY_TASK_COUNT"]) if "SLURM_ARRAY_TASK_COUNT" in env \
            else (int(env["SLURM_ARRAY_TASK_MAX"]) - low) // step + 1
        k, rest = divmod(task - low, step)
        if rest:
            raise ValueError("task id not min + a multiple of the step")
        return Shard(k, count), said
    except (KeyError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"SLURM array variables {said}: no shard of the dataset ({e}){fix}") \
            from None


# ----------------------------------------------------------------------------- bookkeeping

def _select(videos: list[Video], split: str | None, limit: int | None,
            where: str) -> list[Video]:
    """Only `split` (when given); at most `limit` videos per split and source (a quick subset
    for smoke runs)."""
    if split:
        splits = sorted({v.split for v in videos})
        if split not in splits:
            raise LayoutError(f"{where} has no split {split!r}; found: {', '.join(splits)}")
        videos = [v for v in videos if v.split == split]
    if limit:
        count: Counter = Counter()
        kept = []
        for v in videos:
            count[(v.split, v.source)] += 1
            if count[(v.split, v.source)] <= limit:
                kept.append(v)
        videos = kept
    return videos


def _failure_files(ds_dir: Path) -> list[Path]:
    """failures.csv and the shards' failures.shard-K-of-N.csv, oldest first."""
    def mtime(p: Path) -> int:
        with contextlib.suppress(OSError):
            return p.stat().st_mtime_ns
        return -1
    files = [ds_dir / "failures.csv", *ds_dir.glob("failures.shard-*-of-*.csv")]
    return sorted((p for p in files if p.is_file()), key=mtime)


def _known_failures(files: list[Path]) -> dict[tuple[str, str, str], dict]:
    """Every failed video of these files; where one is in several, the newest file's row."""
    failures: dict[tuple[str, str, str], dict] = {}
    for path in files:
        with contextlib.suppress(FileNotFoundError):  # a shard file merged away meanwhile
            failures.update(read_failures(path))
    return failures


def _failures_text(failures: dict) -> str:
    return csv_text(FAILURE_FIELDS, [failures[k] for k in sorted(failures)])


@contextlib.contextmanager
def _dataset_lock(ds_dir: Path):
    """Shards that end at once take turns writing index.csv and failures.csv, so the last one
    writes them whole. Best effort: without file locks (Windows, Lustre without -o flock) the
    files are still written whole, and a run without --shard after the array rewrites them."""
    with open(ds_dir / ".lock", "a") as fh:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # the lock ends with the file


def _write_summary(ds_dir: Path, splits: list[str], merge_shards: bool) -> None:
    """failures.csv from every failure file (the shards' too) less the videos finished since,
    and each split's index.csv from the finished folders on disk. Every shard does this when
    it ends, so the last one writes both for the whole dataset; a run without --shard
    (merge_shards) also folds the shards' files into failures.csv and removes them."""
    with _dataset_lock(ds_dir):
        files = _failure_files(ds_dir)
        failures = {k: r for k, r in _known_failures(files).items()
                    if not is_finished(ds_dir.joinpath(*k))}
        fail_path = ds_dir / "failures.csv"
        if failures or fail_path.exists():
            atomic_write(fail_path, _failures_text(failures))
        if merge_shards:
            for path in files:
                if path != fail_path:
                    path.unlink(missing_ok=True)
        for s in splits:
            if (ds_dir / s).is_dir():
                n = write_index(ds_dir / s)
                print(f"{ds_dir.name}/{s}: {n} videos in {ds_dir / s / 'index.csv'}")


def _process(jobs: list[Job], workers: int, landmarks: str | None, desc: str,
             failures: dict, fail_path: Path) -> tuple[int, int]:
    """Run the jobs under a progress bar (videos, frames/s); a failure is written to
    `fail_path` at once, so that a killed run keeps it. Returns (done, failed)."""
    done = failed = frames = 0
    t0 = time.time()
    with _results(jobs, workers, landmarks) as results, \
            tqdm(total=len(jobs), desc=desc, unit="video", dynamic_ncols=True) as bar:
        for r in results:
            v = r.job.video
            key = (v.split, v.source, v.video_id)
            frames += r.n_sampled
            if r.status == "done":
                done += 1
                failures.pop(key, None)
            else:
                failed += 1
                failures[key] = {"split": v.split, "source": v.source, "video_id": v.video_id,
                                 "file": rel_path(v.file, r.job.root), "reason": r.reason}
                atomic_write(fail_path, _failures_text(failures))
                tqdm.write(f"failed: {v.file}: {r.reason}")
            bar.update(1)
            bar.set_postfix(frames_s=f"{frames / max(time.time() - t0, 1e-9):.1f}",
                            failed=failed)
    return done, failed


def _plan(videos: list[Video], ds_dir: Path, failures: dict,
          retry_failed: bool) -> tuple[list[Video], int, int]:
    """(videos to process, videos finished before, videos that failed before and are not
    retried)."""
    todo, skipped, skipped_failed = [], 0, 0
    for v in videos:
        if is_finished(ds_dir / v.split / v.path):
            skipped += 1
        elif (v.split, v.source, v.video_id) in failures and not retry_failed:
            skipped_failed += 1
        else:
            todo.append(v)
    return todo, skipped, skipped_failed


def run_dataset(dataset: str, root, out="data", split: str | None = None,
                n_frames: int = 32, size: int = 256, scale: float = 1.3,
                workers: int | None = None, landmarks: str | None = None,
                compression: str = "c23", splits_dir: str | None = None,
                detect_side: int = 640, reference: bool = False,
                retry_failed: bool = False, limit: int | None = None,
                shard: Shard = Shard(), videos: list[Video] | None = None) -> dict[str, int]:
    """Process one dataset, or only its part `shard` (see Shard; failures then go to the
    shard's own file); returns counts {"done", "skipped", "failed", "total"} of the videos
    processed here. Ends with index.csv and failures.csv for the whole dataset (_write_summary).
    `limit`: at most that many videos per split and source (a quick subset for smoke runs).
    `videos`: the dataset's list_videos when the caller has it already (find_dataset)."""
    root = Path(root)
    if videos is None:
        videos = list_videos(dataset, root, compression, splits_dir)
    listed = _select(videos, split, limit, f"{dataset} at {root}")
    videos = [v for v in listed if shard.owns((v.split, v.source, v.video_id))]
    name = output_name(dataset, compression)
    ds_dir = Path(out) / name
    ds_dir.mkdir(parents=True, exist_ok=True)
    failures = {k: r for k, r in _known_failures(_failure_files(ds_dir)).items()
                if shard.owns(k)}
    todo, skipped, skipped_failed = _plan(videos, ds_dir, failures, retry_failed)
    jobs = [Job(v, ds_dir / v.split / v.path, root, name, n_frames, size, scale, detect_side,
                reference) for v in todo]
    part = f" (shard {shard}: {len(videos)} of {len(listed)})" if shard.n > 1 else ""
    print(f"{name}: {len(videos)} videos in {root}{part}, {skipped} already done, "
          f"{skipped_failed} failed before (--retry-failed to redo), {len(jobs)} to process")

    if jobs:  # a bad --landmarks file: one clear error here, not a broken pool of workers
        load_face_models(landmarks)
    workers = max(1, min(workers or _cpu_count(), len(jobs) or 1))
    own = ds_dir / shard.failures_name
    done, failed = _process(jobs, workers, landmarks, name, failures, own)
    if shard.n > 1 and (failures or own.exists()):  # retried videos that succeeded leave it
        atomic_write(own, _failures_text(failures))
    _write_summary(ds_dir, sorted({v.split for v in listed}), merge_shards=shard.n == 1)
    fail_path = ds_dir / "failures.csv"
    print(f"{name}: done {done}, skipped {skipped + skipped_failed} "
          f"({skipped_failed} failed before), failed {failed}"
          + (f" -> {fail_path}" if failed or skipped_failed else ""))
    return {"done": done, "skipped": skipped + skipped_failed, "failed": failed,
            "total": len(videos)}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- command line

def _positive(cast):
    """argparse type: a number > 0 (0 or -3 frames would fail every video, later)."""
    def parse(text: str):
        value = cast(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
        return value
    return parse


def _shard_arg(text: str) -> Shard:
    """argparse type for --shard K/N."""
    k, _, n = text.partition("/")
    try:
        return Shard(int(k), int(n))  # no "/": int("") fails too
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected K/N with N >= 1 and K = 0..N-1 (the parts of --shard 0/4 ... 3/4 cover "
            f"a dataset once), got {text}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS,
                   help="dataset to process; omitted: every dataset found under --datasets-dir")
    p.add_argument("--root", help="dataset folder; omitted: its usual folder under datasets/")
    p.add_argument("--out", default="data", help="output folder (data)")
    p.add_argument("--split", help="only this split (e.g. test); omitted: all splits")
    p.add_argument("--frames", type=_positive(int), default=32,
                   help="frames per video at linspace(0, n-1, frames) (32)")
    p.add_argument("--size", type=_positive(int), default=256, help="crop size S (256)")
    p.add_argument("--scale", type=_positive(float), default=1.3, help="margin scale (1.3)")
    p.add_argument("--workers", type=_positive(int), default=_cpu_count(),
                   help="processes, one video each (all cores)")
    p.add_argument("--landmarks", help="dlib shape predictor .dat (68 or 81 points); omitted: "
                                       "the 68-point model of face-recognition-models")
    p.add_argument("--compression", default="c23", choices=["raw", "c23", "c40"],
                   help="FF++/DFD quality (c23)")
    p.add_argument("--splits", help="folder with the FF++ train/val/test.json split files; "
                                    "omitted: looked for under --root")
    p.add_argument("--detect-side", type=_positive(int), default=640,
                   help="longest side of the downscaled copy faces are detected on (640)")
    p.add_argument("--reference", action="store_true",
                   help="reference procedure per frame (full frame, upsample 1, largest face, "
                        "no tracking); slow, for comparisons")
    p.add_argument("--retry-failed", action="store_true",
                   help="process the videos listed in failures.csv again")
    p.add_argument("--limit", type=_positive(int), default=None,
                   help="at most N videos per split and source (a quick subset, e.g. for a "
                        "smoke run)")
    p.add_argument("--shard", type=_shard_arg, metavar="K/N",
                   help="only part K (0..N-1) of N of the videos, so that N jobs (on any "
                        "machines, same --out) cover the dataset once; omitted: from "
                        "SLURM_ARRAY_TASK_ID/_MIN/_COUNT in a SLURM array job, else all "
                        "(= 0/1)")
    p.add_argument("--datasets-dir", default="datasets",
                   help="where to look for datasets when --dataset or --root is omitted "
                        "(datasets)")
    a = p.parse_args(argv)
    if a.root and not a.dataset:
        p.error("--root needs --dataset (which dataset is at that root?)")
    return a


def _report(found: dict[str, tuple[Path | None, list[Video], str]], base: str) -> None:
    """Which datasets the no-argument mode found, and for the others where to get them."""
    for name, (root, _, why) in found.items():
        if root is not None:
            print(f"found   {name:7s} {root}")
        else:
            tried = ", ".join(str(r) for r in default_roots(name, base))
            print(f"missing {name:7s} (looked in {tried}) -> {WHERE_TO_GET[name]}"
                  + (f"\n        not usable: {why}" if why else ""))


def _shard(a: argparse.Namespace) -> Shard:
    """--shard, else the SLURM array task's part (said, since it was not asked for)."""
    if a.shard is not None:
        return a.shard
    found = shard_from_env(os.environ)
    if found is None:
        return Shard()
    shard, said = found
    print(f"shard {shard} (from {said}; --shard 0/1 processes every video)")
    return shard


def _find_root(a: argparse.Namespace) -> tuple[Path, list[Video]]:
    """--dataset without --root: its usual folder, and its videos."""
    root, videos, why = find_dataset(a.dataset, a.datasets_dir, a.compression, a.splits)
    if root is None:
        tried = ", ".join(str(r) for r in default_roots(a.dataset, a.datasets_dir))
        raise LayoutError(f"{a.dataset} not found (looked in {tried}"
                          + (f"; {why}" if why else "") + "); pass --root PATH. "
                          f"Get it: {WHERE_TO_GET[a.dataset]}")
    return root, videos


def _run(a: argparse.Namespace) -> None:
    opts = dict(out=a.out, split=a.split, n_frames=a.frames, size=a.size, scale=a.scale,
                workers=a.workers, landmarks=a.landmarks, compression=a.compression,
                splits_dir=a.splits, detect_side=a.detect_side, reference=a.reference,
                retry_failed=a.retry_failed, limit=a.limit, shard=_shard(a))
    if a.dataset:
        root, videos = (a.root, None) if a.root else _find_root(a)
        run_dataset(a.dataset, root, videos=videos, **opts)
        return
    found = {name: find_dataset(name, a.datasets_dir, a.compression, a.splits)
             for name in DATASETS}
    _report(found, a.datasets_dir)
    if not any(root for root, _, _ in found.values()):
        raise LayoutError(f"no dataset found under {a.datasets_dir}/; put them in the "
                          "folders above or pass --dataset NAME --root PATH")
    for name, (root, videos, _) in found.items():
        if root is not None:
            try:
                run_dataset(name, root, videos=videos, **opts)
            except LayoutError as e:  # --split val where this dataset has none: the others go on
                print(f"skipped {name}: {e}")


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (kill, a scheduler's time limit, scancel) stops the run as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # main() called outside the main thread: SIGTERM stays as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    """The command line; every error ends here as one line and a non-zero exit status."""
    a = parse_args(argv)
    again = "finished videos are kept; run the same command again to continue"
    try:
        with _sigterm_as_ctrl_c():
            _run(a)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the video folders in flight never appear
        raise SystemExit(f"interrupted: {again}") from None
    except BrokenProcessPool as e:
        raise SystemExit(f"error: a worker process died ({e}); {again} "
                         "(with fewer --workers if memory ran out)") from None
    except OSError as e:  # full disk, unwritable --out, unreadable dataset, no landmark model
        if e.errno == errno.ENOSPC:
            raise SystemExit(f"error: no space left on device (writing {e.filename}); free "
                             f"some space: {again}") from None
        raise SystemExit(f"error: {e}") from None
    except ValueError as e:  # LayoutError (dataset, listing file), landmark model, SLURM array
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
