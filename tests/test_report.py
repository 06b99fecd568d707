"""util/report.py: the report folder of one file (timeline.png, faces.png, saliency.npz,
annotated.mp4, report.json), each output whole, and bad input as one line with nothing else lost."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import _video_utils as U
from util import calibration as C
from util import report as R

W, H, N_FRAMES, FPS = 160, 120, 20, 10
SAMPLED = [0, 5, 10, 15]
BOX1, BOX2 = (20.0, 30.0, 70.0, 90.0), (100.0, 20.0, 150.0, 80.0)


@pytest.fixture
def video(tmp_path) -> Path:
    """20 grey frames, 160x120 at 10 fps."""
    return U.write_video(tmp_path / "clip.mp4", [np.full((H, W, 3), 128, np.uint8)] * N_FRAMES, fps=FPS)


def persons() -> list[R.Person]:
    """Person 1 (fake, p_fake 1) at every sampled frame, person 2 (real, 0) at the first two only."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    maps = rng.random((6, 16, 16)).astype(np.float32)
    one = R.Person(SAMPLED, [BOX1] * 4, list(crops[:4]), [1.0, 1.0, 1.0, 1.0], list(maps[:4]))
    two = R.Person([0, 5], [BOX2] * 2, list(crops[4:]), [0.0, 0.0], list(maps[4:]))
    return [one, two]


