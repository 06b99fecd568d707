"""Face preprocessing: benchmark videos -> aligned 256x256 face crops, by the protocol
the paper's numbers were made with.

    python preprocess.py                                  # every dataset found under datasets/
    python preprocess.py --dataset ff++ --root datasets/FaceForensics++ --workers 8
    python preprocess.py --dataset ff++ --root datasets/FaceForensics++ --shard 3/16  # 0..15

Output: <out>/<dataset>/<split>/<source>/<video_id>/<frame_index>.png + meta.json per video,
<out>/<dataset>/<split>/index.csv per split, <out>/<dataset>/failures.csv. Shards (--shard K/N, or a
SLURM array task) write into the same tree, their failures to failures.shard-K-of-N.csv; every run
ends by rewriting index.csv and failures.csv for the whole dataset from the disk.

  1. the protocol: 32 frames at linspace, dlib's HOG face detector (upsample 1 on the full frame,
     the largest face), 68-point landmarks, five keypoints, the least-squares similarity transform
     onto the 5-point template, warpAffine to 256x256, re-detection inside the crop; reference_crop
     is all of it for one frame (--reference runs it frame by frame),
  2. reading a video's frames, and its people: every face tracked across the frames, one list of
     crops per person. The boxes come from util/face_search.py (the same boxes, found faster); the
     landmarks run on the full frame, so the crops are the reference's (keypoints within 1 px),
  3. one video: its crops and meta.json, written whole or not at all,
  4. the command line; util/jobs.py runs the videos (workers, shards, failures.csv, index.csv).
"""
from __future__ import annotations

import argparse
import errno
import functools
import importlib.util
import itertools
import json
import os
import sys
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
from util.jobs import Job, Result
from util.layouts import DATASETS, IMAGE_EXTS, Video, rel_path
from util.signals import StopSignals

# ==============================================================================================
# 1. The protocol
# ==============================================================================================

def sample_indices(n: int, n_frames: int | None = 32) -> list[int]:
    """np.linspace(0, n-1, n_frames) as integers; all frames when fewer (or n_frames None)."""
    if n <= 0:
        return []
    if not n_frames or n <= n_frames:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, n_frames).astype(int).tolist()))


@dataclass
class FaceModels:
    detector: "dlib.fhog_object_detector"
    predictor: "dlib.shape_predictor"
    landmarks: str  # path of the landmark model file


LANDMARKS_REL = "face_recognition_models/models/shape_predictor_68_face_landmarks.dat"


