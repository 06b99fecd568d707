"""Tests for preprocess.py: the protocol (crops, alignment, people, frame sampling) and the command
line end to end (bad inputs, resume, workers, one-line errors). Layouts: test_layouts.py; the face
search: test_face_search.py; the job pool, shards and failure ledger: test_jobs.py."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import _video_utils as U
import preprocess as P
from util import jobs, layouts


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


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory, face_video) -> Path:
    """A tiny FF++ tree with real faces, a two-person fake with a mask, and bad inputs."""
    root = tmp_path_factory.mktemp("ffpp")
    U.ffpp_tree(root)
    for p in root.rglob("*.mp4"):  # the listing stays; the videos are made below
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
    failures = {r["video_id"]: r for r in U.read_csv(ds / "failures.csv")}
    assert set(failures) == {"001", "002", "003"}
    assert "empty" in failures["001"]["reason"] and "no face" in failures["003"]["reason"]
    assert failures["001"]["file"] == "original_sequences/youtube/c23/videos/001.mp4"

    train = U.read_csv(ds / "train" / "index.csv")
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
    tmp = jobs.tmp_dir(video)
    tmp.mkdir()
    (tmp / "0.png").write_bytes(b"half")
    P.main(args)
    assert "done 1, skipped 6" in capsys.readouterr().out
    assert not tmp.exists() and len(list(video.glob("*.png"))) == 8
    assert len(U.read_csv(ds / "train" / "index.csv")) == 2


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
    rows = {r["video_id"]: r for r in U.read_csv(out / "folder" / "test" / "index.csv")}
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
    rows = {r["video_id"]: r for r in U.read_csv(out / "folder" / "test" / "index.csv")}
    assert {k: r["n_frames"] for k, r in rows.items()} == \
        {"one": "1", "clip.avi": "2", "clip.png": "1"}
    assert rows["one"]["file"] == "real clips/one.MP4" and rows["one"]["path"] == "real clips/one"
    assert sorted(p.name for p in stale.iterdir()) == ["0.png", "meta.json"]
    failures = U.read_csv(out / "folder" / "failures.csv")
    assert [(f["video_id"], f["reason"]) for f in failures] == \
        [("black", "no face in 3 sampled frames")]


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    U.touch(tmp_path / "mine" / "real" / "a.mp4")
    common = ["--dataset", "folder", "--workers", "1"]
    with pytest.raises(SystemExit):
        P.main(common + ["--root", str(tmp_path / "mine"), "--frames", "0"])
    assert "--frames: must be above 0, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"expected a folder; found: .*a.mp4 is a file"):
        P.main(common + ["--root", str(tmp_path / "mine" / "real" / "a.mp4")])
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(SystemExit, match="^error: .*taken"):
        P.main(common + ["--root", str(tmp_path / "mine"), "--out", str(tmp_path / "taken")])
    with pytest.raises(ValueError, match="expected a dlib shape predictor"):
        P.load_face_models(str(tmp_path / "taken"))
    with pytest.raises(SystemExit, match="^error: cannot load landmark model .*taken"):
        P.main(common + ["--root", str(tmp_path / "mine"), "--landmarks", str(tmp_path / "taken")])
    with pytest.raises(SystemExit, match="^error: landmark model not found"):
        P.main(common + ["--root", str(tmp_path / "mine"), "--landmarks", str(tmp_path / "no.dat")])


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
    listed, list_videos = [], layouts.list_videos

    def listing(dataset, *args):
        listed.append(dataset)
        return list_videos(dataset, *args)

    monkeypatch.setattr(layouts, "list_videos", listing)
    monkeypatch.setattr(jobs, "list_videos", listing)
    assert P.main(["--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "found   cdfv2" in out and "missing dfdc" in out and "cdfv2: done 0, skipped 0" in out
    assert listed.count("cdfv2") == 1  # found and processed from one walk of its folder
    # a split one found dataset lacks skips that dataset, not the whole run
    assert P.main(["--workers", "1", "--split", "val"]) == 0
    assert "skipped cdfv2: cdfv2 at datasets/Celeb-DF-v2 has no split 'val'" in \
        capsys.readouterr().out
    assert (tmp_path / "data" / "cdfv2" / "failures.csv").is_file()


# ------------------------------------------------------------------------ the real command line

def one_line_error(r, status: int = 1) -> str:
    """The run failed with `status` and one message line, no traceback; returns that line."""
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("flag,value,says", [
    ("--frames", "0", "--frames: must be above 0, got 0"),
    ("--workers", "0", "--workers: must be above 0, got 0"),
    ("--shard", "4/3", "--shard: expected K/N with N >= 1 and K = 0..N-1"),
    ("--shard", "3/3", "K = 0..N-1 (the parts of --shard 0/4 ... 3/4 cover a dataset once), "
                       "got 3/3"),
    ("--shard", "x", "--shard: expected K/N"),
])
def test_bad_flags_stop_at_parse_time(tmp_path, flag, value, says):
    r = U.preprocess_cli("--dataset", "folder", "--root", tmp_path, "--out", tmp_path / "o", flag, value)
    assert says in one_line_error(r, status=2)
    assert not (tmp_path / "o").exists()


LISTING_CASES = {  # case: (dataset, its listing file with one bad row)
    "cdfv2-swapped": ("cdfv2", "Celeb-real/a.mp4 1\nCeleb-synthesis/b.mp4 0\n"),
    "cdfv2-missing": ("cdfv2", "1 Celeb-real/a.mp4\n0 Celeb-synthesis/zzz.mp4\n"),
    "dfdc": ("dfdc", "filename,label\na.mp4,1\na2.mp4,REAL\n"),
    "dfdcp": ("dfdcp", json.dumps({"original_videos/a.mp4": {"label": "real", "set": "val"}})),
    "ff++": ("ff++", '[["004", "005"], ["001", "006"]]'),
}


def _listing_case(root: Path, case: str) -> str:
    """A dataset whose listing file has one bad row (FF++: test.json); returns the dataset name."""
    dataset, content = LISTING_CASES[case]
    listing = U.listing_tree(root, dataset)
    (root / ("test.json" if dataset == "ff++" else listing)).write_text(content)
    return dataset


@pytest.mark.parametrize("case,says", [
    ("cdfv2-swapped", r"List_of_testing_videos.txt line 1: expected `<label> <folder>/<file>.mp4` "
                      r"with label 0 or 1 .*got 'Celeb-real/a.mp4 1'"),
    ("cdfv2-missing", r"List_of_testing_videos.txt line 2: .*Celeb-synthesis/zzz.mp4 does not exist"),
    ("dfdc", r"labels.csv line 3: expected `<file>.mp4,<label>` with label 0 \(real\) or 1 "
             r"\(fake\), got 'a2.mp4,REAL'"),
    ("dfdcp", r'dataset.json entry "original_videos/a.mp4": expected \{"label": "real"\|"fake", '
              r'"set": "train"\|"test"'),
    ("ff++", r"test.json entry 2: id 001 is in train.json too"),
])
def test_bad_listing_row_is_one_line_and_keeps_outputs(tmp_path, case, says):
    """A listing file row that does not parse stops the run before anything is written, with
    the file and line; what earlier runs finished stays as it was."""
    dataset = _listing_case(tmp_path / "ds", case)
    finished = tmp_path / "o" / dataset / "test" / "index.csv"
    finished.parent.mkdir(parents=True)
    finished.write_text("video_id,source,label,n_frames,path,file\n")
    line = one_line_error(U.preprocess_cli("--dataset", dataset, "--root", tmp_path / "ds",
                                           "--out", tmp_path / "o", "--workers", "1"))
    assert line.startswith("error: ") and re.search(says, line), line
    assert finished.read_text() == "video_id,source,label,n_frames,path,file\n"
    assert sorted(p.name for p in finished.parent.parent.rglob("*")) == ["index.csv", "test"]
