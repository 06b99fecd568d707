"""Finding faces with dlib's HOG detector: the detector loaded fast, and the boxes the protocol's
full-frame scan (upsample 1) finds, found at a fraction of its cost and linked across the sampled
frames into one track per person.

A face box is found on a downscaled copy of the frame first (much faster than upsample 1 on the full
frame), then mapped back. The sampled frames are searched in order and faces are tracked: a face
found in one frame is searched in the next one in a region around its last box (1.5 box sizes on
each side), resized so that the face is ~110 px, above HOG's 80 px window (small faces, ~70 px in
720p, need no full-frame upsample-1 scan after the first frame); the cheap downscaled search still
runs first (once faces are tracked, in grayscale and at the scale where the smallest of them is
72 px), so a larger face entering is found (and a smaller tracked face beside it is still searched
near its box), and a frame where a tracked face is not found near its box gets the full search.
Only boxes come from here: the landmarks, and so the crops, are the protocol's (preprocess.py).

The search functions take the detector (frontal_detector(), or any object with its
`run(image, upsample, threshold)`).
"""
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
    """dlib's HOG face detector. dlib decodes its built-in copy from a compressed string in ~0.8 s, paid
    by every run and every worker; the copy it saves into the user's cache (<XDG_CACHE_HOME or
    ~/.cache>/dlib) loads in ~5 ms. A cache that cannot be read or written only costs that time."""
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
    """HOG detections on `image`, a copy of the frame (from `origin`) resized by `factor`,
    as boxes in frame pixels."""
    rects, scores, _ = detector.run(image, upsample, 0.0)
    return [((r.left() / factor + origin[0], r.top() / factor + origin[1],
              r.right() / factor + origin[0], r.bottom() / factor + origin[1]), float(s))
            for r, s in zip(rects, scores)]


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    inter = cv2.INTER_AREA if factor < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                      interpolation=inter)


def search_near(frame: np.ndarray, box: Box, detector) -> list[Detection]:
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
    """Every tracked face searched in its region; [] unless each one is found there (a face
    of similar size, see _link), so that a face that moved away sends the frame to the full
    search."""
    found: list[Detection] = []
    for box in tracked:
        near = search_near(frame, box, detector)
        if not any(_link(box, b) < float("inf") for b, _ in near):
            return []
        found += near
    return _distinct(found)


def _add_missed(frame: np.ndarray, found: list[Detection], tracked: list[Box],
                detector) -> list[Detection]:
    """`found` (the cheap check's faces) and those found near each tracked face it missed (one
    too small for it, beside a larger one): the faces of a two- or three-person video stay
    tracked in every frame."""
    for box in tracked:
        if all(_link(box, b) > REGION_MARGIN for b, _ in found):
            found = found + search_near(frame, box, detector)
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


def detect_faces(frame: np.ndarray, detector, detect_side: int = 640,
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
    found = _hog(detector, cheap, 0, factor)
    if found:
        return _add_missed(frame, found, tracked, detector)
    small = cheap  # [h*f, w*f, 3]: without tracking, the cheap check's own colour copy
    if tracked:
        found = _search_tracked(frame, tracked, detector)
        if found:
            return found
        small = _resize(frame, f) if f < 1.0 else frame
    levels = [(small, f, 1)]                           # faces >= 40 px on the small copy
    if f < 0.45:
        levels.append((frame, 1.0, 0))                 # big frames (1080p): full size first
    if f < 0.75:
        levels.append((frame, 1.0, 1))                 # the reference's own scale, last
    for image, factor, upsample in levels:
        found = _hog(detector, image, upsample, factor)
        if found:
            return found
    return []


def detect_in_frames(frames: list[np.ndarray], detector,
                     detect_side: int = 640) -> list[list[Detection]]:
    """detect_faces on each frame in order, the faces last found being tracked: a face seen in
    one sampled frame is searched near its last box in the next, so the full-frame upsample-1
    scan (the reference's whole cost) runs only where tracking has nothing or loses a face."""
    detections: list[list[Detection]] = []
    last: list[Detection] = []
    for frame in frames:
        found = detect_faces(frame, detector, detect_side, [box for box, _ in last])
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


def link_tracks(detections: list[list[Detection]], max_dist: float = 1.5) -> list[Track]:
    """Per-frame detections -> tracks [(frame position, box, score), ...]: each detection
    continues the track whose last box is nearest (greedy, largest faces first; at most
    `max_dist` box sizes away) or starts a new one. Tracks are ordered by the sum of their box
    areas (largest, longest person first). Tracks never seen in the same frame are joined:
    a face that jumped further than `max_dist` between two sampled frames (they can be
    seconds apart) is still the one person on screen, as the reference would keep it."""
    tracks: list[Track] = []
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
