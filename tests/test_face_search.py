"""Tests for util/face_search.py: tracked faces are searched near their last box, so the full-frame
upsample-1 scan (the reference's whole cost) runs only on the first frame, and the crops stay the
reference's; detections linked into one track per person; dlib's detector loaded from its cache."""
from __future__ import annotations

import dataclasses

import numpy as np

import _video_utils as U
import preprocess as P
from util import face_search as FS


class CountingDetector:
    """Delegates to dlib's detector (whose attributes cannot be patched) and logs each call as
    (image, upsample)."""

    def __init__(self, detector):
        self.detector = detector
        self.calls: list[tuple[np.ndarray, int]] = []

    def run(self, image, upsample=0, threshold=0.0):
        self.calls.append((image, upsample))
        return self.detector.run(image, upsample, threshold)

    def __call__(self, image, upsample=0):
        self.calls.append((image, upsample))
        return self.detector(image, upsample)


def tracks_counting(frames: list[np.ndarray], models: P.FaceModels, monkeypatch,
                    detect_side: int = 640) -> tuple[list[list[P.FaceCrop]], list[int]]:
    """face_tracks with a counting detector: the people found, and for each frame how many
    upsample-1 searches (the ladder's expensive levels) its detection ran. The re-detections
    inside the 256x256 crops come after all frames and are left out."""
    counting = CountingDetector(models.detector)
    counts: list[int] = []
    detect_faces = FS.detect_faces

    def detect_counting(*args, **kwargs):
        counting.calls.clear()
        found = detect_faces(*args, **kwargs)
        counts.append(sum(upsample == 1 for _, upsample in counting.calls))
        return found

    monkeypatch.setattr(FS, "detect_faces", detect_counting)
    people = P.face_tracks(frames, list(range(len(frames))),
                           dataclasses.replace(models, detector=counting), detect_side=detect_side)
    assert len(counts) == len(frames)
    return people, counts


def test_small_faces_tracked_match_reference(models, monkeypatch):
    # a ~65-75 px dlib box in 1280x720 frames (HOG's window is 80 px): the downscaled copy
    # cannot find it, the reference finds it at upsample 1 on the full frame
    spec = [((600, 300), 0.75, 0), ((680, 340), 0.80, 5), ((620, 280), 0.70, -4)]
    frames = [U.place_face((1280, 720), c, s, a) for c, s, a in spec]
    refs = [P.reference_crop(f, models) for f in frames]
    assert all(r is not None and 60 < r.box[2] - r.box[0] < 80 for r in refs)
    people, counts = tracks_counting(frames, models, monkeypatch)
    # only the first frame needs an upsample-1 search; the others find the face near its box
    assert counts[0] >= 1 and counts[1:] == [0, 0]
    assert len(people) == 1 and [c.frame for c in people[0]] == [0, 1, 2]
    for crop, ref in zip(people[0], refs):
        # landmarks run on the full frame: the keypoints are the reference's within 1 px
        assert np.abs(crop.keypoints - ref.keypoints).max() <= 1.0
        # ... so the crops agree: a 70 px face is magnified ~3.5x into the 256 px crop, 1 px in
        # the frame is ~3.5 px there; keypoints found again in both crops agree within 2 px
        dist = np.linalg.norm(U.keypoints_in_crop(crop.image, models)
                              - U.keypoints_in_crop(ref.image, models), axis=1).mean()
        assert dist < 2.0, f"frame {crop.frame}: {dist:.2f} px from the reference crop"


def test_face_lost_or_entering(models, monkeypatch):
    """640x480: a small face (~40 px, found only at upsample 1) is tracked; when it jumps away
    the frame gets the full search; a large face entering is found by the cheap full-frame
    check and, as in the reference, it is the one kept for that frame."""
    small = [((200, 150), 0.45), ((230, 160), 0.45), ((520, 380), 0.45), ((540, 370), 0.45)]
    frames = [U.place_face((640, 480), c, s) for c, s in small]
    frames.append(U.place_face((640, 480), (420, 200), 1.6, frame=frames[-1]))
    refs = [P.reference_crop(f, models) for f in frames]
    assert all(r is not None for r in refs)
    assert all(r.box[2] - r.box[0] < 60 for r in refs[:4]) and refs[4].box[2] - refs[4].box[0] > 120
    people, counts = tracks_counting(frames, models, monkeypatch)
    assert counts == [1, 0, 1, 0, 0]  # first frame, and where the face jumped 3 boxes away
    # the person kept: the small face, then the large one (a low-score box on the suit in the
    # first two frames is a second, shorter track)
    assert [c.frame for c in people[0]] == [0, 1, 2, 3, 4]
    assert people[0][4].box[2] - people[0][4].box[0] > 120
    for crop, ref in zip(people[0], refs):
        assert np.abs(crop.keypoints - ref.keypoints).max() <= 1.0, crop.frame


