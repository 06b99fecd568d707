"""The boxes the protocol's full-frame HOG scan (upsample 1) finds, at a fraction of its cost, and
linked across the frames into a track per person: a downscaled copy first, then a face found in
one frame is searched in the next near its last box (resized so that the face is ~110 px, above
HOG's 80 px window); the full upsample-1 scan runs only where tracking has nothing or loses a face.
Only boxes come from here: the landmarks, and so the crops, are the protocol's (preprocess.py)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import dlib
import numpy as np

from util.files import atomic_write

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels
Detection = tuple[Box, float]            # box, detector score
Track = list[tuple[int, Box, float]]     # (frame position, box, score) of one person

REGION_FACE_PX = 110  # a tracked face's region is resized so the face is this wide (HOG: 80)
REGION_MARGIN = 1.5   # box sizes added on each side of a tracked face's last box
CHEAP_FACE_PX = 72    # the smallest tracked face's width in the cheap check (HOG finds >= ~60 px)


def frontal_detector() -> "dlib.fhog_object_detector":
    """dlib's HOG face detector: its built-in copy decodes in ~0.8 s, paid by every run and worker;
    saved once into <XDG_CACHE_HOME or ~/.cache>/dlib, it loads in ~5 ms (a bad cache costs 0.8 s)."""
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


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _hog(detector, image: np.ndarray, upsample: int, factor: float = 1.0,
         origin: tuple[int, int] = (0, 0)) -> list[Detection]:
    """HOG detections on `image` (the frame from `origin`, resized by `factor`) in frame pixels."""
    rects, scores, _ = detector.run(image, upsample, 0.0)
    return [((r.left() / factor + origin[0], r.top() / factor + origin[1],
              r.right() / factor + origin[0], r.bottom() / factor + origin[1]), float(s))
            for r, s in zip(rects, scores)]


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    inter = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=inter)


def search_near(frame: np.ndarray, box: Box, detector) -> list[Detection]:
    """Faces in the region REGION_MARGIN box sizes around a tracked face's last box, resized so
    that a face of that size is REGION_FACE_PX wide: above HOG's 80 px window at upsample 0."""
    h, w = frame.shape[:2]
    side = max(_area(box) ** 0.5, 1.0)
    pad = REGION_MARGIN * side
    x0, y0 = max(0, int(box[0] - pad)), max(0, int(box[1] - pad))
    x1, y1 = min(w, int(np.ceil(box[2] + pad))), min(h, int(np.ceil(box[3] + pad)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return []
    factor = REGION_FACE_PX / side
    return _hog(detector, _resize(frame[y0:y1, x0:x1], factor), 0, factor, (x0, y0))


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


def _search_tracked(frame: np.ndarray, tracked: list[Box], detector) -> list[Detection]:
    """Every tracked face searched near its box; [] unless each is found there, so that a face
    that moved away sends the frame to the full search."""
    found: list[Detection] = []
    for box in tracked:
        near = search_near(frame, box, detector)
        if not any(_link(box, b) < float("inf") for b, _ in near):
            return []
        found += near
    return _distinct(found)


def detect_faces(frame: np.ndarray, detector, detect_side: int = 640,
                 tracked: list[Box] | None = None) -> list[Detection]:
    """Face boxes (frame pixels) and scores from the first search that finds any: the cheap check
    (`detect_side` px on the longest side; with faces `tracked`, where the smallest is CHEAP_FACE_PX
    and in grey: as good for HOG, a fifth cheaper), near each tracked face, then finer scales, the
    last the reference's own (full frame, upsample 1)."""
    tracked = tracked or []
    f = min(1.0, detect_side / max(frame.shape[:2]))
    g = min(f, CHEAP_FACE_PX / min(max(_area(b) ** 0.5, 1.0) for b in tracked)) if tracked else f
    cheap = _resize(frame, g)                                               # [h*g, w*g, 3]
    found = _hog(detector, cv2.cvtColor(cheap, cv2.COLOR_RGB2GRAY) if tracked else cheap, 0, g)
    if found:  # and near each tracked face it missed (a small one beside a larger one)
        for box in tracked:
            if all(_link(box, b) > REGION_MARGIN for b, _ in found):
                found = found + search_near(frame, box, detector)
        return _distinct(found)
    if tracked and (found := _search_tracked(frame, tracked, detector)):
        return found
    levels = [(_resize(frame, f) if tracked else cheap, f, 1)]  # faces >= 40 px on the small copy
    if f < 0.45:
        levels.append((frame, 1.0, 0))                 # big frames (1080p): full size first
    if f < 0.75:
        levels.append((frame, 1.0, 1))                 # the reference's own scale, last
    for image, factor, upsample in levels:
        if found := _hog(detector, image, upsample, factor):
            return found
    return []


def detect_in_frames(frames: list[np.ndarray], detector,
                     detect_side: int = 640) -> list[list[Detection]]:
    """detect_faces on each frame in order, tracking the faces last found."""
    detections: list[list[Detection]] = []
    last: list[Detection] = []
    for frame in frames:
        found = detect_faces(frame, detector, detect_side, [box for box, _ in last])
        detections.append(found)
        last = found or last
    return detections


def _link(box_a, box_b) -> float:
    """Distance between two boxes' centres in units of the first box's size (inf where the sizes
    differ more than 2x): small = the same person in a later frame."""
    size_a, size_b = _area(box_a) ** 0.5, _area(box_b) ** 0.5
    if size_a <= 0 or size_b <= 0 or not 0.5 <= size_b / size_a <= 2.0:
        return float("inf")
    ca = np.array([box_a[0] + box_a[2], box_a[1] + box_a[3]]) / 2
    cb = np.array([box_b[0] + box_b[2], box_b[1] + box_b[3]]) / 2
    return float(np.linalg.norm(ca - cb) / size_a)


def link_tracks(detections: list[list[Detection]], max_dist: float = 1.5) -> list[Track]:
    """Per-frame detections -> tracks, largest (sum of box areas) first: each detection continues
    the nearest track (greedy, largest faces first, at most `max_dist` box sizes away) or starts
    one. Tracks never seen in one frame are joined: a face that jumped between two sampled
    frames (seconds apart) is still the one person on screen, as the reference keeps it."""
    tracks: list[Track] = []
    for pos, dets in enumerate(detections):
        dets = sorted(dets, key=lambda d: -_area(d[0]))
        pairs = sorted((_link(t[-1][1], d[0]), ti, di)
                       for ti, t in enumerate(tracks) for di, d in enumerate(dets))
        used_t, used_d = set(), set()
        for dist, ti, di in pairs:
            if dist > max_dist or ti in used_t or di in used_d:
                continue
            tracks[ti].append((pos, dets[di][0], dets[di][1]))
            used_t.add(ti)
            used_d.add(di)
        tracks += [[(pos, d[0], d[1])] for di, d in enumerate(dets) if di not in used_d]
    by_size = lambda t: -sum(_area(b) for _, b, _ in t)  # noqa: E731
    joined: list[Track] = []
    for t in sorted(tracks, key=by_size):
        frames = {pos for pos, _, _ in t}
        other = next((j for j in joined if not frames & {pos for pos, _, _ in j}), None)
        if other is None:
            joined.append(t)
        else:
            other += t
            other.sort(key=lambda x: x[0])
    return sorted(joined, key=by_size)
