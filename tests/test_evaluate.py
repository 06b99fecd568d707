"""Tests of evaluate.py: metrics, video aggregation, benchmark outputs, scoring single files."""

import csv
import json
import os
from types import SimpleNamespace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import clip_vit
import evaluate
from util import checkpoint
from util.tokenizer import Tokenizer


# ----------------------------------------------------------------------------- metrics

def test_eer_hand_computed_interpolated():
    # labels 0 0 1 1, scores .2 .5 .5 .8. Thresholds from high to low:
    #   > .8: FPR 0, FNR 1;  .8: FPR 0, FNR .5;  .5 (one real and one fake tie): FPR .5, FNR 0.
    # The segment (0, .5) -> (.5, 0) crosses FPR = FNR halfway: EER = .25.
    # AUROC: fake > real in 3 of 4 pairs, one tie counts 1/2 -> 3.5 / 4.
    m = evaluate.compute_metrics([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8])
    assert m["eer"] == pytest.approx(0.25)
    assert m["auroc"] == pytest.approx(0.875)
    assert m["acc"] == pytest.approx(0.75)  # .5 is not > .5: the tied fake counts as real
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_eer_hand_computed_vertical_segment():
    # labels 0 0 0 1 1, scores .1 .2 .7 .6 .9: at threshold .7 FPR = 1/3, FNR = 1/2; at .6
    # FPR = 1/3, FNR = 0. FNR falls through 1/3 while FPR stays 1/3: EER = 1/3.
    m = evaluate.compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.9])
    assert m["eer"] == pytest.approx(1 / 3)
    # perfect separation: EER 0; inverted: EER 1
    assert evaluate.compute_metrics([0, 1], [0.1, 0.9])["eer"] == pytest.approx(0.0)
    assert evaluate.compute_metrics([0, 1], [0.9, 0.1])["eer"] == pytest.approx(1.0)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    for n in (7, 50, 1000):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.clip(0.3 * labels + rng.normal(0.4, 0.3, n), 0, 1).round(2)  # ties too
        m = evaluate.compute_metrics(labels, scores)
        assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        assert m["acc"] == pytest.approx(np.mean((scores > 0.5) == labels), abs=1e-12)
        # EER: FNR - FPR strictly falls along the full ROC curve; where it is 0
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        diff = (1 - tpr) - fpr
        assert m["eer"] == pytest.approx(np.interp(0.0, diff[::-1], fpr[::-1]), abs=1e-12)
        # and it lies between the FPRs of the two ROC points around the crossing
        assert fpr[diff > 0].max() - 1e-12 <= m["eer"] <= fpr[diff <= 0].min() + 1e-12


def test_metrics_one_class_and_bad_input():
    m = evaluate.compute_metrics([1, 1, 1], [0.9, 0.4, 0.7])
    assert m["auroc"] is None and m["eer"] is None and m["ap"] is None
    assert "only fake" in m["undefined"]
    assert m["acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="length"):
        evaluate.compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        evaluate.compute_metrics([0, 2], [0.5, 0.5])


def test_video_aggregation_is_mean_of_frames():
    keys = ["a", "b", "a", "c", "a", "b"]
    scores = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7]
    agg = evaluate.video_scores(keys, scores)
    assert list(agg) == ["a", "b", "c"]
    assert agg["a"] == pytest.approx(0.2) and agg["b"] == pytest.approx(0.6)
    assert agg["c"] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- benchmarks

def direct_p_fake(ckpt: Path, files: list) -> np.ndarray:
    """p_fake of crop files computed without evaluate.py's loader."""
    det = clip_vit.load_detector(str(ckpt)).eval()
    tf = clip_vit.image_transform(224)
    x = torch.stack([tf(torch.from_numpy(cv2.imread(str(f))[:, :, ::-1].copy()).permute(2, 0, 1))
                     for f in files])
    with torch.no_grad():
        return torch.softmax(det(x), -1)[:, 1].double().numpy()


