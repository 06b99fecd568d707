"""util/report.py: the report folder of one file, each output whole, figures and video that say what
they claim, and bad input as one line with nothing else lost. The saliency maps depend on the model
and on the input (Adebayo et al. 2018): on a tiny detector trained by train.py on crops that differ
only by a bright square planted in the top-left quadrant of fakes, a fake crop's map peaks on the
square (fp32 and bf16); re-randomising changes it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import _video_utils as U
import clip_vit
import data
import train
from util import calibration as C
from util import report as R
from util.layouts import load_videos

W, H, N_FRAMES, FPS = 160, 120, 20, 10
SAMPLED = [0, 5, 10, 15]
BOX1, BOX2 = (20.0, 30.0, 70.0, 90.0), (100.0, 40.0, 150.0, 100.0)
THRESHOLD = C.Threshold(0.4, "a number")


@pytest.fixture
def video(tmp_path) -> Path:
    return U.write_video(tmp_path / "clip.mp4", [np.full((H, W, 3), 128, np.uint8)] * N_FRAMES, fps=FPS)


def persons() -> list[R.Person]:
    """Person 1 at every sampled frame, running score 1, 0.5, 0.33, 0.25; person 2 (0) at the first two."""
    rng = np.random.default_rng(0)
    crops, maps = rng.integers(0, 255, (6, 64, 64, 3), np.uint8), rng.random((6, 16, 16), np.float32)
    return [R.Person(SAMPLED, [BOX1] * 4, list(crops[:4]), [1.0, 0.0, 0.0, 0.0], list(maps[:4])),
            R.Person([0, 5], [BOX2] * 2, list(crops[4:]), [0.0, 0.0], list(maps[4:]))]


def verdict(p_fake: float = 0.25) -> C.Verdict:
    return C.judge(p_fake, THRESHOLD, C.build_reference([0] * 4 + [1] * 2, [0.1, 0.2, 0.3, 0.4, 0.8, 0.9]))


def edge(frame: np.ndarray, box) -> np.ndarray:
    x0, y0, _, y1 = (int(v) for v in box)
    return frame[y0 + 5:y1 - 5, x0:x0 + 2].reshape(-1, 3).mean(0)


def test_report_folder_holds_every_output(tmp_path, video):
    folder, people, v = tmp_path / "report" / "clip", persons(), verdict()
    assert R.write_report(folder, video, people, v, frames_seen=4, sampled=SAMPLED) == []
    assert sorted(p.name for p in folder.iterdir()) == ["annotated.mp4", "faces.png", "report.json",
                                                        "saliency.npz", "timeline.png"]  # no temporary file
    with np.load(folder / "saliency.npz") as maps:
        assert len(maps) == 6 and "person2/frame5" in maps
        np.testing.assert_array_equal(maps["person1/frame10"], people[0].maps[2])
    report = json.loads((folder / "report.json").read_text())
    assert report["verdict"] == json.loads(json.dumps(v.as_dict()))
    assert (report["kind"], report["frames_seen"], report["frames_with_face"]) == ("video", 4, 4)
    assert [(p["p_fake"], p["label"]) for p in report["persons"]] == [(0.25, "real"), (0.0, "real")]
    assert report["persons"][1]["frames"][1] == {"frame": 5, "p_fake": 0.0, "box": list(BOX2)}
    assert report["files"]["annotated"] == "annotated.mp4" and report["notes"] == []


def test_annotated_video_boxes_held_and_coloured_by_the_running_score(tmp_path, video):
    R.write_report(tmp_path / "clip", video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)
    cap, frames = cv2.VideoCapture(str(tmp_path / "clip" / "annotated.mp4")), []
    while (got := cap.read())[0]:
        frames.append(got[1])
    assert (len(frames), frames[0].shape, cap.get(cv2.CAP_PROP_FPS)) == (N_FRAMES, (H, W, 3), FPS)
    fake = [edge(frames[i], BOX1)[2] > 180 > edge(frames[i], BOX1)[1] for i in (3, 7, 12, 19)]
    assert fake == [True, True, False, False]  # frame 5's crop is 0, but the running score stays above 0.4
    assert edge(frames[19], BOX1)[1] > 120 and edge(frames[3], BOX2)[1] > 120  # green, held from 15 / from 0
    assert abs(edge(frames[12], BOX2) - 128).max() < 25  # person 2 not at frame 10: no box from 10 on


def test_faces_caption_colour_agrees_with_the_number_shown_and_a_key_says_how():
    t = C.Threshold(0.461, "x")
    crops, maps = [np.zeros((8, 8, 3), np.uint8)] * 5, [np.zeros((4, 4), np.float32)] * 5
    fig = R.faces_figure([R.Person([0] * 5, [BOX1] * 5, crops, [0.46104, 0.46096, 0.461, 0.9, 0.1], maps)], t)
    captions = [x for x in fig.axes[0].texts if x.get_color() in ("red", "green")]
    assert len(captions) == 5
    for c in captions:
        assert (c.get_color() == "red") == (float(c.get_text().split()[-1]) > 0.461), c.get_text()
    assert any("0.4610" in x.get_text() for x in fig.axes[0].texts if x not in captions)  # the key
    n = R.SHOWN * 3  # a dense run: at most SHOWN crops, 8 rows of them
    dense = R.Person(list(range(n)), [BOX1] * n, crops[:1] * n, [0.5] * n, maps[:1] * n)
    assert R.faces_figure([dense], t).get_figheight() * 100 < 80 + (R.SHOWN // R.COLUMNS) * (24 + 2 * R.TILE)


def test_image_report_has_no_video_and_a_timeline_of_whole_person_numbers(tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.full((H, W, 3), 128, np.uint8))
    one = R.Person([0], [BOX1], [np.zeros((64, 64, 3), np.uint8)], [0.2], [np.zeros((16, 16), np.float32)])
    assert R.write_report(tmp_path / "face", image, [one], verdict(0.2), 1, sampled=[0], video=False) == []
    report = json.loads((tmp_path / "face" / "report.json").read_text())
    assert report["kind"] == "image" and "annotated" not in report["files"]
    ax = R.timeline_figure([one], THRESHOLD, "face.png", video=False).axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 1 < hi and all(t == round(t) for t in ax.get_xticks() if lo <= t <= hi)
    fig = R.faces_figure([one], THRESHOLD)  # one crop: every header and caption whole in the figure
    fig.draw_without_rendering()
    boxes = [t.get_window_extent() for t in fig.axes[0].texts]
    assert all(0 <= box.x0 and box.x1 <= fig.bbox.x1 for box in boxes)


@pytest.mark.parametrize("damage", ["garbage", "shorter"])
def test_video_that_cannot_be_re_read_loses_only_the_annotation(tmp_path, video, damage):
    folder = tmp_path / "clip"
    R.write_report(folder, video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)  # a past run's
    if damage == "garbage":
        video.write_bytes(b"not a video any more")
    else:
        U.write_video(video, [np.full((H, W, 3), 128, np.uint8)] * 8, fps=FPS)
    notes = R.write_report(folder, video, persons(), verdict(), frames_seen=4, sampled=SAMPLED)
    assert len(notes) == 1 and str(video) in notes[0] and "\n" not in notes[0]
    assert not (folder / "annotated.mp4").exists() and len(list(folder.iterdir())) == 4
    report = json.loads((folder / "report.json").read_text())
    assert report["files"]["annotated"] is None and report["notes"] == notes


def test_unwritable_report_folder_is_one_line_naming_it(tmp_path, video):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    for call in (lambda: R.check_folder(blocker / "clip"),
                 lambda: R.write_report(blocker / "clip", video, persons(), verdict(), 4, sampled=SAMPLED)):
        with pytest.raises(OSError) as e:
            call()
        assert str(blocker / "clip") in str(e.value) and "\n" not in str(e.value)


def test_file_verdict_is_the_largest_persons_and_names_one_judged_differently(capsys):
    people = [R.Person([0, 1, 2], [BOX1] * 3, [None] * 3, [0.2] * 3, None),
              R.Person([1], [BOX2], [None], [0.9], None)]
    rows = R.say_verdict(Path("v.mp4"), 4, people, THRESHOLD, None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"v.mp4: {C.judge(0.2, THRESHOLD, None).line()}") \
        and "person 2 FAKE" in lines[0]
    assert [(r["person"], r["frames_with_face"], r["p_fake"]) for r in rows] == \
        [(None, 3, pytest.approx(0.2)), (1, 3, pytest.approx(0.2)), (2, 1, 0.9)]
    R.say_verdict(Path("v.mp4"), 4, people[:1], THRESHOLD, None)
    assert len(capsys.readouterr().out.splitlines()) == 1  # one person: one line


# ----------------------------------------------------------------------------- saliency

SIZE, CROP = 224, 64  # the detector's input and the tree's crop sides, px
SOURCES = ("youtube", "Deepfakes")
CPU = torch.device("cpu")


def square(crop_file) -> tuple[int, int, int, int]:
    """A fake crop's planted square (250 in every channel) at the detector's input size: (y0, x0, y1, x1)."""
    ys, xs = np.nonzero((cv2.imread(str(crop_file)) == 250).all(-1))
    k = SIZE / CROP
    return int(ys.min() * k), int(xs.min() * k), int((ys.max() + 1) * k), int((xs.max() + 1) * k)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, make_tree, fast_flags):
    """A tiny detector trained by train.py; the val split's fake crops as it takes them, their squares,
    their files."""
    root = tmp_path_factory.mktemp("planted")
    tree = make_tree(root / "data", sources=SOURCES, videos_per_source=4, frames=(0, 1, 2, 3), size=CROP,
                     planted=True)
    # 6 epochs: 2 leave some seeds short of the margins below, and CPU kinds round differently
    train.main(["--data", str(tree), "--out", str(root / "runs"), "--name", "planted", *fast_flags,
                "--sources", *SOURCES, "--epochs", "6", "--lr", "1e-1", "--min-lr", "1e-2"])
    detector = clip_vit.load_detector(root / "runs" / "planted" / "best.pt")
    val = load_videos(tree, "ff++", "val", SOURCES)
    fakes, reals = ([f for v in val if v.label == label for f in v.frames] for label in (1, 0))
    assert data.predict(detector, fakes, CPU).min() > 0.7 > 0.3 > data.predict(detector, reals, CPU).max()
    transform = clip_vit.image_transform(SIZE)
    images = torch.stack([transform(data.read_rgb(f)) for f in fakes])  # [16, 3, 224, 224]
    return detector, images, [square(f) for f in fakes], fakes


def quadrant_mass(maps: np.ndarray) -> np.ndarray:
    """Each map's share of its mass in the top-left quadrant: [N]."""
    return maps[:, :SIZE // 2, :SIZE // 2].sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fake_crop_map_peaks_on_the_planted_square(planted, precision):
    detector, fakes, squares, _ = planted
    p_fake, maps = R.scores_and_maps(detector, fakes, CPU, precision)
    assert maps.shape == (len(fakes), SIZE, SIZE) and maps.dtype == np.float32 and (p_fake > 0.5).all()
    assert maps.min() >= 0 and maps.max() == pytest.approx(1, abs=1e-3)
    assert (quadrant_mass(maps) > 0.6).all(), quadrant_mass(maps)  # chance is 1/4
    cell = 14  # the tower's patch size: a map is resolved to one token
    for m, (y0, x0, y1, x1) in zip(maps, squares):  # the peak follows the square
        y, x = np.unravel_index(m.argmax(), m.shape)
        assert y0 - cell <= y < y1 + cell and x0 - cell <= x < x1 + cell, ((y, x), (y0, x0))


def test_re_randomised_tuned_weights_change_the_map(planted):
    """Over five re-randomisations of the tuned tensors: one random tower may by chance respond to
    the square as well (it is the crops' most salient structure), so the check is on the median."""
    detector, fakes, _, _ = planted
    trained = R.scores_and_maps(detector, fakes, CPU)[1]
    correlations, masses = [], []
    for seed in range(5):
        randomised = copy.deepcopy(detector)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for module in randomised.modules():  # the tuned tensors: every LayerNorm, and the head
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.normal_(1, 0.5)
                    module.bias.normal_(0, 0.5)
            randomised.head.reset_parameters()
        maps = R.scores_and_maps(randomised, fakes, CPU)[1]
        correlations.append(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(trained, maps)]))
        masses.append(quadrant_mass(maps).mean())
    assert np.median(correlations) < 0.3, correlations
    assert np.median(masses) < 0.5 < quadrant_mass(trained).mean(), masses


def test_scores_are_the_scoring_forwards_and_the_detector_is_left_as_it_was(planted):
    detector, fakes, _, files = planted
    clip_vit.set_trainable(detector, "ln")
    detector.train()
    flags = [p.requires_grad for p in detector.parameters()]
    recorded = []
    first = detector.visual.transformer.resblocks[0]
    handle = first.register_forward_hook(lambda module, args, out: recorded.append(out.requires_grad))
    p_fake, maps = R.scores_and_maps(detector, fakes[:3], CPU, batch_size=2)
    handle.remove()
    assert recorded == [False, False]  # two batches; no graph below the last block
    assert detector.training and [p.requires_grad for p in detector.parameters()] == flags
    assert all(p.grad is None for p in detector.parameters())
    with torch.inference_mode():  # as evaluate.py scores; one batch or two: the same maps
        np.testing.assert_allclose(R.scores_and_maps(detector, fakes[:3].clone(), CPU)[1], maps, atol=1e-5)
    np.testing.assert_allclose(p_fake, data.predict(detector, files[:3], CPU), atol=1e-5)  # the verdict
