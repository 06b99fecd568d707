"""Tests for preprocess.py's runner and command line: end to end runs, resume, bad inputs,
workers, shards, signals and a full disk. Most go through the real command line (a
subprocess: exit status, one-line message, no traceback)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import _video_utils as U
from util import layouts
import preprocess as P
from util import files


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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
    monkeypatch.setattr(P, "list_videos", listing)
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

REPO = Path(__file__).resolve().parent.parent
NOT_SLURM = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def cli(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python preprocess.py ARGS` as a user runs it (no SLURM variables unless given)."""
    return subprocess.run([sys.executable, "preprocess.py", *map(str, args)], cwd=REPO,
                          env={**NOT_SLURM, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, status: int = 1) -> str:
    """The run failed with `status` and one message line, no traceback; returns that line."""
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


def tree(folder: Path) -> dict[str, bytes]:
    """Every output file below `folder` by relative path (not the lock, not the shards'
    failure files, which are bookkeeping)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock" and not p.name.startswith("failures.shard-")}


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    """A `folder` dataset of eight tiny videos, two without a face (failures.csv not empty)."""
    root = tmp_path_factory.mktemp("small")
    for k in range(3):
        U.write_video(root / "real" / f"r{k}.mp4", U.face_frames(2, (320, 240), seed=10 + k))
        U.write_video(root / "fake" / f"f{k}.mp4", U.face_frames(2, (320, 240), seed=20 + k))
    U.blank_video(root / "fake" / "blank.mp4", 2)
    U.blank_video(root / "real" / "empty room.mp4", 2)
    return root


@pytest.fixture(scope="module")
def six_copies(tmp_path_factory, face_video) -> Path:
    """Six copies of the 640x480 face video (~1 s each): runs long enough to be signalled,
    and every copy must give the same crops."""
    root = tmp_path_factory.mktemp("six")
    (root / "real").mkdir()
    for k in range(6):
        shutil.copy(face_video, root / "real" / f"v{k}.mp4")
    return root


@pytest.mark.parametrize("flag,value,says", [
    ("--frames", "0", "--frames: expected a number > 0, got 0"),
    ("--workers", "0", "--workers: expected a number > 0, got 0"),
    ("--shard", "4/3", "--shard: expected K/N with N >= 1 and K = 0..N-1"),
    ("--shard", "3/3", "K = 0..N-1 (the parts of --shard 0/4 ... 3/4 cover a dataset once), "
                       "got 3/3"),
    ("--shard", "x", "--shard: expected K/N"),
])
def test_bad_flags_stop_at_parse_time(tmp_path, flag, value, says):
    r = cli("--dataset", "folder", "--root", tmp_path, "--out", tmp_path / "o", flag, value)
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
    import re
    dataset = _listing_case(tmp_path / "ds", case)
    finished = tmp_path / "o" / dataset / "test" / "index.csv"
    finished.parent.mkdir(parents=True)
    finished.write_text("video_id,source,label,n_frames,path,file\n")
    line = one_line_error(cli("--dataset", dataset, "--root", tmp_path / "ds",
                              "--out", tmp_path / "o", "--workers", "1"))
    assert line.startswith("error: ") and re.search(says, line), line
    assert finished.read_text() == "video_id,source,label,n_frames,path,file\n"
    assert sorted(p.name for p in finished.parent.parent.rglob("*")) == ["index.csv", "test"]


def test_shards_give_the_files_of_one_run(small_folder, tmp_path, capsys):
    """Three shards (the middle one a command in a SLURM array task, ids from 10) write the
    same crops, meta.json, index.csv and failures.csv as one run; a shard run twice and the
    closing run without --shard redo nothing."""
    one, parts = tmp_path / "one", tmp_path / "parts"
    args = ["--dataset", "folder", "--root", str(small_folder), "--workers", "1"]
    assert P.main(args + ["--out", str(one)]) == 0
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
             "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_COUNT": "3"}
    videos = P.list_videos("folder", small_folder)
    capsys.readouterr()
    for k in range(3):
        if k == 1:
            r = cli(*args, "--out", parts, env=slurm)
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            out = r.stdout
            assert "shard 1/3 (from SLURM_ARRAY_TASK_ID=11 SLURM_ARRAY_TASK_MIN=10" in out
        else:
            assert P.main(args + ["--out", str(parts), "--shard", f"{k}/3"]) == 0
            out = capsys.readouterr().out
        mine = [v for v in videos if P.Shard(k, 3).owns((v.split, v.source, v.video_id))]
        assert f"(shard {k}/3: {len(mine)} of 8), 0 already done" in out, out
        assert (parts / "folder" / f"failures.shard-{k}-of-3.csv").exists() == \
            any(v.video_id in ("blank", "empty room") for v in mine)
    assert 0 < len(mine) < 8
    ref = tree(one / "folder")
    assert tree(parts / "folder") == ref
    assert len(read_csv(one / "folder" / "failures.csv")) == 2
    assert len(read_csv(one / "folder" / "test" / "index.csv")) == 6
    stamps = {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")}
    assert P.main(args + ["--out", str(parts), "--shard", "2/3"]) == 0
    assert f"{len(mine)} videos in" in (out := capsys.readouterr().out) and "0 to process" in out
    assert P.main(args + ["--out", str(parts)]) == 0
    assert "6 already done, 2 failed before (--retry-failed to redo), 0 to process" in \
        capsys.readouterr().out
    assert tree(parts / "folder") == ref and not list(parts.rglob("failures.shard-*"))
    assert {p: p.stat().st_mtime_ns for p in parts.rglob("meta.json")} == stamps


def test_slurm_array_variables_pick_the_shard():
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    assert P.shard_from_env(env)[0] == P.Shard(1, 3)
    assert P.shard_from_env({}) is None
    assert P.shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "16"})[0] == \
        P.Shard(0, 16)
    # --array=4-10:2 -> ids 4, 6, 8, 10 -> shards 0..3 of 4 (no COUNT: from MAX)
    assert P.shard_from_env({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "4",
                             "SLURM_ARRAY_TASK_MAX": "10", "SLURM_ARRAY_TASK_STEP": "2"})[0] == \
        P.Shard(2, 4)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=9 .*pass --shard K/N"):
        P.shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1",
                          "SLURM_ARRAY_TASK_COUNT": "3"})  # --array=1,4,9
    # the split is by (split, source, video id) alone: stable, and every video in one shard
    keys = [("test", "real", f"v{i}") for i in range(300)]
    counts = [sum(P.Shard(k, 4).owns(key) for key in keys) for k in range(4)]
    assert sum(counts) == 300 and min(counts) > 50
    assert [P.Shard(k, 4).owns(("train", "youtube", "000")) for k in range(4)] == \
        [False, False, False, True]  # sha1-based: the same on every machine and Python


def test_sigterm_stops_cleanly_and_the_rerun_finishes(six_copies, tmp_path):
    """SIGTERM (a scheduler's time limit) stops like Ctrl-C: one line, status 1, the videos in
    flight finished, no half folder; the rerun does only the rest and every copy of the video
    gives the same crops."""
    out = tmp_path / "o"
    real = out / "folder" / "test" / "real"
    cmd = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(six_copies),
           "--out", str(out), "--workers", "2", "--frames", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=NOT_SLURM, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(real.glob("*/meta.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == \
        "interrupted: finished videos are kept; run the same command again to continue"
    kept = {p.name: (p / "meta.json").stat().st_mtime_ns for p in real.iterdir()}
    assert all(not name.startswith(".") for name in kept)  # no temporary folder left
    assert 1 <= len(kept) <= 5 and not (out / "folder" / "failures.csv").exists()
    r = cli(*cmd[2:], "--workers", "1")  # the same command (one worker: cheaper here)
    assert r.returncode == 0, r.stderr
    assert f"{len(kept)} already done, 0 failed before (--retry-failed to redo), " \
           f"{6 - len(kept)} to process" in r.stdout
    assert {n: (real / n / "meta.json").stat().st_mtime_ns for n in kept} == kept
    crops = {p.name: tree(p) for p in real.iterdir()}
    metas = {n: json.loads(c.pop("meta.json")) for n, c in crops.items()}
    assert len(crops) == 6 and len(crops["v0"]) == 4
    assert all(c == crops["v0"] for c in crops.values())
    assert all(m["frames"] == metas["v0"]["frames"] for m in metas.values())
    assert len(read_csv(out / "folder" / "test" / "index.csv")) == 6


def test_sigkill_leaves_no_orphan_workers(six_copies, tmp_path):
    """kill -9 of the main process (OOM killer, closed SSH session): its pool workers and the
    multiprocessing resource tracker exit within seconds instead of processing on."""
    cmd = [sys.executable, "preprocess.py", "--dataset", "folder", "--root", str(six_copies),
           "--out", str(tmp_path / "o"), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=NOT_SLURM, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.time() + 60
        while len(U.live_children(proc.pid)) < 3 and time.time() < deadline:  # tracker + 2 workers
            time.sleep(0.05)
        time.sleep(0.5)  # the workers are loading models or processing videos
        kids = U.live_children(proc.pid)
        assert len(kids) >= 3, kids
        U.kill_and_wait(proc, kids, seconds=8)
        left = [pid for pid in kids if U.alive(pid)]
        assert not left, f"orphans still running after the main process was killed: {left}"
    finally:  # do not leave them to the other tests
        U.kill_all(proc, kids)


def test_full_disk_is_one_line_and_leaves_nothing_half_written(small_folder, tmp_path,
                                                                monkeypatch):
    """No space left while writing crops, then index.csv: one line each time, no temporary
    folder or file, no video recorded as failed for it, and the rerun finishes the rest
    without redoing a finished video."""
    import errno
    from util import layouts as L
    out = tmp_path / "o"
    args = ["--dataset", "folder", "--root", str(small_folder), "--out", str(out),
            "--workers", "1", "--split", "test"]
    calls, save = [], P._save

    def full_disk_at_5th(path, data):
        calls.append(path)
        if len(calls) == 5:  # the second video's second crop
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        save(path, data)
    monkeypatch.setattr(P, "_save", full_disk_at_5th)
    with pytest.raises(SystemExit) as e:
        P.main(args)
    assert str(e.value) == f"error: no space left on device (writing {calls[-1]}); free some " \
        "space: finished videos are kept; run the same command again to continue"
    ds = out / "folder"
    folders = [p for p in ds.rglob("*") if p.is_dir() and p.parent.parent.name == "test"]
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    assert not [p for p in ds.rglob(".*") if p.name != ".lock"]
    assert not (ds / "failures.csv").exists() or \
        calls[-1].parent.name[len(".tmp-"):] not in (ds / "failures.csv").read_text()
    monkeypatch.setattr(P, "_save", save)
    stamp = (folders[0] / "meta.json").stat().st_mtime_ns

    real_write = files.atomic_write

    def index_disk_full(path, data):
        if Path(path).name == "index.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)
    monkeypatch.setattr(L, "atomic_write", index_disk_full)
    with pytest.raises(SystemExit, match=r"^error: no space left on device \(writing .*index.csv\)"):
        P.main(args)
    assert not (ds / "test" / "index.csv").exists()
    assert not [p for p in ds.rglob(".*") if p.name != ".lock"]
    monkeypatch.setattr(L, "atomic_write", real_write)
    assert P.main(args) == 0
    assert len(read_csv(ds / "test" / "index.csv")) == 6
    assert (folders[0] / "meta.json").stat().st_mtime_ns == stamp