def test_benchmark_one_dataset_outputs_consistent(make_split, tmp_path, tiny_ckpt, capsys):
    data = tmp_path / "data"
    make_split(data, "cdfv2", [
        ("Celeb-real", 0, "id0_0000", [0, 9, 18]),
        ("YouTube-real", 0, "00001", [2, 10]),       # 10 after 2: numeric order
        ("Celeb-synthesis", 1, "id0_id1_0000", [0, 5]),
        ("Celeb-synthesis", 1, "id1_id2_0003", [7]),
        ("Celeb-synthesis", 1, "id2_id0_0001", [1, 3, 4]),
    ])
    out = tmp_path / "out"
    evaluate.main(["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data),
                   "--out", str(out), "--workers", "0", "--batch-size", "4"])
    printed = capsys.readouterr().out

    rows = list(csv.DictReader(open(out / "cdfv2" / "videos.csv")))
    assert [r["video_id"] for r in rows] == ["id0_0000", "00001", "id0_id1_0000", "id1_id2_0003",
                                             "id2_id0_0001"]
    split = data / "cdfv2" / "test"
    scores = []  # unrounded: videos.csv rounds to 6 decimals, which can tie or flip close scores
    for r in rows:  # video score = mean of its frames' p_fake, each computed directly
        files = sorted((split / r["path"]).glob("*.png"), key=lambda p: int(p.stem))
        assert int(r["n_frames"]) == len(files)
        scores.append(direct_p_fake(tiny_ckpt, files).mean())
        assert float(r["p_fake"]) == pytest.approx(scores[-1], abs=1e-5)

    res = json.load(open(out / "cdfv2" / "metrics.json"))
    labels = [int(r["label"]) for r in rows]
    expect = evaluate.compute_metrics(labels, scores)
    for key in ("auroc", "ap", "eer", "acc"):
        assert res["video"][key] == pytest.approx(expect[key], abs=1e-5)
    assert (res["video"]["n"], res["video"]["n_real"], res["video"]["n_fake"]) == (5, 2, 3)
    assert (res["frame"]["n"], res["frame"]["n_real"], res["frame"]["n_fake"]) == (11, 5, 6)
    assert res["model"] == "tiny/best.pt"

    # the printed Markdown table carries the same numbers
    line = next(l for l in printed.splitlines() if l.startswith("| CDFv2 | video |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:5] == ["5", "2", "3"]
    assert cells[5] == f"{100 * expect['auroc']:.2f}" and cells[7] == f"{100 * expect['eer']:.2f}"
    assert (out / "cdfv2-summary.md").read_text().strip() in printed

    roc = cv2.imread(res["files"]["roc"])
    assert roc is not None and roc.shape[0] > 300 and roc.shape[1] > 300
    assert (roc < 250).any(axis=2).mean() > 0.02  # something drawn, not a blank canvas


def test_benchmark_all_missing_one_class_newest_run(make_split, tmp_path, tiny_ckpt, capsys):
    data = tmp_path / "data"
    make_split(data, "ff++", [("youtube", 0, "000", [0, 1]), ("youtube", 0, "001", [0]),
                              ("Deepfakes", 1, "000_003", [0]), ("Deepfakes", 1, "001_002", [0, 1]),
                              ("Face2Face", 1, "000_003", [4]), ("Face2Face", 1, "001_002", [0])])
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "b", [0])], seed=1)
    make_split(data, "dfdc", [("real", 0, "x", [0, 1]), ("real", 0, "y", [0])], seed=2)  # one class
    runs = tmp_path / "runs"
    for name, age in (("old", 100), ("new", 0)):
        (runs / name).mkdir(parents=True)
        (runs / name / "best.pt").write_bytes(tiny_ckpt.read_bytes())
        t = 1_700_000_000 - age
        os.utime(runs / name / "best.pt", (t, t))
    out = tmp_path / "out"
    evaluate.main(["--dataset", "all", "--data", str(data), "--runs", str(runs), "--out", str(out),
                   "--workers", "0"])
    printed = capsys.readouterr().out
    assert f"newest run's checkpoint {runs / 'new' / 'best.pt'}" in printed

    summary = json.load(open(out / "summary.json"))
    assert sorted(summary["results"]) == ["cdfv2", "dfdc", "ff++"]
    assert summary["missing"] == ["dfd", "ffiw", "dsv1"]
    table = (out / "summary.md").read_text()
    head = [l for l in table.splitlines() if l.startswith("| model | CDFv2")][0]
    assert head.split("|")[2:8] == [" CDFv2 ", " DFD ", " DFDC ", " FFIW ", " DSv1 ", " mean "]
    row = [l for l in table.splitlines() if l.startswith("| new/best.pt |")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    cdf = summary["results"]["cdfv2"]["video"]["auroc"]
    assert cells[1:7] == [f"{100 * cdf:.2f}", "missing", "n/a", "missing", "missing",
                          f"{100 * cdf:.2f} (1/5)"]
    assert "missing (not preprocessed): DFD, FFIW, DSv1" in table
    # one class: AUROC/AP/EER undefined with the reason, accuracy still given
    dfdc = summary["results"]["dfdc"]["video"]
    assert dfdc["auroc"] is None and dfdc["acc"] is not None and "only real" in dfdc["undefined"]
    assert "DFDC video: only real" in table
    # FF++ per manipulation: real videos against each method
    ffpp = summary["results"]["ff++"]
    assert sorted(ffpp["per_source"]) == ["Deepfakes", "Face2Face"]
    assert ffpp["per_source"]["Deepfakes"]["n"] == 4 and ffpp["video"]["n"] == 6
    assert "| model | DF | F2F | all |" in table
    for d in ("cdfv2", "ff++"):
        assert (out / d / "roc.png").is_file()
    assert summary["results"]["dfdc"]["files"]["roc"] is None  # no ROC for one class


def test_missing_or_empty_data_dir_says_layout_and_command(tmp_path, tiny_ckpt):
    for data in (tmp_path / "nope", tmp_path):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data)])
        msg = str(e.value)
        assert "cdfv2/test/index.csv" in msg and "python preprocess.py --dataset cdfv2" in msg
    with pytest.raises(SystemExit, match="preprocess.py --dataset ff\\+\\+ --compression c40 "):
        evaluate.main(["--dataset", "ff++-c40", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path)])


