"""Tests for preprocess.py's runner and command line: end to end runs, resume, bad inputs,
workers, shards, signals and a full disk. Most go through the real command line (a
subprocess: exit status, one-line message, no traceback)."""
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


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory, face_video) -> Path:
    """A tiny FF++ tree with real faces, a two-person fake with a mask, and bad inputs."""
    root = tmp_path_factory.mktemp("ffpp")
    U.ffpp_tree(root, masks=False)
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
