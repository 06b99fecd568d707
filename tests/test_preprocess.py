"""Tests for preprocess.py: protocol crops, frame sampling, dataset layouts, bad inputs, resume."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import _video_utils as U
import preprocess as P


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def keypoints_in_crop(crop: np.ndarray, models: P.FaceModels) -> np.ndarray:
    """The five keypoints found again inside a crop (largest face, upsample 1)."""
    rects = models.detector(crop, 1)
    assert len(rects), "no face found again in the crop"
    rect = max(rects, key=lambda r: r.width() * r.height())
    return P.landmarks5(crop, P._box(rect), models)


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
        dist = np.linalg.norm(keypoints_in_crop(crop.image, models)
                              - keypoints_in_crop(ref.image, models), axis=1).mean()
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


# ----------------------------------------------------------------------------- layouts

def _ffpp_tree(root: Path, c: str = "c23", masks: bool = True) -> None:
    splits = {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}
    for s, pairs in splits.items():
        (root / f"{s}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{s}.json").write_text(json.dumps(pairs))
    for i in range(6):
        U.touch(root / f"original_sequences/youtube/{c}/videos/{i:03d}.mp4")
    for m in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
        for a, b in (("000", "001"), ("001", "000"), ("004", "005")):
            U.touch(root / f"manipulated_sequences/{m}/{c}/videos/{a}_{b}.mp4")
            if masks:
                U.touch(root / f"manipulated_sequences/{m}/masks/videos/{a}_{b}.mp4")


def test_layout_ffpp(tmp_path):
    _ffpp_tree(tmp_path)
    U.touch(tmp_path / "original_sequences/youtube/c23/videos/999.mp4")  # in no split
    vids = P.list_videos("ff++", tmp_path)
    by = {(v.source, v.video_id): v for v in vids}
    assert len(vids) == 6 + 4 * 3
    assert by[("youtube", "000")].label == 0 and by[("youtube", "000")].split == "train"
    assert by[("youtube", "003")].split == "val" and by[("youtube", "005")].split == "test"
    assert by[("Deepfakes", "001_000")].split == "train" and by[("Deepfakes", "001_000")].label == 1
    assert by[("NeuralTextures", "004_005")].split == "test"
    assert by[("FaceSwap", "000_001")].mask is not None and by[("youtube", "000")].mask is None
    # --splits DIR elsewhere; compression c40 in its own tree
    other = tmp_path / "elsewhere"
    other.mkdir()
    for s in ("train", "val", "test"):
        shutil.move(str(tmp_path / f"{s}.json"), other / f"{s}.json")
    with pytest.raises(P.LayoutError, match="split files"):
        P.list_videos("ff++", tmp_path)
    assert len(P.list_videos("ff++", tmp_path, splits_dir=str(other))) == 18
    # asked for c40 where only c23 exists: the error says what is there
    with pytest.raises(P.LayoutError, match=r"expected original_sequences/youtube/c40.*c23/"):
        P.list_videos("ff++", tmp_path, "c40", splits_dir=str(other))
    assert P.output_name("ff++", "c40") == "ff++-c40" and P.output_name("ff++") == "ff++"


def test_layout_dfd(tmp_path):
    for i in range(3):
        U.touch(tmp_path / f"original_sequences/actors/c23/videos/01__scene{i}.mp4")
    U.touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__scene0__AB.mp4")
    U.touch(tmp_path / "manipulated_sequences/DeepFakeDetection/masks/videos/01_02__scene0__AB.mp4")
    vids = P.list_videos("dfd", tmp_path)
    assert sorted((v.source, v.label, v.split) for v in vids) == \
        [("DeepFakeDetection", 1, "test")] + [("actors", 0, "test")] * 3
    assert [v.mask for v in vids if v.label][0] is not None


def test_layout_cdfv2(tmp_path):
    for f in ("Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "YouTube-real/00000.mp4",
              "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id0_id1_0001.mp4"):
        U.touch(tmp_path / f)
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0001.mp4\n1 YouTube-real/00000.mp4\n")
    by = {(v.source, v.video_id): v for v in P.list_videos("cdfv2", tmp_path)}
    assert len(by) == 5
    real = by[("Celeb-real", "id0_0000")]
    assert (real.split, real.label) == ("test", 0)
    assert by[("Celeb-real", "id0_0001")].split == "train"
    assert (by[("Celeb-synthesis", "id0_id1_0001")].split,
            by[("Celeb-synthesis", "id0_id1_0001")].label) == ("test", 1)
    assert by[("YouTube-real", "00000")].split == "test"


def test_layout_dfdc(tmp_path):
    for n in ("aaa.mp4", "bbb.mp4", "ccc.mp4"):
        U.touch(tmp_path / "test" / "videos" / n)
    (tmp_path / "test" / "labels.csv").write_text(  # with the byte-order mark Excel writes
        "filename,label\naaa.mp4,1\nbbb.mp4,0\nccc.mp4,1\n", encoding="utf-8-sig")
    vids = P.list_videos("dfdc", tmp_path)
    assert sorted((v.video_id, v.label, v.source, v.split) for v in vids) == [
        ("aaa", 1, "fake", "test"), ("bbb", 0, "real", "test"), ("ccc", 1, "fake", "test")]
    assert len(P.list_videos("dfdc", tmp_path / "test")) == 3  # root = the test folder itself


def test_layout_dfdcp(tmp_path):
    entries = {"method_A/1/1_A/111_1_A.mp4": {"label": "fake", "set": "test"},
               "method_B/2/2_B/222_2_B.mp4": {"label": "fake", "set": "train"},
               "original_videos/1/1_A.mp4": {"label": "real", "set": "test"},
               "original_videos/2/2_B.mp4": {"label": "real", "set": "train"}}
    for rel in entries:
        U.touch(tmp_path / rel)
    (tmp_path / "dataset.json").write_text(json.dumps(entries))
    vids = P.list_videos("dfdcp", tmp_path)
    assert sorted((v.source, v.video_id, v.label, v.split) for v in vids) == [
        ("method_A", "111_1_A", 1, "test"), ("method_B", "222_2_B", 1, "train"),
        ("original_videos", "1_A", 0, "test"), ("original_videos", "2_B", 0, "train")]


def test_layout_ffiw(tmp_path):
    for split in ("train", "val"):
        U.touch(tmp_path / "FFIW10K-v1-release" / "source" / split / "00001.mp4")
        U.touch(tmp_path / "FFIW10K-v1-release" / "target" / split / "00001.mp4")
    U.touch(tmp_path / "FFIW10K-v1-release-test" / "source" / "test" / "00002.mp4")
    U.touch(tmp_path / "FFIW10K-v1-release-test" / "target" / "test" / "00002.mp4")
    vids = P.list_videos("ffiw", tmp_path)
    assert sorted((v.split, v.source, v.label) for v in vids) == [
        ("test", "source", 0), ("test", "target", 1), ("train", "source", 0),
        ("train", "target", 1), ("val", "source", 0), ("val", "target", 1)]
    # the release folder itself as root works too
    assert len(P.list_videos("ffiw", tmp_path / "FFIW10K-v1-release")) == 4


def test_layout_dsv1_and_folder(tmp_path):
    ds = tmp_path / "ds"
    U.touch(ds / "train" / "real" / "a" / "x.mp4")
    U.touch(ds / "train" / "fake-lipsync" / "x.mp4")
    U.touch(ds / "test" / "real" / "y.mp4")
    U.touch(ds / "test" / "fake-faceswap" / "m1" / "y.mp4")
    U.touch(ds / "test" / "fake-faceswap" / "m2" / "y.mp4")  # same stem: ids must differ
    vids = P.list_videos("dsv1", ds)
    assert sorted((v.split, v.source, v.video_id, v.label) for v in vids) == [
        ("test", "fake-faceswap", "m1__y", 1), ("test", "fake-faceswap", "m2__y", 1),
        ("test", "real", "y", 0), ("train", "fake-lipsync", "x", 1), ("train", "real", "x", 0)]
    folder = tmp_path / "mine"
    U.touch(folder / "my_real_clips" / "a.mp4")
    U.touch(folder / "generated" / "b.avi")
    U.touch(folder / "generated" / "c.png")
    U.touch(folder / "generated" / "notes.txt")
    vids = P.list_videos("folder", folder)
    assert sorted((v.split, v.source, v.video_id, v.label) for v in vids) == [
        ("test", "generated", "b", 1), ("test", "generated", "c", 1),
        ("test", "my_real_clips", "a", 0)]


def test_layout_same_stem_never_shares_a_folder(tmp_path):
    """clip.mp4 and clip.png of one source get their own folders; a folder named test inside
    a `folder` dataset is a source (folder has no splits); ids that would still collide stop
    the listing instead of overwriting each other's crops."""
    U.touch(tmp_path / "fake" / "clip.mp4")
    U.touch(tmp_path / "fake" / "clip.png")
    U.touch(tmp_path / "test" / "x.mp4")
    vids = P.list_videos("folder", tmp_path)
    assert sorted((v.split, v.source, v.video_id) for v in vids) == [
        ("test", "fake", "clip.mp4"), ("test", "fake", "clip.png"), ("test", "test", "x")]
    U.touch(tmp_path / "fake" / "a__b.mp4")
    U.touch(tmp_path / "fake" / "a" / "b.mp4")
    U.touch(tmp_path / "fake" / "c" / "b.mp4")
    with pytest.raises(P.LayoutError, match="would both be written to test/fake/a__b.mp4"):
        P.list_videos("folder", tmp_path)