def test_small_face_beside_a_larger_one_stays_tracked(models, monkeypatch):
    """A small face (~40 px at 640x480, found only at upsample 1) is tracked; when a large face
    enters, the cheap check finds only the large one, and the small one is still found near its
    last box in every frame, without another upsample-1 search."""
    spots = [(150, 340), (160, 345), (170, 350), (180, 345)]
    frames = [U.place_face((640, 480), spots[0], 0.45)]
    for spot in spots[1:]:
        frames.append(U.place_face((640, 480), (430, 190), 1.5, frame=U.place_face((640, 480), spot, 0.45)))
    people, counts = tracks_counting(frames, models, monkeypatch)
    assert counts == [1, 0, 0, 0]
    small = [p for p in people if all(c.box[2] - c.box[0] < 60 for c in p)]
    large = [p for p in people if all(c.box[2] - c.box[0] > 120 for c in p)]
    assert len(small) == 1 and len(large) == 1
    assert [c.frame for c in small[0]] == [0, 1, 2, 3] and [c.frame for c in large[0]] == [1, 2, 3]
    for crop, (x, y) in zip(small[0], spots):
        assert abs((crop.box[0] + crop.box[2]) / 2 - x) < 15 and abs((crop.box[1] + crop.box[3]) / 2 - y) < 15


def test_cheap_check_scaled_to_the_tracked_faces(models, monkeypatch):
    """720p, a ~185 px face tracked: the cheap check runs on a copy where that face is
    CHEAP_FACE_PX wide (smaller than the 640 px default), and still finds a larger face entering,
    which is the face the reference keeps in that frame."""
    frames = [U.place_face((1280, 720), (380 + 20 * i, 360), 2.0) for i in range(3)]
    frames.append(U.place_face((1280, 720), (1000, 330), 2.8, frame=frames[-1]))
    checks = []
    cheap_check = FS.cheap_check
    monkeypatch.setattr(FS, "cheap_check", lambda *a: checks.append(cheap_check(*a)) or checks[-1])
    people, counts = tracks_counting(frames, models, monkeypatch)
    widths = [image.shape[1] for image, _ in checks]
    assert widths[0] == 640 and all(w < 550 for w in widths[1:]), widths
    assert counts == [0, 0, 0, 0]  # no upsample-1 search anywhere
    refs = [P.reference_crop(f, models) for f in frames]
    assert refs[3].box[2] - refs[3].box[0] > 1.3 * (refs[2].box[2] - refs[2].box[0])  # the larger face
    assert [len(p) for p in people] == [1, 4] or [len(p) for p in people] == [4, 1]
    for frame_index, ref in enumerate(refs):
        largest = max((c for p in people for c in p if c.frame == frame_index),
                      key=lambda c: FS._area(c.box))
        assert np.abs(largest.keypoints - ref.keypoints).max() <= 1.0, frame_index


def test_link_tracks():
    """One face per frame is one person however it moves; two faces stay apart."""
    a, b = (0, 0, 100, 100), (300, 0, 400, 100)
    assert len(FS.link_tracks([[(a, 1.0)], [(b, 1.0)], [], [(a, 1.0)]])) == 1
    tracks = FS.link_tracks([[(a, 1.0), (b, 1.0)], [(b, 1.0)], [(a, 1.0), (b, 1.0)]])
    assert [[p for p, _, _ in tr] for tr in tracks] == [[0, 1, 2], [0, 2]]
    assert FS.link_tracks([[], []]) == []
    c = (0, 300, 50, 350)  # a small false detection in one frame only: joins the gap of b
    tracks = FS.link_tracks([[(a, 1.0), (b, 1.0)], [(a, 1.0), (c, 1.0)], [(a, 1.0), (b, 1.0)]])
    assert [[p for p, _, _ in tr] for tr in tracks] == [[0, 1, 2], [0, 1, 2]]


def test_frontal_detector_cache(tmp_path, monkeypatch):
    """dlib's built-in detector is saved once into the cache and loaded from there (identical
    detections); a damaged cache file is decoded again and replaced."""
    import dlib
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built_in = FS.frontal_detector()  # no cache yet: dlib's own, decoded
    cached = tmp_path / "dlib" / f"frontal_face_detector-{dlib.__version__}.svm"
    assert cached.is_file()
    frame = U.face_frames(1)[0]
    want = built_in.run(frame, 0, 0.0)
    got = FS.frontal_detector().run(frame, 0, 0.0)  # from the cache file
    assert len(want[0]) == 1 and [str(r) for r in got[0]] == [str(r) for r in want[0]]
    assert np.allclose(got[1], want[1])
    cached.write_bytes(b"damaged")
    assert len(FS.frontal_detector()(frame, 0)) == 1
    assert cached.stat().st_size > 1000