# ----------------------------------------------------------------------------- single files

def write_video(path: Path, frames: list):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def test_video_with_face_scored_and_without_face_says_so(tmp_path, tiny_ckpt, capsys):
    from skimage import data as skdata
    face = cv2.resize(skdata.astronaut(), (768, 768), interpolation=cv2.INTER_CUBIC)
    shifted = [np.roll(face, (4 * k, -3 * k), axis=(0, 1)) for k in range(4)]
    write_video(tmp_path / "astronaut.mp4", shifted)
    rng = np.random.default_rng(0)
    write_video(tmp_path / "noface.mp4",
                [np.full((240, 320, 3), 90, np.uint8) + rng.integers(0, 20, (240, 320, 3), dtype=np.uint8)
                 for _ in range(4)])
    crops = tmp_path / "crops"
    rows = evaluate.main(["--video", str(tmp_path / "astronaut.mp4"), "--video", str(tmp_path / "noface.mp4"),
                          "--checkpoint", str(tiny_ckpt), "--save-crops", str(crops),
                          "--out", str(tmp_path / "out"), "--device", "cpu"])
    printed = capsys.readouterr().out
    astro = next(l for l in printed.splitlines() if l.startswith(str(tmp_path / "astronaut.mp4")))
    assert "p_fake" in astro and "4/4 frames with a face" in astro
    p = rows[0]["p_fake"]
    assert 0.0 <= p <= 1.0 and f"{p:.4f}" in astro
    saved_crops = sorted((crops / "astronaut" / "person1").glob("*.png"))
    assert len(saved_crops) == 4  # and they are what was scored
    assert p == pytest.approx(direct_p_fake(tiny_ckpt, saved_crops).mean(), abs=1e-5)
    noface = next(l for l in printed.splitlines() if l.startswith(str(tmp_path / "noface.mp4")))
    assert "no face found" in noface and "p_fake" not in noface
    assert rows[-1]["p_fake"] is None
    saved = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert (saved[0]["frames_with_face"], saved[-1]["frames_with_face"]) == ("4", "0")
    assert saved[-1]["p_fake"] == "" and saved[-1]["note"] == "no face found"
    # the file's score is its main (largest, here the only real) face's
    person1 = [r for r in saved if r["person"] == "1"]
    assert not person1 or float(person1[0]["p_fake"]) == pytest.approx(p)