@pytest.mark.parametrize("dataset", ["ff++", "cdfv2", "dfdc", "dfdcp"])
def test_malformed_listing_file_is_one_error(tmp_path, dataset):
    """A broken split/label file names itself and what it should hold (no traceback)."""
    if dataset == "ff++":
        _ffpp_tree(tmp_path)
        (tmp_path / "val.json").write_text('[["002"]]')
        bad = "val.json"
    elif dataset == "cdfv2":
        for s in ("Celeb-real", "Celeb-synthesis", "YouTube-real"):
            U.touch(tmp_path / s / "a.mp4")
        (tmp_path / "List_of_testing_videos.txt").write_text("Celeb-real/a.mp4\n")
        bad = "List_of_testing_videos.txt"
    elif dataset == "dfdc":
        U.touch(tmp_path / "test" / "a.mp4")
        (tmp_path / "test" / "labels.csv").write_text("filename,is_fake\na.mp4,1\n")
        bad = "labels.csv"
    else:
        U.touch(tmp_path / "a.mp4")
        (tmp_path / "dataset.json").write_text('{"a.mp4": {"label": "fake"')
        bad = "dataset.json"
    with pytest.raises(P.LayoutError, match=f"{bad} is not "):
        P.list_videos(dataset, tmp_path)
    with pytest.raises(SystemExit, match=f"^error: .*{bad} is not "):
        P.main(["--dataset", dataset, "--root", str(tmp_path), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("dataset", P.DATASETS)
def test_wrong_root_says_expected_and_found(tmp_path, dataset):
    (tmp_path / "holiday_photos").mkdir()
    with pytest.raises(P.LayoutError) as e:
        P.list_videos(dataset, tmp_path)
    msg = str(e.value)
    assert "expected" in msg and "found" in msg and "holiday_photos" in msg, msg
    with pytest.raises(SystemExit, match="expected"):
        P.main(["--dataset", dataset, "--root", str(tmp_path), "--out", str(tmp_path / "o")])


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory, face_video) -> Path:
    """A tiny FF++ tree with real faces, a two-person fake with a mask, and bad inputs."""
    root = tmp_path_factory.mktemp("ffpp")
    _ffpp_tree(root, masks=False)
    for p in root.rglob("*.mp4"):
        p.unlink()
    real = root / "original_sequences/youtube/c23/videos"
    shutil.copy(face_video, real / "000.mp4")                      # fine
    U.touch(real / "001.mp4")                                       # zero bytes
    cut = U.write_video(real / "002.mp4", U.face_frames(6, (320, 240)))
    cut.write_bytes(cut.read_bytes()[:2000])                        # truncated: unreadable
    U.blank_video(real / "003.mp4", 5)                              # no face
    U.write_video(real / "004.mp4", U.face_frames(3, (320, 240), seed=3))  # < 32 frames
    # a fake with two people; the mask marks the smaller, right one as manipulated
    frames, masks = [], []
    for k in range(3):
        f = U.place_face((640, 360), (180 + 5 * k, 160), 1.8)
        frames.append(U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=f))
        m = np.zeros((360, 640, 3), np.uint8)
        m[90:230, 430:570] = 255
        masks.append(m)
    U.write_video(root / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4", frames)
    U.write_video(root / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4", masks)
    U.write_video(root / "manipulated_sequences/Face2Face/c23/videos/004_005.mp4", frames)
    return root


def test_end_to_end_ffpp_bad_inputs_and_resume(ffpp_root, tmp_path, models, capsys):
    out = tmp_path / "data"
    args = ["--dataset", "ff++", "--root", str(ffpp_root), "--out", str(out), "--workers", "1",
            "--frames", "32"]
    assert P.main(args) == 0
    ds = out / "ff++"
    failures = {r["video_id"]: r for r in read_csv(ds / "failures.csv")}
    assert set(failures) == {"001", "002", "003"}
    assert "empty" in failures["001"]["reason"] and "no face" in failures["003"]["reason"]
    assert failures["001"]["file"] == "original_sequences/youtube/c23/videos/001.mp4"

    train = read_csv(ds / "train" / "index.csv")
    assert list(train[0]) == ["video_id", "source", "label", "n_frames", "path", "file"]
    rows = {(r["source"], r["video_id"]): r for r in train}
    assert set(rows) == {("youtube", "000"), ("Deepfakes", "000_001")}
    assert rows[("youtube", "000")]["label"] == "0"
    assert rows[("Deepfakes", "000_001")]["label"] == "1"
    assert rows[("youtube", "000")]["n_frames"] == "8"
    assert rows[("youtube", "000")]["path"] == "youtube/000"
    video = ds / "train" / "youtube" / "000"
    assert sorted(int(p.stem) for p in video.glob("*.png")) == list(range(8))
    crop = cv2.imread(str(video / "5.png"))
    assert crop.shape == (256, 256, 3)
    meta = json.loads((video / "meta.json").read_text())
    assert meta["frames"] == list(range(8)) and meta["label"] == 0 and meta["n_no_face"] == 0
    assert np.array(meta["keypoints"]).shape == (8, 5, 2) and len(meta["scores"]) == 8
    # the mask picked the manipulated (right, smaller) person; without a mask: the largest
    fake = json.loads((ds / "train" / "Deepfakes" / "000_001" / "meta.json").read_text())
    assert fake["mask_used"] and fake["n_people"] == 2 and all(b[0] > 330 for b in fake["boxes"])
    f2f = json.loads((ds / "test" / "Face2Face" / "004_005" / "meta.json").read_text())
    assert not f2f["mask_used"] and all(b[2] < 330 for b in f2f["boxes"])
    # shorter than 32 frames: all of them
    short = json.loads((ds / "test" / "youtube" / "004" / "meta.json").read_text())
    assert short["sampled_frames"] == [0, 1, 2]
    out1 = capsys.readouterr().out
    assert "done 4, skipped 0" in out1 and "failed 3" in out1

    # second run: everything skipped, nothing rewritten
    stamp = (video / "meta.json").stat().st_mtime_ns
    P.main(args)
    assert "done 0, skipped 7 (3 failed before), failed 0" in capsys.readouterr().out
    assert (video / "meta.json").stat().st_mtime_ns == stamp

    # a killed run: the final folder never appeared, a half-written temporary one is left
    shutil.rmtree(video)
    tmp = P.tmp_dir(video)
    tmp.mkdir()
    (tmp / "0.png").write_bytes(b"half")
    P.main(args)
    assert "done 1, skipped 6" in capsys.readouterr().out
    assert not tmp.exists() and len(list(video.glob("*.png"))) == 8
    assert len(read_csv(ds / "train" / "index.csv")) == 2


def test_folder_dataset_with_workers(face_video, tmp_path, capsys):
    """Two worker processes, the 'folder' layout, images and videos, and a --split filter."""
    root = tmp_path / "mine"
    (root / "real").mkdir(parents=True)
    shutil.copy(face_video, root / "real" / "clip.mp4")
    U.write_video(root / "fake" / "short.mp4", U.face_frames(2, (320, 240), seed=5))
    cv2.imwrite(str(root / "fake" / "still.png"),
                cv2.cvtColor(U.face_frames(1, seed=6)[0], cv2.COLOR_RGB2BGR))
    out = tmp_path / "data"
    assert P.main(["--dataset", "folder", "--root", str(root), "--out", str(out),
                   "--workers", "2", "--frames", "4", "--split", "test"]) == 0
    rows = {r["video_id"]: r for r in read_csv(out / "folder" / "test" / "index.csv")}
    assert set(rows) == {"clip", "short", "still"}
    assert rows["clip"]["n_frames"] == "4" and rows["still"]["n_frames"] == "1"
    assert (out / "folder" / "test" / "real" / "clip" / "7.png").is_file()  # linspace(0, 7, 4)
    assert rows["clip"]["label"] == "0" and rows["short"]["label"] == "1"
    assert "failed 0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no split 'train'"):
        P.main(["--dataset", "folder", "--root", str(root), "--out", str(out), "--split", "train"])


def test_odd_but_legal_inputs(tmp_path, capsys):
    """Spaces in paths, upper-case extensions, .avi, a 1-frame video, an all-black video, a
    video and an image with one stem, and a half-written video folder from an old run."""
    root = tmp_path / "my data"
    real = root / "real clips"
    U.write_video(real / "black.mp4", [np.zeros((120, 160, 3), np.uint8)] * 3)
    U.write_video(real / "one.MP4", U.face_frames(1, (320, 240), seed=7))
    U.write_video(real / "clip.avi", U.face_frames(2, (320, 240), seed=8), fourcc="MJPG")
    cv2.imwrite(str(real / "clip.png"),
                cv2.cvtColor(U.face_frames(1, (320, 240), seed=9)[0], cv2.COLOR_RGB2BGR))
    out = tmp_path / "out dir"
    stale = out / "folder" / "test" / "real clips" / "one"
    U.touch(stale / "99.png")  # no meta.json: not finished, so it is redone from scratch
    assert P.main(["--dataset", "folder", "--root", str(root), "--out", str(out),
                   "--workers", "1"]) == 0
    assert "done 3, skipped 0 (0 failed before), failed 1" in capsys.readouterr().out
    rows = {r["video_id"]: r for r in read_csv(out / "folder" / "test" / "index.csv")}
    assert {k: r["n_frames"] for k, r in rows.items()} == \
        {"one": "1", "clip.avi": "2", "clip.png": "1"}
    assert rows["one"]["file"] == "real clips/one.MP4" and rows["one"]["path"] == "real clips/one"
    assert sorted(p.name for p in stale.iterdir()) == ["0.png", "meta.json"]
    failures = read_csv(out / "folder" / "failures.csv")
    assert [(f["video_id"], f["reason"]) for f in failures] == \
        [("black", "no face in 3 sampled frames")]


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    U.touch(tmp_path / "mine" / "real" / "a.mp4")
    common = ["--dataset", "folder", "--workers", "1"]
    with pytest.raises(SystemExit):
        P.main(common + ["--root", str(tmp_path / "mine"), "--frames", "0"])
    assert "--frames: expected a number > 0, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"expected a folder; found: .*a.mp4 is a file"):
        P.main(common + ["--root", str(tmp_path / "mine" / "real" / "a.mp4")])
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(SystemExit, match="^error: .*taken"):
        P.main(common + ["--root", str(tmp_path / "mine"), "--out", str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match="expected a dlib shape predictor"):
        P.load_face_models(str(tmp_path / "taken"))


def test_no_arguments_scans_datasets_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no dataset found"):
        P.main([])
    out = capsys.readouterr().out
    assert "missing ff++" in out and "github.com/ondyari/FaceForensics" in out
    # a dataset folder with the wrong layout is reported with the reason
    (tmp_path / "datasets" / "DFDC").mkdir(parents=True)
    with pytest.raises(SystemExit):
        P.main([])
    assert "not usable: --root datasets/DFDC is not a DFDC folder" in capsys.readouterr().out
    # a found dataset is processed (here: an empty Celeb-DF-v2 tree with only the listing)
    base = tmp_path / "datasets" / "Celeb-DF-v2"
    for s in ("Celeb-real", "Celeb-synthesis", "YouTube-real"):
        (base / s).mkdir(parents=True)
    U.blank_video(base / "Celeb-real" / "id0_0000.mp4", 2)
    (base / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n")
    assert P.main(["--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "found   cdfv2" in out and "missing dfdc" in out and "cdfv2: done 0, skipped 0" in out
    # a split one found dataset lacks skips that dataset, not the whole run
    assert P.main(["--workers", "1", "--split", "val"]) == 0
    assert "skipped cdfv2: cdfv2 at datasets/Celeb-DF-v2 has no split 'val'" in \
        capsys.readouterr().out
    assert (tmp_path / "data" / "cdfv2" / "failures.csv").is_file()