def default_landmarks_path() -> Path | None:
    """The 68-point model shipped by `face-recognition-models`, found by path (importing the package
    fails on recent setuptools because it imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in [str(Path(r).parent) for r in roots] + sys.path:
        if (path := Path(root) / LANDMARKS_REL).is_file():
            return path
    return None


@functools.lru_cache(maxsize=4)
def load_face_models(landmarks: str | None = None) -> FaceModels:
    """dlib HOG face detector + shape predictor (68-point default, or the 81-point file).
    FileNotFoundError when the landmark file is missing, ValueError when it is not one."""
    path = Path(landmarks) if landmarks else default_landmarks_path()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"landmark model not found (expected {landmarks or LANDMARKS_REL}); install it with "
            "`pip install face-recognition-models` or pass --landmarks PATH (68- or 81-point dlib shape "
            "predictor .dat)")
    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as e:
        raise ValueError(f"cannot load landmark model {path} (expected a dlib shape predictor .dat, "
                         f"68 or 81 points): {e}") from None
    # the number of points is only visible on a prediction
    parts = predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
    if parts < 68:
        raise ValueError(f"{path} predicts {parts} landmarks, expected a 68- or 81-point dlib shape predictor")
    return FaceModels(frontal_detector(), predictor, str(path))


KEYPOINTS_68 = (37, 44, 30, 49, 55)  # left eye, right eye, nose tip, mouth corners (0-based)


def _rect(box) -> "dlib.rectangle":
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


def _box(rect: "dlib.rectangle") -> Box:
    return (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))


def landmarks5(frame: np.ndarray, box, models: FaceModels) -> np.ndarray:
    """The five protocol keypoints [5, 2] of the face in `box` (frame pixels)."""
    shape = models.predictor(frame, _rect(box))
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


def has_face(crop: np.ndarray, models: FaceModels) -> bool:
    """The reference re-detects a face inside the crop (upsample 1) and drops the frame if none. The
    aligned face fills the crop, so HOG finds it on a 9/16 copy at upsample 0 (one of the scales the
    reference's upsample-1 pyramid scans) in almost every case at a third of the cost; only when it
    does not, the full crop at upsample 0 and then upsample 1 decide, as in the reference."""
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
    box = _box(rects[i])
    keypoints = landmarks5(frame, box, models)
    crop, matrix = align_face(frame, keypoints, size, scale)
    if len(models.detector(crop, 1)) == 0:
        return None
    return FaceCrop(0, crop, box, keypoints, float(scores[i]), matrix)


# ==============================================================================================
# 2. Reading frames, and the people in them
# ==============================================================================================

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
    """Frame indices np.linspace(0, n-1, n_frames) over the frames that really decode, and those frames
    as RGB [H, W, 3] uint8. An image is one frame with index 0.

    Container frame counts lie (truncated files, variable frame rate), so the count is verified by
    decoding: one sequential pass keeps the frames the container count asks for and counts the
    decodable ones; only when the two counts differ a second pass reads the right frames.
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


def face_tracks(frames: list[np.ndarray], indices: list[int], models: FaceModels, size: int = 256,
                scale: float = 1.3, detect_side: int = 640) -> list[list[FaceCrop]]:
    """Every person found in the frames, one list of crops per person, largest person first.
    A frame whose crop has no face on re-detection is dropped from that person's list."""
    people = []
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


def select_person(people: list[list[FaceCrop]], masks: dict[int, np.ndarray] | None = None) -> int:
    """Index of the person to keep: the one overlapping the manipulation mask most when masks are
    given and overlap anything, else the largest (index 0)."""
    if not people or not masks:
        return 0
    overlaps = [mask_overlap(p, masks) for p in people]
    return int(np.argmax(overlaps)) if max(overlaps) > 0 else 0


def extract_faces(path, n_frames: int | None = 32, size: int = 256, scale: float = 1.3,
                  models: FaceModels | None = None, detect_side: int = 640) -> list[list[FaceCrop]]:
    """Video or image file -> every person's crops (largest person first)."""
    models = models or load_face_models()
    indices, frames = read_frames(path, n_frames)
    return face_tracks(frames, indices, models, size, scale, detect_side)


# ==============================================================================================
# 3. One video
# ==============================================================================================

def _reference_people(frames, indices, models, size, scale) -> list[list[FaceCrop]]:
    """--reference: the published procedure frame by frame (largest face, no tracking)."""
    crops = [replace(c, frame=i) for i, frame in zip(indices, frames)
             if (c := reference_crop(frame, models, size, scale)) is not None]
    return [crops] if crops else []


def _masks_at(path: Path, indices: list[int], shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """The manipulation mask video's frames at `indices`, [H, W] uint8 at the video's size."""
    masks = _read_at(path, indices, gray=True)
    return {i: m if m.shape == shape else cv2.resize(m, shape[::-1], interpolation=cv2.INTER_NEAREST)
            for i, m in masks.items()}


def crop_png(crop: FaceCrop) -> bytes:
    """The crop's RGB image as the bytes of a PNG file <frame>.png."""
    return png_bytes(cv2.cvtColor(crop.image, cv2.COLOR_RGB2BGR))


def _write_video(out_dir: Path, crops: list[FaceCrop], meta: dict) -> None:
    """The kept person's crops <frame>.png, then meta.json (the mark of a finished video), whole or not
    at all (jobs.write_folder)."""
    pngs = ((f"{c.frame}.png", crop_png(c)) for c in crops)  # encoded one at a time, as written
    jobs.write_folder(out_dir, itertools.chain(pngs, [("meta.json", json.dumps(meta).encode())]))


def _meta(job: Job, models: FaceModels, indices: list[int], people: list[list[FaceCrop]], chosen: int,
          masks: dict | None) -> dict:
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
    """Decode, find and track faces, keep one person, write crops + meta.json atomically. A video that
    cannot be used is a failed Result; an OSError while writing (full disk) is raised, to stop the run
    rather than mark every later video as failed."""
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


# ==============================================================================================
# 4. The command line
# ==============================================================================================

def parse_args(argv=None) -> argparse.Namespace:
    count, number = at_least(int, 0, above=True), at_least(float, 0, above=True)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=DATASETS,
                   help="dataset to process; omitted: every dataset found under --datasets-dir")
    p.add_argument("--root", help="dataset folder; omitted: its usual folder under datasets/")
    p.add_argument("--out", default="data", help="output folder (data)")
    p.add_argument("--split", help="only this split (e.g. test); omitted: all splits")
    p.add_argument("--frames", type=count, default=32, help="frames per video at linspace(0, n-1, frames) (32)")
    p.add_argument("--size", type=count, default=256, help="crop size S (256)")
    p.add_argument("--scale", type=number, default=1.3, help="margin scale (1.3)")
    p.add_argument("--workers", type=count, default=jobs.cpu_count(), help="processes, one video each (all cores)")
    p.add_argument("--landmarks", help="dlib shape predictor .dat (68 or 81 points); omitted: the 68-point "
                                       "model of face-recognition-models")
    p.add_argument("--compression", default="c23", choices=["raw", "c23", "c40"], help="FF++/DFD quality (c23)")
    p.add_argument("--splits", help="folder with the FF++ train/val/test.json split files; omitted: looked "
                                    "for under --root")
    p.add_argument("--detect-side", type=count, default=640,
                   help="longest side of the downscaled copy faces are detected on (640)")
    p.add_argument("--reference", action="store_true", help="reference procedure per frame (full frame, "
                   "upsample 1, largest face, no tracking); slow, for comparisons")
    p.add_argument("--retry-failed", action="store_true", help="process the videos listed in failures.csv again")
    p.add_argument("--limit", type=count, default=None,
                   help="at most N videos per split and source (a quick subset, e.g. for a smoke run)")
    p.add_argument("--shard", type=jobs.shard_flag, metavar="K/N",
                   help="only part K (0..N-1) of N of the videos, so that N jobs (on any machines, same "
                        "--out) cover the dataset once; omitted: from SLURM_ARRAY_TASK_ID/_MIN/_COUNT in a "
                        "SLURM array job, else all (= 0/1)")
    p.add_argument("--datasets-dir", default="datasets",
                   help="where to look for datasets when --dataset or --root is omitted (datasets)")
    a = p.parse_args(argv)
    if a.root and not a.dataset:
        p.error("--root needs --dataset (which dataset is at that root?)")
    return a


def _run(a: argparse.Namespace) -> None:
    """The dataset asked for (or every one found), run by util/jobs.py with process_video per video."""
    shard = jobs.shard_for(a.shard, os.environ)

    def run(name: str, root, videos: list[Video] | None = None) -> None:
        jobs.run_dataset(process_video, functools.partial(load_face_models, a.landmarks), name, root,
                         videos=videos, out=a.out, split=a.split, n_frames=a.frames, size=a.size,
                         scale=a.scale, detect_side=a.detect_side, reference=a.reference, workers=a.workers,
                         compression=a.compression, splits_dir=a.splits, retry_failed=a.retry_failed,
                         limit=a.limit, shard=shard)
    if not a.dataset:
        jobs.run_found(run, a.datasets_dir, a.compression, a.splits)
    elif a.root:
        run(a.dataset, a.root)
    else:  # its usual folder under --datasets-dir
        run(a.dataset, *jobs.find_root(a.dataset, a.datasets_dir, a.compression, a.splits))


def main(argv=None) -> int:
    """The command line; every error ends here as one line and a non-zero exit status."""
    a = parse_args(argv)
    again = "finished videos are kept; run the same command again to continue"
    try:
        with StopSignals(defer=False):  # SIGTERM (kill, scancel, a time limit) stops as Ctrl-C does
            _run(a)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the video folders in flight never appear
        raise SystemExit(f"interrupted: {again}") from None
    except BrokenProcessPool as e:
        raise SystemExit(f"error: a worker process died ({e}); {again} (with fewer --workers if memory "
                         "ran out)") from None
    except OSError as e:  # full disk, unwritable --out, unreadable dataset, no landmark model
        if e.errno == errno.ENOSPC:
            raise SystemExit(f"error: no space left on device (writing {e.filename}); free some space: "
                             f"{again}") from None
        raise SystemExit(f"error: {e}") from None
    except ValueError as e:  # LayoutError (dataset, listing file), landmark model, SLURM array
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