def test_zero_shot_baseline_same_outputs(make_split, tmp_path, capsys):
    import gzip
    bpe = tmp_path / "bpe.txt.gz"  # a tiny BPE vocabulary: the prompts' bytes + a few merges
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("#version: test\nf a\nfa c\nfac e</w>\nr e\n")
    data = tmp_path / "data"
    make_split(data, "dfd", [("actors", 0, "a", [0, 1]), ("actors", 0, "b", [0]),
                             ("DeepFakeDetection", 1, "c", [0]), ("DeepFakeDetection", 1, "d", [3, 6])])
    out = tmp_path / "out"
    evaluate.main(["--dataset", "dfd", "--zero-shot", "--clip", "tiny", "--bpe", str(bpe),
                   "--data", str(data), "--out", str(out), "--workers", "0"])
    assert "zero-shot CLIP tiny" in capsys.readouterr().out
    res = json.load(open(out / "dfd" / "metrics.json"))
    assert res["model"] == "zero-shot CLIP tiny" and res["video"]["n"] == 4

    # p_fake = softmax(logit_scale * cosine(image, prompt)) over (real, fake), computed directly
    clip = clip_vit.tiny_clip().eval()
    tokens = clip_vit.tokenize(list(evaluate.PROMPTS), tokenizer=Tokenizer(bpe))
    files = sorted((data / "dfd" / "test" / "DeepFakeDetection" / "d").glob("*.png"))
    tf = clip_vit.image_transform(224)
    images = torch.stack([tf(cv2.imread(str(f))[:, :, ::-1].copy()) for f in files])
    with torch.no_grad():
        logits, _ = clip(images, tokens)
    expect = torch.softmax(logits, -1)[:, 1].mean().item()
    rows = {r["video_id"]: float(r["p_fake"]) for r in csv.DictReader(open(out / "dfd" / "videos.csv"))}
    assert rows["d"] == pytest.approx(expect, abs=1e-5)


# ----------------------------------------------------------------------------- bad input