def verdict(p_fake: float = 1.0) -> C.Verdict:
    ref = C.build_reference([0] * 4 + [1] * 2, [0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    return C.judge(p_fake, C.choose_threshold(None, ref), ref)


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    frames, fps = [], cap.get(cv2.CAP_PROP_FPS)
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames, fps


def edge(frame: np.ndarray, box) -> np.ndarray:
    """The mean BGR of a box's left edge (2 px wide)."""
    x0, y0, _, y1 = (int(v) for v in box)
    return frame[y0 + 5:y1 - 5, x0:x0 + 2].reshape(-1, 3).mean(0)


def test_report_folder_holds_every_output(tmp_path, video):
    folder = tmp_path / "report" / "clip"
    people, v = persons(), verdict()
    assert R.write_report(folder, video, people, v, frames_seen=4, sampled=SAMPLED) == []
    assert sorted(p.name for p in folder.iterdir()) == ["annotated.mp4", "faces.png", "report.json",
                                                        "saliency.npz", "timeline.png"]  # no temporary file left
    for png in ("timeline.png", "faces.png"):
        assert cv2.imread(str(folder / png)) is not None
    with np.load(folder / "saliency.npz") as maps:
        assert sorted(maps) == sorted([f"person1/frame{f}" for f in SAMPLED] + ["person2/frame0", "person2/frame5"])
        np.testing.assert_array_equal(maps["person1/frame10"], people[0].maps[2])
    report = json.loads((folder / "report.json").read_text())
    assert report["verdict"] == json.loads(json.dumps(v.as_dict()))
    assert report["verdict"]["line"].startswith("p_fake 1.0000 -> FAKE: above 100.0% of the 4 FF++ val real videos")
    assert report["kind"] == "video" and report["frames_seen"] == 4 and report["frames_with_face"] == 4
    assert [p["p_fake"] for p in report["persons"]] == [1.0, 0.0]
    assert [p["label"] for p in report["persons"]] == ["FAKE", "real"]
    assert report["persons"][1]["frames"] == [{"frame": 0, "p_fake": 0.0, "box": list(BOX2)},
                                              {"frame": 5, "p_fake": 0.0, "box": list(BOX2)}]
    assert report["files"] == {"saliency": "saliency.npz", "timeline": "timeline.png", "faces": "faces.png",
                               "annotated": "annotated.mp4"} and report["notes"] == []


def test_annotated_video_keeps_the_input_and_holds_boxes_between_sampled_frames(tmp_path, video):
    folder = tmp_path / "clip"
    R.write_report(folder, video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)
    frames, fps = read_video(folder / "annotated.mp4")
    assert len(frames) == N_FRAMES and frames[0].shape == (H, W, 3) and fps == pytest.approx(FPS)
    red, green = edge(frames[3], BOX1), edge(frames[3], BOX2)  # held from frame 0
    assert red[2] > 180 and red[1] < 90, red                   # person 1: p_fake 1, red (BGR)
    assert green[1] > 150 and green[2] < 90, green             # person 2: p_fake 0, green
    assert abs(edge(frames[12], BOX2) - 128).max() < 25        # not at frame 10: no box from 10 on
    assert edge(frames[19], BOX1)[2] > 180                     # held to the end from frame 15
    top = frames[0][:22, :300].reshape(-1, 3)
    assert (top.max(1) < 40).mean() > 0.5                      # the running score's black band


def test_image_report_has_no_video(tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((H, W, 3), 128, np.uint8))
    one = R.Person([0], [BOX1], [np.zeros((64, 64, 3), np.uint8)], [0.2], [np.zeros((16, 16), np.float32)])
    v = verdict(0.2)
    assert R.write_report(tmp_path / "face", image, [one], v, frames_seen=1, sampled=[0], video=False) == []
    report = json.loads((tmp_path / "face" / "report.json").read_text())
    assert report["kind"] == "image" and "annotated" not in report["files"]
    assert not (tmp_path / "face" / "annotated.mp4").exists()


@pytest.mark.parametrize("damage", ["garbage", "shorter"])
def test_video_that_cannot_be_re_read_loses_only_the_annotation(tmp_path, video, damage):
    folder = tmp_path / "clip"
    R.write_report(folder, video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)  # a past run's
    if damage == "garbage":
        video.write_bytes(b"not a video any more")
        says = f"cannot re-read {video} to write annotated.mp4: OpenCV cannot open or decode it now"
    else:
        U.write_video(video, [np.full((H, W, 3), 128, np.uint8)] * 8, fps=FPS)
        says = f"cannot re-read {video} to write annotated.mp4: it decodes 8 frames now, but frame 15 was scored"
    notes = R.write_report(folder, video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)
    assert notes == [f"{says}; the rest of the report is written"]
    assert sorted(p.name for p in folder.iterdir()) == ["faces.png", "report.json", "saliency.npz", "timeline.png"]
    report = json.loads((folder / "report.json").read_text())
    assert report["files"]["annotated"] is None and report["notes"] == notes


def test_unwritable_report_folder_is_one_line(tmp_path, video):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OSError) as e:
        R.check_folder(blocker / "clip")
    assert str(e.value) == f"cannot write {blocker / 'clip'}: Not a directory"
    with pytest.raises(OSError) as e:
        R.write_report(blocker / "clip", video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)
    assert str(e.value).startswith("cannot write ") and "\n" not in str(e.value)
    R.check_folder(tmp_path / "new" / "clip")  # made, and left empty
    assert list((tmp_path / "new" / "clip").iterdir()) == []


def test_person_of_preprocess_crops():
    track = [SimpleNamespace(frame=3, box=BOX1, image=np.zeros((8, 8, 3), np.uint8)),
             SimpleNamespace(frame=7, box=BOX2, image=np.ones((8, 8, 3), np.uint8))]
    person = R.person_of(track, np.array([0.2, 0.6]), np.zeros((2, 16, 16)))
    assert person.frames == [3, 7] and person.boxes == [BOX1, BOX2] and person.score == pytest.approx(0.4)
    assert person.maps[0].dtype == np.float32
    with pytest.raises(ValueError, match="2 crops, 1 scores and 2 maps"):
        R.person_of(track, [0.2], np.zeros((2, 16, 16)))


def test_file_verdict_names_a_person_judged_differently(capsys):
    """(Moved from test_evaluate.py, where evaluate.report was: the line now states the threshold and
    its source, and the frames with a face follow it.)"""
    people = [R.Person([0, 1, 2], [BOX1] * 3, [None] * 3, [0.2] * 3, None), R.Person([1], [BOX2], [None], [0.9], None)]
    rows = R.say_verdict(Path("v.mp4"), 4, people, C.choose_threshold(None, None), None)
    line = capsys.readouterr().out.splitlines()
    assert line[0] == ("v.mp4: p_fake 0.2000 -> real: threshold 0.5000 (uncalibrated: no reference scores for "
                       "this checkpoint; make them with evaluate.py --calibrate); 3/4 frames with a face; 2 people, "
                       "score of person 1, the largest; person 2 FAKE")
    assert line[1:] == ["    person 1: p_fake 0.2000 -> real (3 frames)",
                        "    person 2: p_fake 0.9000 -> FAKE (1 frame)"]
    assert [(r["person"], r["frames_with_face"], r["p_fake"]) for r in rows] == \
        [(None, 3, pytest.approx(0.2)), (1, 3, pytest.approx(0.2)), (2, 1, 0.9)]
    assert list(rows[0]) == R.FIELDS and rows[0]["threshold"] == "0.500000" and rows[0]["rank"] == ""


def test_verdict_against_a_reference_states_the_rank_and_the_threshold(capsys):
    """The threshold the reference gives (its equal error rate) decides, not 0.5; the rank and the
    conformal p-value go to predictions.csv's last columns."""
    ref = C.build_reference([0] * 4 + [1] * 2, [0.1, 0.2, 0.3, 0.4, 0.8, 0.9])
    threshold = C.choose_threshold(None, ref)
    assert 0.4 <= threshold.value < 0.8
    people = [R.Person([0, 5], [BOX1] * 2, [None] * 2, [0.4, 0.4], None)]
    rows = R.say_verdict(Path("v.mp4"), 2, people, threshold, ref)
    assert capsys.readouterr().out.splitlines() == [
        f"v.mp4: p_fake 0.4000 -> real: above 75.0% of the 4 FF++ val real videos; threshold {threshold.value:.4f} "
        "(equal error rate on FF++ val); 2/2 frames with a face"]
    assert rows == [R.row(Path("v.mp4"), None, 2, 2, C.judge(0.4, threshold, ref), "")]
    assert rows[0]["rank"] == "0.750000" and rows[0]["p_value"] == f"{2 / 5:.6f}"
    assert R.row(Path("x.png"), note="no face found") == {
        "file": "x.png", "person": None, "frames_seen": 0, "frames_with_face": 0, "p_fake": None,
        "note": "no face found", "threshold": "", "rank": "", "p_value": ""}


def test_faces_png_of_a_dense_run_shows_evenly_spaced_crops(tmp_path):
    n = R.SHOWN * 3
    person = R.Person(list(range(n)), [BOX1] * n, [np.zeros((8, 8, 3), np.uint8)] * n, [0.5] * n,
                      [np.zeros((4, 4), np.float32)] * n)
    assert R.shown(person) == np.linspace(0, n - 1, R.SHOWN).round().astype(int).tolist()
    image = cv2.imdecode(np.frombuffer(R.faces_png([person], C.Threshold(0.5, "x")), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[0] < 28 + (R.SHOWN // R.COLUMNS) * (24 + 2 * R.TILE) + 8  # 8 rows, not 24
    with pytest.raises(ValueError, match="a saliency map of every crop"):
        R.write_report(tmp_path / "x", tmp_path / "x.png", [R.Person([0], [BOX1], [None], [0.5], None)],
                       verdict(), frames_seen=1, sampled=[0], video=False)


def test_colour_runs_from_real_over_the_threshold_to_fake():
    assert R.colour(0.0, 0.4) == (0, 200, 0)
    assert R.colour(0.4, 0.4) == (0, 220, 255)
    assert R.colour(1.0, 0.4) == (0, 0, 255)
    assert R.colour(0.0, 0.0) == (0, 220, 255) and R.colour(1.0, 1.0) == (0, 220, 255)
