"""util/face_search.py: the upsample-1 scan (the reference's cost) only where tracking has nothing."""
from __future__ import annotations

import dataclasses

import dlib
import numpy as np

import _video_utils as U
import preprocess as P
from util import face_search as FS


def tracks_counting(frames: list[np.ndarray], models: P.FaceModels):
    """face_tracks' people, its upsample-1 scans of a frame (not of a 256 px crop), and every call."""
    calls = []

    class Spy:  # dlib's detector, each call logged as (image, upsample)
        def run(self, image, upsample=0, threshold=0.0):
            calls.append((image, upsample))
            return models.detector.run(image, upsample, threshold)

        def __call__(self, image, upsample=0):
            return self.run(image, upsample)[0]
    people = P.face_tracks(frames, list(range(len(frames))), dataclasses.replace(models, detector=Spy()))
    return people, sum(up == 1 and image.shape[:2] != (256, 256) for image, up in calls), calls


def test_small_faces_tracked_match_reference(models):
    # ~70 px faces in 720p (HOG's window: 80 px): only the reference's full-frame upsample 1 finds them
    spec = [((600, 300), 0.75, 0), ((680, 340), 0.80, 5), ((620, 280), 0.70, -4)]
    frames = [U.place_face((1280, 720), c, s, a) for c, s, a in spec]
    refs = [P.reference_crop(f, models) for f in frames]
    assert all(r is not None and 60 < r.box[2] - r.box[0] < 80 for r in refs)
    people, full, _ = tracks_counting(frames, models)
    # only the first frame needs an upsample-1 scan; the others find the face near its box
    assert full == 1
    assert len(people) == 1 and [c.frame for c in people[0]] == [0, 1, 2]
    for crop, ref in zip(people[0], refs):
        assert np.abs(crop.keypoints - ref.keypoints).max() <= 1.0  # landmarks on the full frame
        # the crops agree: keypoints found again agree within 2 px (a 1 px shift in the frame is ~3.5 here)
        dist = np.linalg.norm(U.keypoints_in_crop(crop.image, models)
                              - U.keypoints_in_crop(ref.image, models), axis=1).mean()
        assert dist < 2.0, f"frame {crop.frame}: {dist:.2f} px from the reference crop"


def test_face_lost_or_entering(models):
    """A small face (~40 px, upsample 1 only) tracked, jumping away, then a large one entering."""
    small = [((200, 150), 0.45), ((230, 160), 0.45), ((520, 380), 0.45), ((540, 370), 0.45)]
    frames = [U.place_face((640, 480), c, s) for c, s in small]
    frames.append(U.place_face((640, 480), (420, 200), 1.6, frame=frames[-1]))
    refs = [P.reference_crop(f, models) for f in frames]
    assert all(r.box[2] - r.box[0] < 60 for r in refs[:4]) and refs[4].box[2] - refs[4].box[0] > 120
    people, full, _ = tracks_counting(frames, models)
    assert full == 2  # the first frame, and where the face jumped 3 boxes away
    # the small face, then the large one (the mission patch on the suit is another, shorter track)
    assert [c.frame for c in people[0]] == [0, 1, 2, 3, 4]
    assert people[0][4].box[2] - people[0][4].box[0] > 120
    for crop, ref in zip(people[0], refs):
        assert np.abs(crop.keypoints - ref.keypoints).max() <= 1.0, crop.frame


def test_small_face_beside_a_larger_one_stays_tracked(models):
    """A tracked small face beside a large one entering is still found near its box, cheaply."""
    spots = [(150, 340), (160, 345), (170, 350), (180, 345)]
    frames = [U.place_face((640, 480), spots[0], 0.45)]
    for spot in spots[1:]:
        small_face = U.place_face((640, 480), spot, 0.45)
        frames.append(U.place_face((640, 480), (430, 190), 1.5, frame=small_face))
    people, full, _ = tracks_counting(frames, models)
    assert full == 1
    small = [p for p in people if all(c.box[2] - c.box[0] < 60 for c in p)]
    large = [p for p in people if all(c.box[2] - c.box[0] > 120 for c in p)]
    assert len(small) == 1 and len(large) == 1
    assert [c.frame for c in small[0]] == [0, 1, 2, 3] and [c.frame for c in large[0]] == [1, 2, 3]
    for crop, (x, y) in zip(small[0], spots):
        assert abs(crop.box[0] + crop.box[2] - 2 * x) < 30 and abs(crop.box[1] + crop.box[3] - 2 * y) < 30


def test_cheap_check_scaled_to_the_tracked_faces(models):
    """720p: the cheap check in grey, smaller than 640 px, still finds a larger face entering."""
    frames = [U.place_face((1280, 720), (380 + 20 * i, 360), 2.0) for i in range(3)]
    frames.append(U.place_face((1280, 720), (1000, 330), 2.8, frame=frames[-1]))
    people, full, calls = tracks_counting(frames, models)
    gray = [image.shape[1] for image, _ in calls if image.ndim == 2]  # the cheap check once tracking
    assert len(gray) == 3 and all(w < 550 for w in gray), gray
    assert full == 0  # no upsample-1 scan anywhere
    refs = [P.reference_crop(f, models) for f in frames]
    assert refs[3].box[2] - refs[3].box[0] > 1.3 * (refs[2].box[2] - refs[2].box[0])  # the larger face
    assert [len(p) for p in people] == [1, 4] or [len(p) for p in people] == [4, 1]
    for i, ref in enumerate(refs):
        largest = max((c for p in people for c in p if c.frame == i), key=lambda c: c.box[2] - c.box[0])
        assert np.abs(largest.keypoints - ref.keypoints).max() <= 1.0, i


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
    """dlib's detector saved once into the cache, loaded from there; a damaged cache replaced."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built_in = FS.frontal_detector()  # no cache yet: dlib's own, decoded
    cached = tmp_path / "dlib" / f"frontal_face_detector-{dlib.__version__}.svm"
    assert cached.is_file()
    frame = U.face_frames(1)[0]
    want, got = built_in.run(frame, 0, 0.0), FS.frontal_detector().run(frame, 0, 0.0)  # the second: cached
    assert len(want[0]) == 1 and str(got[0]) == str(want[0]) and np.allclose(got[1], want[1])
    cached.write_bytes(b"damaged")
    assert len(FS.frontal_detector()(frame, 0)) == 1
    assert cached.stat().st_size > 1000
