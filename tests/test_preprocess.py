"""Tests for preprocess.py's protocol: crops, alignment, tracking, frame sampling. (Layouts:
test_layouts.py; the runner and command line: test_preprocess_cli.py.)"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import _video_utils as U
import preprocess as P


# ----------------------------------------------------------------------------- alignment

def test_template_and_similarity_fit():
    from skimage.transform import SimilarityTransform
    t = P.crop_template(256, 1.3)
    # the protocol: x += 8, * S/112, + S*0.15, / 1.3
    assert np.allclose(t[0], [(30.2946 + 8) * 256 / 112 / 1.3 + 256 * 0.15 / 1.3,
                              51.6963 * 256 / 112 / 1.3 + 256 * 0.15 / 1.3])
    rng = np.random.RandomState(0)
    src = rng.uniform(0, 500, (5, 2))
    m = P.similarity_transform(src, t)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        ref = SimilarityTransform.from_estimate(src, t)
    else:
        ref = SimilarityTransform()
        ref.estimate(src, t)
    assert np.allclose(m, ref.params[:2], atol=1e-8)
    # an exact similarity is recovered exactly (rotation + uniform scale, no shear)
    a = np.deg2rad(7)
    c, s = 1.3 * np.cos(a), 1.3 * np.sin(a)
    true = np.array([[c, -s, 10], [s, c, -4]])
    assert np.allclose(P.similarity_transform(src, P.transform_points(true, src)), true)


def test_crops_match_reference_procedure(face_video, models):
    indices, frames = P.read_frames(face_video, 32)
    assert indices == list(range(8))
    # detect_side 320 halves the 640x480 frames: the downscaled path and the box mapping run
    people = P.face_tracks(frames, indices, models, detect_side=320)
    assert len(people) == 1 and len(people[0]) == 8
    template = P.crop_template(256, 1.3)
    for crop in people[0]:
        frame = frames[crop.frame]
        ref = P.reference_crop(frame, models)
        assert ref is not None
        # the five keypoints are points 37, 44, 30, 49, 55 of the 68-point model
        shape = models.predictor(frame, P._rect(crop.box))
        parts = [shape.part(i) for i in (37, 44, 30, 49, 55)]
        assert np.array_equal(crop.keypoints, [[p.x, p.y] for p in parts])
        assert crop.image.shape == (256, 256, 3) and crop.image.dtype == np.uint8
        # the crop is the frame warped by its matrix
        assert np.array_equal(crop.image, cv2.warpAffine(frame, crop.matrix, (256, 256)))
        # the matrix is the least-squares similarity fit of the keypoints onto the template
        mapped = P.transform_points(crop.matrix, crop.keypoints)
        fit = P.similarity_transform(crop.keypoints, template)
        assert np.allclose(mapped, P.transform_points(fit, crop.keypoints), atol=1e-6)
        assert np.linalg.norm(mapped - template, axis=1).mean() < 15.0
        # ... and no nearby similarity puts them closer to the template (least squares)
        err = ((mapped - template) ** 2).sum()
        for d in np.random.RandomState(crop.frame).normal(0, 0.01, (20, 4)):
            a, b = crop.matrix[0, 0] + d[0], crop.matrix[1, 0] + d[1]
            other = np.array([[a, -b, crop.matrix[0, 2] + 50 * d[2]],
                              [b, a, crop.matrix[1, 2] + 50 * d[3]]])
            assert ((P.transform_points(other, crop.keypoints) - template) ** 2).sum() > err
        # the protocol's crop: keypoints found again in both crops agree within 2 px
        dist = np.linalg.norm(U.keypoints_in_crop(crop.image, models)
                              - U.keypoints_in_crop(ref.image, models), axis=1).mean()
        assert dist < 2.0, f"frame {crop.frame}: {dist:.2f} px from the reference crop"


def test_extract_faces_image(tmp_path, models):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(U.face_frames(1)[0], cv2.COLOR_RGB2BGR))
    people = P.extract_faces(path, models=models)
    assert len(people) == 1 and people[0][0].frame == 0
    assert people[0][0].keypoints.shape == (5, 2) and people[0][0].matrix.shape == (2, 3)


def test_tracks_and_masks(tmp_path, models):
    """Two people: the largest is first; a mask over the smaller one selects it."""
    frames = []
    for k in range(4):
        f = U.place_face((640, 360), (180 + 5 * k, 160), 1.8)
        frames.append(U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=f))
    people = P.face_tracks(frames, [0, 10, 20, 30], models, detect_side=640)
    assert len(people) == 2
    assert all(c.box[2] < 330 for c in people[0]) and all(c.box[0] > 330 for c in people[1])
    assert [c.frame for c in people[0]] == [0, 10, 20, 30]
    mask = np.zeros((360, 640), np.uint8)
    mask[100:220, 440:560] = 255
    assert P.select_person(people, {i: mask for i in (0, 10, 20, 30)}) == 1
    assert P.select_person(people, None) == 0
    assert P.select_person(people, {0: np.zeros_like(mask)}) == 0
    # linking: one face per frame is one person however it moves; two faces stay apart
    a, b = (0, 0, 100, 100), (300, 0, 400, 100)
    assert len(P.link_tracks([[(a, 1.0)], [(b, 1.0)], [], [(a, 1.0)]])) == 1
    tracks = P.link_tracks([[(a, 1.0), (b, 1.0)], [(b, 1.0)], [(a, 1.0), (b, 1.0)]])
    assert [[p for p, _, _ in tr] for tr in tracks] == [[0, 1, 2], [0, 2]]
    assert P.link_tracks([[], []]) == []
    c = (0, 300, 50, 350)  # a small false detection in one frame only: joins the gap of b
    tracks = P.link_tracks([[(a, 1.0), (b, 1.0)], [(a, 1.0), (c, 1.0)], [(a, 1.0), (b, 1.0)]])
    assert [[p for p, _, _ in tr] for tr in tracks] == [[0, 1, 2], [0, 1, 2]]
    # the reference procedure keeps the largest face; no face -> None
    assert P.reference_crop(frames[0], models).box[2] < 330
    assert P.reference_crop(np.full((240, 320, 3), 128, np.uint8), models) is None


# ----------------------------------------------------------------------------- reading

def test_sample_indices():
    assert P.sample_indices(100, 32) == np.linspace(0, 99, 32).astype(int).tolist()
    assert P.sample_indices(10, 32) == list(range(10))
    assert P.sample_indices(0, 32) == []


def test_read_frames_lying_container(tmp_path):
    """The header of a truncated .avi says 40 frames; only the decodable ones count."""
    path = U.truncated_avi(tmp_path / "cut.avi", n=40, keep=0.5)
    cap = cv2.VideoCapture(str(path))
    claimed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    indices, frames = P.read_frames(path, 8)
    n = indices[-1] + 1
    assert claimed == 40 and 10 < n < 40
    assert indices == P.sample_indices(n, 8)
    assert all(f.shape == (120, 160, 3) for f in frames)
    # frames come back in the right order: compare with a plain sequential decode
    cap, plain = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        plain.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    assert len(plain) == n
    assert all(np.array_equal(plain[i], f) for i, f in zip(indices, frames))


def test_read_frames_bad_files(tmp_path):
    empty = U.touch(tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="empty"):
        P.read_frames(empty)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ValueError):
        P.read_frames(garbage)
