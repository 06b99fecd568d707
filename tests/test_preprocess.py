"""preprocess.py: the protocol (crops equal the reference procedure's, people, frame sampling) and the
command line end to end (bad inputs, resume); workers, shards and signals: test_jobs.py."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

import _video_utils as U
import preprocess as P
from util import jobs


def test_similarity_transform_is_the_least_squares_fit():
    rng = np.random.RandomState(0)
    src, template = rng.uniform(0, 500, (5, 2)), P.crop_template(256, 1.3)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        ref = SimilarityTransform.from_estimate(src, template)
    else:
        ref = SimilarityTransform()
        ref.estimate(src, template)
    assert np.allclose(P.similarity_transform(src, template), ref.params[:2], atol=1e-8)
    a = np.deg2rad(7)  # an exact similarity is recovered exactly
    true = np.array([[1.3 * np.cos(a), -1.3 * np.sin(a), 10], [1.3 * np.sin(a), 1.3 * np.cos(a), -4]])
    assert np.allclose(P.similarity_transform(src, src @ true[:, :2].T + true[:, 2]), true)


def test_crops_match_reference_procedure(face_video, models):
    indices, frames = P.read_frames(face_video, 32)
    assert indices == list(range(8))
    # detect_side 320 halves the 640x480 frames: the downscaled search and the box mapping run
    people = P.face_tracks(frames, indices, models, detect_side=320)
    assert len(people) == 1 and len(people[0]) == 8
    for crop in people[0]:
        ref = P.reference_crop(frames[crop.frame], models)
        assert np.abs(crop.keypoints - ref.keypoints).max() <= 1.0  # the reference's, within 1 px
        # keypoints found again in both crops agree within 2 px
        dist = np.linalg.norm(U.keypoints_in_crop(crop.image, models)
                              - U.keypoints_in_crop(ref.image, models), axis=1).mean()
        assert dist < 2.0, f"frame {crop.frame}: {dist:.2f} px from the reference crop"


def test_people_masks_and_persons(models):
    """Two people, the largest first; a mask over the smaller selects it; persons of the tracks."""
    frames = []
    for k in range(4):
        f = U.place_face((640, 360), (180 + 5 * k, 160), 1.8)
        frames.append(U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=f))
    people = P.face_tracks(frames, [0, 10, 20, 30], models)
    assert len(people) == 2 and [c.frame for c in people[0]] == [0, 10, 20, 30]
    assert all(c.box[2] < 330 for c in people[0]) and all(c.box[0] > 330 for c in people[1])
    mask = np.zeros((360, 640), np.uint8)
    mask[100:220, 440:560] = 255
    assert np.argmax(P.mask_overlaps(people, {i: mask for i in (0, 10, 20, 30)})) == 1
    assert P.mask_overlaps(people, {0: 0 * mask}) == [0, 0]
    assert P.reference_crop(frames[0], models).box[2] < 330  # the reference keeps the largest face
    assert P.reference_crop(np.full((240, 320, 3), 128, np.uint8), models) is None
    assert len(P.persons(people, 4)) == 2
    big, one, badge = people[0], people[1][:1], [dataclasses.replace(c, score=0.1) for c in people[1]]
    assert P.persons([big * 8, one], 32) == [big * 8]  # seen in 1 of 32 frames: not a person
    assert P.persons([big[:2], one], 4) == [big[:2]] and P.persons([big, badge], 4) == [big]  # a false face
    assert P.persons([big[:1], one], 1) == [big[:1], one]  # a still image: every face


def test_the_badge_on_her_suit_is_not_a_person(models):
    """A zoom into the astronaut photo: HOG finds the mission patch on her suit in 3 of 8 frames."""
    frames = []
    for k in range(8):
        m = cv2.getRotationMatrix2D((256, 256), 0, 1.0 + 0.06 * k)
        frames.append(cv2.warpAffine(U.astronaut(), m + [[0, 0, 64 + 6 * k], [0, 0, -16]], (640, 480)))
    tracks = P.face_tracks(frames, list(range(8)), models)
    assert len(tracks) == 2 and P.persons(tracks, 8) == tracks[:1] and len(tracks[0]) == 8


def test_read_frames_lying_container(tmp_path):
    """linspace(0, n-1, frames) over the frames that decode: the header of a cut .avi says 40."""
    assert P.sample_indices(100, 4) == [0, 33, 66, 99] and P.sample_indices(3, 32) == [0, 1, 2]
    path = U.truncated_avi(tmp_path / "cut.avi", n=40, keep=0.5)
    assert int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    cap, plain = cv2.VideoCapture(str(path)), []
    while (frame := cap.read()[1]) is not None:
        plain.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert 10 < len(plain) < 40
    indices, frames = P.read_frames(path, 8)
    assert indices == P.sample_indices(len(plain), 8)
    assert all(np.array_equal(plain[i], f) for i, f in zip(indices, frames))


def test_no_torch_and_no_decoder_noise(tmp_path):
    """No torch in preprocess's (and its workers') imports; a broken video: no "moov atom not found"."""
    video = U.write_video(tmp_path / "v.mp4", U.face_frames(2, (160, 120)))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:48])
    code = ("import sys, preprocess, util.jobs\nassert 'torch' not in sys.modules, 'torch imported'\n"
            f"for path in {[str(cut), str(U.touch(tmp_path / 'empty.mp4'))]!r}:\n"
            "    try: preprocess.read_frames(path); raise SystemExit('read')\n    except ValueError: pass\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=U.REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_end_to_end_ffpp_and_resume(tmp_path, face_video):
    """FF++: faces, bad videos, a fake whose mask covers the smaller face; a killed run; --retry-failed."""
    root, out = tmp_path / "ffpp", tmp_path / "data"
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
    left = U.place_face((640, 360), (180, 160), 1.8)
    frames = [U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=left) for k in range(3)]
    mask = np.zeros((360, 640, 3), np.uint8)
    mask[90:230, 430:570] = 255
    U.write_video(root / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4", frames)
    U.write_video(root / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4", [mask] * 3)
    args = ["--dataset", "ff++", "--root", str(root), "--out", str(out), "--workers", "1"]
    assert P.main(args) == 0
    ds = out / "ff++"
    failures = {r["video_id"]: r["file"] for r in U.read_csv(ds / "failures.csv")}
    assert failures == {f"00{i}": f"original_sequences/youtube/c23/videos/00{i}.mp4" for i in (1, 2, 3)}
    train = U.read_csv(ds / "train" / "index.csv")
    assert list(train[0]) == ["video_id", "source", "label", "n_frames", "path", "file"]
    assert {tuple(r.values())[:5] for r in train} == \
        {("000", "youtube", "0", "8", "youtube/000"), ("000_001", "Deepfakes", "1", "3", "Deepfakes/000_001")}
    video = ds / "train" / "youtube" / "000"
    assert sorted(int(p.stem) for p in video.glob("*.png")) == list(range(8))
    assert cv2.imread(str(video / "5.png")).shape == (256, 256, 3)
    meta = json.loads((video / "meta.json").read_text())
    assert meta["frames"] == list(range(8)) and np.shape(meta["keypoints"]) == (8, 5, 2)
    fake = json.loads((ds / "train" / "Deepfakes" / "000_001" / "meta.json").read_text())
    assert fake["mask_used"] and fake["n_people"] == 2 and all(b[0] > 330 for b in fake["boxes"])
    short = json.loads((ds / "test" / "youtube" / "004" / "meta.json").read_text())
    assert short["sampled_frames"] == [0, 1, 2]  # shorter than 32 frames: all of them
    shutil.rmtree(video)  # a killed run: the folder never appeared, a half-written hidden one is left
    U.touch(jobs.tmp_dir(video) / "0.png")
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("meta.json")}
    assert P.main(args) == 0
    assert not jobs.tmp_dir(video).exists() and len(list(video.glob("*.png"))) == 8
    after = {p: p.stat().st_mtime_ns for p in ds.rglob("meta.json")}
    assert len(after) == len(before) + 1 and before.items() <= after.items()  # only that video redone
    assert len(U.read_csv(ds / "train" / "index.csv")) == 2 and len(U.read_csv(ds / "failures.csv")) == 3
    assert P.main(args + ["--retry-failed"]) == 0  # the failed videos redone (failing again), no other
    assert len(U.read_csv(ds / "failures.csv")) == 3
    assert after == {p: p.stat().st_mtime_ns for p in ds.rglob("meta.json")}


def test_odd_but_legal_inputs(tmp_path):
    """Spaces, upper-case extensions, .avi, 1 frame, all black, a video and an image of one stem."""
    real = tmp_path / "my data" / "real clips"
    U.write_video(real / "black.mp4", [np.zeros((120, 160, 3), np.uint8)] * 3)
    U.write_video(real / "one.MP4", U.face_frames(1, (320, 240), seed=7))
    U.write_video(real / "clip.avi", U.face_frames(2, (320, 240), seed=8), fourcc="MJPG")
    cv2.imwrite(str(real / "clip.png"), U.face_frames(1, (320, 240), seed=9)[0][..., ::-1])
    out = tmp_path / "out dir"
    stale = out / "folder" / "test" / "real clips" / "one"
    U.touch(stale / "99.png")  # no meta.json: not finished, so it is redone from scratch
    assert P.main(["--dataset", "folder", "--root", str(real.parent), "--out", str(out),
                   "--workers", "1"]) == 0
    rows = {r["video_id"]: r for r in U.read_csv(out / "folder" / "test" / "index.csv")}
    assert {k: r["n_frames"] for k, r in rows.items()} == {"one": "1", "clip.avi": "2", "clip.png": "1"}
    assert rows["one"]["file"] == "real clips/one.MP4" and rows["one"]["path"] == "real clips/one"
    assert sorted(p.name for p in stale.iterdir()) == ["0.png", "meta.json"]
    assert [f["video_id"] for f in U.read_csv(out / "folder" / "failures.csv")] == ["black"]


def test_no_arguments_processes_every_dataset_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "datasets" / "Celeb-DF-v2"
    (base / "YouTube-real").mkdir(parents=True)
    U.touch(base / "Celeb-synthesis" / "b.mp4")
    U.blank_video(base / "Celeb-real" / "id0_0000.mp4", 2)
    (base / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n")
    (tmp_path / "datasets" / "DFDC").mkdir()  # the wrong layout: listed as missing, with why
    assert P.main(["--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "ff++" in out and "datasets/DFDC" in out  # missing, and not a DFDC folder
    assert U.read_csv(tmp_path / "data" / "cdfv2" / "failures.csv")[0]["video_id"] == "id0_0000"
    assert P.main(["--workers", "1", "--split", "val"]) == 0  # a dataset without that split is skipped


FOLDER = "--dataset folder --root {tmp}/mine "
BAD_INPUTS = [  # (command line, environment, exit status, what its one line names)
    (FOLDER + "--frames 0", {}, 2, "--frames"), (FOLDER + "--workers 0", {}, 2, "--workers"),
    (FOLDER + "--shard 3/3", {}, 2, "--shard"), (FOLDER + "--shard x", {}, 2, "--shard"),
    ("--root {tmp}/mine", {}, 2, "--root"), ("--dataset folder --root {tmp}/taken", {}, 1, "taken"),
    (FOLDER + "--out {tmp}/taken", {}, 1, "taken"), (FOLDER + "--split train", {}, 1, "--split"),
    (FOLDER + "--landmarks {tmp}/no.dat", {}, 1, "--landmarks"),
    (FOLDER + "--landmarks {tmp}/taken", {}, 1, "--landmarks"),
    (FOLDER, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 1,
     "SLURM_ARRAY_TASK_ID"),  # --array=1,4,9
    ("--dataset cdfv2 --root {tmp}/mine", {}, 1, "mine"),
    ("--dataset dfdc --root {tmp}/dfdc", {}, 1, "labels.csv"),  # a bad row
    ("--dataset ff++ --root {tmp}/ffpp", {}, 1, "test.json"),   # an id in two split files
    ("--dataset dfdc --datasets-dir {tmp}/none", {}, 1, "none"), ("--datasets-dir {tmp}/none", {}, 1, "none"),
]


@pytest.mark.parametrize("command, env, status, named", BAD_INPUTS)
def test_bad_input_is_one_line_naming_it(tmp_path, command, env, status, named, monkeypatch, capsys):
    """One line naming the flag or file, status 2 (usage) or 1, before anything is written."""
    U.touch(tmp_path / "mine" / "real" / "a.mp4")
    (tmp_path / "taken").write_text("a file, not a folder")
    labels = tmp_path / "dfdc" / U.listing_tree(tmp_path / "dfdc", "dfdc")
    labels.write_text("filename,label\na.mp4,1\na2.mp4,REAL\n")
    U.listing_tree(tmp_path / "ffpp", "ff++")
    (tmp_path / "ffpp" / "test.json").write_text('[["004", "005"], ["001", "006"]]')
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "o"
    U.touch(out / "x" / "index.csv").write_text("kept")
    args = command.format(tmp=tmp_path).split()
    with pytest.raises(SystemExit) as e:
        P.main(args + ([] if "--out" in args else ["--out", str(out)]))
    lines = (capsys.readouterr().err if e.value.code == 2 else str(e.value)).strip().splitlines()
    assert (2 if e.value.code == 2 else 1) == status and named in lines[-1], lines
    assert e.value.code == 2 or len(lines) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["x", "x/index.csv"]
    assert (out / "x" / "index.csv").read_text() == "kept"