def test_broken_datasets_listed_in_all_table_not_fatal(make_split, tmp_path, tiny_ckpt, capsys):
    data = tmp_path / "data"
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "b", [0])])
    make_split(data, "ffiw", [("real", 0, "a", [0]), ("fake", 1, "b", [0, 1])], seed=1)
    for png in (data / "ffiw" / "test" / "fake" / "b").glob("*.png"):
        png.unlink()  # index.csv lists a folder with no crops
    make_split(data, "dfd", [("actors", 0, "a", [0]), ("DeepFakeDetection", 1, "b", [0])], seed=2)
    (data / "dfd" / "test" / "actors" / "a" / "0.png").write_bytes(b"not a png")  # unreadable crop
    out = tmp_path / "out"
    summary = evaluate.main(["--dataset", "all", "--checkpoint", str(tiny_ckpt), "--data", str(data),
                             "--out", str(out), "--workers", "2"])  # a worker's error is named too
    captured = capsys.readouterr()
    assert list(summary["results"]) == ["cdfv2"] and (out / "cdfv2" / "metrics.json").is_file()
    assert "holds no <frame>.png crops" in summary["failed"]["ffiw"]
    assert "python preprocess.py --dataset ffiw " in summary["failed"]["ffiw"]  # its own command
    assert "cannot be read" in summary["failed"]["dfd"] and "actors/a/0.png" in summary["failed"]["dfd"]
    row = next(l for l in summary["table"].splitlines() if l.startswith("| tiny/best.pt | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["error", "missing", "error"]  # DFD, DFDC, FFIW
    assert "FFIW: not evaluated" in captured.err and "Traceback" not in captured.err
    assert json.load(open(out / "summary.json"))["failed"] == summary["failed"]

    # one dataset: the same reasons as a one-line error
    for name, reason in (("ffiw", "holds no <frame>.png crops"), ("dfd", "cannot be read")):
        with pytest.raises(SystemExit, match=reason) as e:
            evaluate.main(["--dataset", name, "--checkpoint", str(tiny_ckpt), "--data", str(data),
                           "--out", str(out), "--workers", "0"])
        assert "\n" not in str(e.value)
    (data / "cdfv2" / "test" / "index.csv").write_text("video_id,source\na,Celeb-real\n")
    with pytest.raises(SystemExit, match="not an index written by preprocess.py: expected columns"):
        evaluate.main(["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data)])


def test_bad_checkpoint_and_file_arguments_one_line_errors(tmp_path, tiny_ckpt):
    ln_ckpt = tmp_path / "ln.pt"  # LN-tuning: the frozen rest must be the CLIP it was trained on
    detector = clip_vit.build_detector("tiny")
    clip_vit.set_trainable(detector, "ln")
    checkpoint.save_checkpoint(ln_ckpt, detector, {"clip": "tiny", "normalize": True})
    other_clip = tmp_path / "other_clip.pt"
    torch.save({f"visual.{k}": v for k, v in clip_vit.tiny_visual(seed=5).state_dict().items()}, other_clip)
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    cases = [
        (["--checkpoint", str(tmp_path / "nope.pt")], "not found"),
        (["--checkpoint", str(tmp_path)], "is a folder"),
        (["--checkpoint", str(ln_ckpt), "--clip", str(other_clip)], "trained on CLIP weights"),
        (["--checkpoint", str(not_ckpt)], "cannot load checkpoint"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message) as e:
            evaluate.main(["--image", str(image), *extra])
        assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="is a folder, not a file: use --input"):
        evaluate.main(["--video", str(tmp_path), "--checkpoint", str(tiny_ckpt)])
    with pytest.raises(SystemExit):  # argparse: the crops would be scored as inputs next time
        evaluate.main(["--input", str(tmp_path), "--save-crops", str(tmp_path / "crops")])


def test_input_folder_mixed_files(tmp_path, tiny_ckpt, capsys):
    from skimage import data as skdata
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    face = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    for name in ("a.png", "a.jpg", "sub/a.png"):  # three files, three crops folders
        cv2.imwrite(str(inputs / name), face)
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (inputs / "blank.png").write_bytes(cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1])
    (inputs / "notes.txt").write_text("skipped")
    crops, out = tmp_path / "crops", tmp_path / "out"
    (crops / "a" / "person1").mkdir(parents=True)
    (crops / "a" / "person1" / "99.png").write_bytes(b"stale")  # from an earlier run
    (crops / "a" / "mine.txt").write_text("the user's")  # never deleted
    rows = evaluate.main(["--input", str(inputs), "--checkpoint", str(tiny_ckpt), "--out", str(out),
                          "--save-crops", str(crops)])
    printed = capsys.readouterr().out
    assert "5 video/image file(s), 1 other file(s) skipped" in printed
    saved = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["file"]).relative_to(inputs).as_posix() for r in saved] == \
        ["a.jpg", "a.png", "blank.png", "broken.jpg", "sub/a.png"]
    assert [r["note"] for r in saved][2:4] == ["no face found", "cannot read: cannot decode image"]
    assert saved[3]["p_fake"] == "" and rows[3]["p_fake"] is None
    assert all(r["frames_with_face"] == "1" and 0 <= float(r["p_fake"]) <= 1 for r in saved[:2] + saved[4:])
    assert sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.png")) == \
        ["a/person1/0.png", "a~2/person1/0.png", "sub/a/person1/0.png"]
    assert (crops / "a" / "mine.txt").read_text() == "the user's"


def test_file_verdict_names_a_person_judged_differently(capsys):
    crop = lambda frame: SimpleNamespace(frame=frame)  # noqa: E731
    tracks = [[crop(0), crop(1), crop(2)], [crop(1)]]
    rows = evaluate.report(Path("v.mp4"), 4, tracks, [0.2, 0.9])
    line = capsys.readouterr().out.splitlines()
    assert line[0] == ("v.mp4: p_fake 0.2000 -> real (3/4 frames with a face; 2 people, score of "
                       "person 1, the largest; person 2 FAKE)")
    assert line[1:] == ["    person 1: p_fake 0.2000 -> real (3 frames)",
                        "    person 2: p_fake 0.9000 -> FAKE (1 frame)"]
    assert [(r["person"], r["frames_with_face"], r["p_fake"]) for r in rows] == \
        [(None, 3, 0.2), (1, 3, 0.2), (2, 1, 0.9)]
