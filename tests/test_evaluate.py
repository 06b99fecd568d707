"""evaluate.py from its command line: the benchmark table and its files against p_fake computed
directly, the paper's row and the recipe's departures, --compare, --perturb, zero-shot, verdicts on
files against a reference, Figure 1, torchrun against one process; and one table of bad inputs,
each ending in one line naming the flag or the file, earlier outputs untouched."""

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import _video_utils as U
import clip_vit
import evaluate
from data import compute_metrics
from util import calibration, checkpoint, files, layouts, perturb, stats
from util.run import mix_seed
from util.tokenizer import Tokenizer

FP32 = ["--precision", "fp32"]  # the tests compare p_fake with fp32 references: auto may take bf16
ROOT = Path(__file__).resolve().parents[1]
FULL = {"clip": "tiny", "norm": True, "tuning": "ln", "uniformity": 0.3, "alignment": 0.1, "slerp": True}
LN_NORM = {**FULL, "uniformity": 0, "alignment": 0, "slerp": False}  # the paper's "LN-tuning + L2 norm"


def run_cli(*argvs) -> list[SimpleNamespace]:
    """`python evaluate.py ARGS` for each argument list, all at once: (returncode, stdout, stderr)."""
    procs = [subprocess.Popen([sys.executable, "evaluate.py", *FP32, *map(str, argv)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argvs]
    return [SimpleNamespace(returncode=p.returncode, stdout=out, stderr=err)
            for p in procs for out, err in [p.communicate(timeout=300)]]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_ckpt(path: Path, config: dict, seed: int = 1) -> Path:
    """A tiny detector whose random head makes p_fake depend on the image, saved with `config`."""
    detector = clip_vit.build_detector("tiny")
    with torch.no_grad():
        detector.head.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(seed))
    checkpoint.save_checkpoint(path, detector, config)
    return path


def direct_p_fake(ckpt: Path, crops: list) -> np.ndarray:
    """p_fake of crop files (or RGB arrays) computed without evaluate.py's loader."""
    det = clip_vit.load_detector(str(ckpt)).eval()
    tf = clip_vit.image_transform(224)
    rgb = [f if isinstance(f, np.ndarray) else cv2.imread(str(f))[:, :, ::-1].copy() for f in crops]
    with torch.no_grad():
        return torch.softmax(det(torch.stack([tf(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1))
                                              for a in rgb])), -1)[:, 1].double().numpy()


def split_truth(data: Path, ckpt: Path, change=lambda rgb, key: rgb) -> SimpleNamespace:
    """Labels and p_fake of the cdfv2 test split computed directly from index.csv and the crops,
    each crop passed through change(rgb, its path under the split) first."""
    split = data / "cdfv2" / "test"
    rows = list(csv.DictReader(open(split / "index.csv")))
    frames = [sorted((split / r["path"]).glob("*.png"), key=lambda p: int(p.stem)) for r in rows]
    crops = [change(cv2.imread(str(f))[:, :, ::-1].copy(), f"{r['path']}/{f.name}")
             for r, fs in zip(rows, frames) for f in fs]
    frame_p, ends = direct_p_fake(ckpt, crops), np.cumsum([len(fs) for fs in frames])
    return SimpleNamespace(labels=np.array([int(r["label"]) for r in rows]), frame_p=frame_p,
                           video_p=np.array([frame_p[e - len(fs):e].mean() for fs, e in zip(frames, ends)]),
                           videos=[r["path"] for r, fs in zip(rows, frames) for _ in fs],
                           frame_labels=np.array([int(r["label"]) for r, fs in zip(rows, frames)
                                                  for _ in fs]))


def cell(m: dict) -> str:
    return f"{100 * m['auroc']:.2f} [{100 * m['auroc_ci'][0]:.2f}, {100 * m['auroc_ci'][1]:.2f}]"


def face_image(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(U.astronaut(), cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def split(make_split, tmp_path) -> Path:
    """A cdfv2 test split of 7 real and 7 fake videos of 1-3 frames; returns the --data folder."""
    data = tmp_path / "data"
    make_split(data, "cdfv2", [("Celeb-real", 0, f"r{k}", range(1 + k % 3)) for k in range(7)]
               + [("Celeb-synthesis", 1, f"f{k}", range(1 + (k + 1) % 3)) for k in range(7)])
    return data


# ----------------------------------------------------------------------------- metrics

def test_eer_hand_computed():
    # labels 0 0 1 1, scores .2 .5 .5 .8: at > .8 FPR 0, FNR 1; at .8 FPR 0, FNR .5; at .5 (a real
    # and a fake tie) FPR .5, FNR 0. The segment (0, .5) -> (.5, 0) crosses FPR = FNR halfway: .25.
    m = compute_metrics([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8])
    assert (m["eer"], m["auroc"], m["acc"]) == pytest.approx((0.25, 0.875, 0.75))  # .5 is not > .5
    # labels 0 0 0 1 1, scores .1 .2 .7 .6 .9: at .7 FPR 1/3, FNR 1/2; at .6 FPR 1/3, FNR 0: EER 1/3
    assert compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.9])["eer"] == pytest.approx(1 / 3)
    assert compute_metrics([0, 1], [0.1, 0.9])["eer"] == 0 and compute_metrics([0, 1], [0.9, 0.1])["eer"] == 1


# ----------------------------------------------------------------------------- benchmarks

def test_benchmark_outputs_and_intervals_are_the_direct_scores(split, tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "runs" / "full" / "best.pt", FULL)
    out = tmp_path / "out"
    summary = evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(ckpt), "--data", str(split),
                             "--out", str(out), "--workers", "0", "--batch-size", "4"])
    printed = capsys.readouterr().out
    t = split_truth(split, ckpt)
    rows = list(csv.DictReader(open(out / "cdfv2" / "videos.csv")))
    assert [float(r["p_fake"]) for r in rows] == pytest.approx(t.video_p, abs=1e-5)
    assert [int(r["n_frames"]) for r in rows] == [1 + k % 3 for k in range(7)] + [1 + (k + 1) % 3
                                                                                 for k in range(7)]
    m = json.load(open(out / "cdfv2" / "metrics.json"))
    assert m["video"]["auroc"] == pytest.approx(roc_auc_score(t.labels, t.video_p), abs=1e-9)
    # 2,000 class-stratified resamples of seed 0; frames: whole videos resampled
    assert m["video"]["auroc_ci"] == pytest.approx(stats.bootstrap_auroc_ci(t.labels, t.video_p), abs=1e-9)
    frame_ci = stats.bootstrap_auroc_ci(t.frame_labels, t.frame_p, t.videos)
    assert m["frame"]["auroc_ci"] == pytest.approx(frame_ci, abs=1e-9)
    # no reference: the table's threshold is 0.5, uncalibrated; TPR at 1% FPR of 7 reals: fakes above the
    # top real
    assert m["threshold"]["value"] == 0.5 and m["video"]["acc_ref"] == m["video"]["acc"]
    real, fake = t.video_p[t.labels == 0], t.video_p[t.labels == 1]
    assert m["video"]["tpr@1%fpr"] == pytest.approx(np.mean(fake > real.max()))
    for level in ("video", "frame"):
        counts = " | ".join(str(m[level][k]) for k in ("n", "n_real", "n_fake"))
        assert f"| CDFv2 | {level} | {counts} | {cell(m[level])} |" in printed
    assert (out / "cdfv2-summary.md").read_text().strip() in printed
    assert json.load(open(out / "cdfv2-summary.json"))["paper"] == summary["paper"]
    roc = cv2.imread(m["files"]["roc"])
    assert roc.shape[0] > 300 and (roc < 250).any(axis=2).mean() > 0.02  # something drawn
    # issue 24: the row is named by the objective, the paper's number beside it with every departure
    paper = summary["paper"]
    assert paper["row"] == "full (LN + norm + UnAl + slerp)" and paper["reproduction"] is False
    assert paper["departures"][:2] == ["clip tiny (ViT-L/14)", "dataset ? (ff++)"]
    assert "uniformity 0.3 (0.5)" in paper["departures"] and "epochs ? (10)" in paper["departures"]
    assert "recipe differs: clip tiny (ViT-L/14), dataset ? (ff++)" in summary["table"]
    b = paper["datasets"]["cdfv2"]
    assert b["paper"] == 96.62 and b["diff"] == pytest.approx(100 * m["video"]["auroc"] - 96.62)
    assert f"| CDFv2 | {cell(m['video'])} | 96.62 | {b['diff']:+.2f} |" in printed


def test_benchmark_all_missing_one_class_newest_run(make_split, tmp_path, tiny_ckpt, capsys):
    data = tmp_path / "data"
    make_split(data, "ff++", [("youtube", 0, "000", [0, 1]), ("youtube", 0, "001", [0]),
                              ("Deepfakes", 1, "000_003", [0]), ("Deepfakes", 1, "001_002", [0, 1]),
                              ("Face2Face", 1, "000_003", [4]), ("Face2Face", 1, "001_002", [0])])
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "b", [0])], seed=1)
    make_split(data, "dfdc", [("real", 0, "x", [0, 1]), ("real", 0, "y", [0])], seed=2)  # one class
    make_split(data, "dfd", [("actors", 0, "a", [0]), ("DeepFakeDetection", 1, "b", [0])], seed=2)
    (data / "dfd" / "test" / "actors" / "a" / "0.png").write_bytes(b"not a png")  # broken: listed, not fatal
    runs = tmp_path / "runs"
    write_ckpt(runs / "old" / "best.pt", LN_NORM)
    new = write_ckpt(runs / "new" / "best.pt", LN_NORM, seed=2)
    os.utime(runs / "old" / "best.pt", (1, 1))
    out = tmp_path / "out"
    summary = evaluate.main([*FP32, "--dataset", "all", "--data", str(data), "--runs", str(runs),
                             "--out", str(out), "--workers", "2"])  # a worker's error is named too
    printed = capsys.readouterr()
    assert f"newest run's checkpoint {new}" in printed.out and "DFD" in printed.err
    assert sorted(summary["results"]) == ["cdfv2", "dfdc", "ff++"]
    assert summary["missing"] == ["ffiw", "dsv1"] and "actors/a/0.png" in summary["failed"]["dfd"]
    table = (out / "summary.md").read_text()
    cdf = summary["results"]["cdfv2"]["video"]
    mean = f"{100 * cdf['auroc']:.2f} (1/5)"
    assert f"| new/best.pt | {cell(cdf)} | error | n/a | missing | missing | {mean} |" in table.splitlines()
    paper = next(line for line in table.splitlines()
                 if line.startswith("| paper: LN-tuning + L2 norm (recipe differs: "))
    assert paper.endswith("| 96.21 | 98.18 | 87.82 | 92.72 | 88.81 | 96.21 (1/5) |")
    dfdc = summary["results"]["dfdc"]["video"]
    assert dfdc["auroc"] is None and dfdc["acc"] is not None
    assert summary["results"]["dfdc"]["files"]["roc"] is None
    ffpp = summary["results"]["ff++"]  # FF++ per manipulation: the real videos against each method
    assert sorted(ffpp["per_source"]) == ["Deepfakes", "Face2Face"]
    assert ffpp["per_source"]["Deepfakes"]["n"] == 4
    assert "| model | DF | F2F | all |" in table and (out / "ff++" / "roc.png").is_file()


def test_compare_a_checkpoint_with_its_copy_and_with_another(split, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    full = write_ckpt(runs / "full" / "best.pt", FULL)
    ln_norm = write_ckpt(runs / "ln-norm" / "best.pt", LN_NORM, 2)
    copy = Path(shutil.copy(full, tmp_path / "copy.pt"))
    monkeypatch.chdir(tmp_path)  # the default --out: eval/compare-<A>-vs-<B>-<dataset>
    common = ["--dataset", "cdfv2", "--data", str(split), "--workers", "0"]
    same = evaluate.main([*FP32, "--compare", str(full), str(copy), *common])
    printed = capsys.readouterr().out
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci"][0] <= 0 <= same["ci"][1]
    folder = tmp_path / "eval" / "compare-full-best-vs-tmp-copy-cdfv2".replace("tmp", tmp_path.name)
    assert json.load(open(folder / "compare.json")) == json.loads(json.dumps(same))
    assert (folder / "compare.md").read_text().strip() in printed
    other = evaluate.main([*FP32, "--compare", str(full), str(ln_norm), *common,
                           "--out", str(tmp_path / "other")])
    lines = capsys.readouterr().out.splitlines()
    a, b = split_truth(split, full), split_truth(split, ln_norm)
    expect = stats.paired_comparison(a.labels, a.video_p, b.video_p)
    for key in ("auroc_a", "auroc_b", "diff", "ci", "p", "bootstrap_ci"):
        assert other[key] == pytest.approx(expect[key], abs=1e-9), key
    assert other["a"]["auroc"] == pytest.approx(other["auroc_a"], abs=1e-12)
    assert other["b"]["row"] == "LN-tuning + L2 norm" and "clip tiny (ViT-L/14)" in other["b"]["departures"]
    assert any(l.startswith(f"| B | {ln_norm} | LN-tuning + L2 norm; recipe differs: clip tiny (ViT-L/14)")
               for l in lines)
    saved = list(csv.DictReader(open(tmp_path / "other" / "compare.csv")))
    assert [float(r["p_fake_b"]) for r in saved] == pytest.approx(b.video_p, abs=1e-5)


def test_perturb_scores_perturbed_crops(split, tmp_path, tiny_ckpt, capsys):
    grid = ["jpeg=20", "blur=2", "resize=12", "noise=0.2"]
    evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split),
                   "--workers", "0", "--out", str(tmp_path / "out"), "--perturb", *grid])
    printed = capsys.readouterr().out
    m = json.load(open(tmp_path / "out" / "cdfv2" / "metrics.json"))
    rows = m["robustness"]["rows"]
    assert [(r["perturbation"], r["severity"]) for r in rows] == [("none", None), ("jpeg", 20), ("blur", 2),
                                                                  ("resize", 12), ("noise", 0.2)]
    assert rows[0]["video"] == m["video"]  # the unperturbed row is the plain evaluation
    saved = list(csv.DictReader(open(tmp_path / "out" / "cdfv2" / "robustness.csv")))
    assert list(saved[0]) == ["video_id", "source", "label", "path", "none", *grid]
    for r in rows[1:]:  # each perturbation applied to every crop directly, noise seeded by the crop's path
        t = split_truth(split, tiny_ckpt, lambda rgb, key, r=r: perturb.apply(
            r["perturbation"], r["severity"], rgb, mix_seed(0, key)))
        label = perturb.label(r["perturbation"], r["severity"])
        assert [float(v[label]) for v in saved] == pytest.approx(t.video_p, abs=1e-5)
        # it reaches the scores
        assert not np.allclose(t.video_p, [float(v["none"]) for v in saved], atol=1e-3)
        ci = stats.bootstrap_auroc_ci(t.labels, t.video_p)
        assert r["video"]["auroc_ci"] == pytest.approx(ci, abs=1e-9)
        change = f"{100 * (r['video']['auroc'] - m['video']['auroc']) + 0.0:+.2f}"
        assert f"| {label} | {cell(r['video'])} | {change} |" in printed
    assert (tmp_path / "out" / "cdfv2" / "robustness.png").is_file()


def test_zero_shot_baseline(make_split, tmp_path, capsys):
    import gzip
    bpe = tmp_path / "bpe.txt.gz"  # a tiny BPE vocabulary: the prompts' bytes + a few merges
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("#version: test\nf a\nfa c\nfac e</w>\nr e\n")
    data, out = tmp_path / "data", tmp_path / "out"
    make_split(data, "dfd", [("actors", 0, "a", [0, 1]), ("DeepFakeDetection", 1, "d", [3, 6])])
    summary = evaluate.main([*FP32, "--dataset", "dfd", "--zero-shot", "--clip", "tiny", "--bpe", str(bpe),
                             "--data", str(data), "--out", str(out), "--workers", "0"])
    assert summary["paper"]["row"] is None and summary["model"] == "zero-shot CLIP tiny"
    clip = clip_vit.tiny_clip().eval()  # p_fake = softmax(logit_scale * cosine(image, prompts))
    tokens = clip_vit.tokenize(list(evaluate.PROMPTS), tokenizer=Tokenizer(bpe))
    files_ = sorted((data / "dfd" / "test" / "DeepFakeDetection" / "d").glob("*.png"))
    transform = clip_vit.image_transform(224)
    images = torch.stack([transform(cv2.imread(str(f))[:, :, ::-1].copy()) for f in files_])
    with torch.no_grad():
        expect = torch.softmax(clip(images, tokens)[0], -1)[:, 1].mean().item()
    rows = {r["video_id"]: float(r["p_fake"]) for r in csv.DictReader(open(out / "dfd" / "videos.csv"))}
    assert rows["d"] == pytest.approx(expect, abs=1e-5)


# ----------------------------------------------------------------------------- files and verdicts

def test_input_folder_verdicts_and_files_not_scored(tmp_path, tiny_ckpt, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    two = [U.place_face((640, 360), (180 + 5 * k, 160), 1.8) for k in range(4)]  # two people in every frame
    U.write_video(inputs / "two.mp4", [U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=f)
                                       for k, f in enumerate(two)])
    face_image(inputs / "sub")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (inputs / "blank.png").write_bytes(cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1])
    (inputs / "notes.txt").write_text("skipped")
    with pytest.raises(SystemExit) as e:
        evaluate.main([*FP32, "--input", str(inputs), "--checkpoint", str(tiny_ckpt), "--out", str(out),
                       "--save-crops", str(tmp_path / "crops"), "--device", "cpu"])
    assert e.value.code == 1  # files not scored; every other file scored and written
    printed = capsys.readouterr()
    said = printed.err.strip().splitlines()  # one line each on stderr
    assert [line.split(":")[0] for line in said] == [str(inputs / "blank.png"), str(inputs / "broken.jpg")]
    saved = list(csv.DictReader(open(out / "predictions.csv")))
    assert [(Path(r["file"]).name, r["person"]) for r in saved] == [
        ("blank.png", ""), ("broken.jpg", ""), ("face.png", ""), *[("two.mp4", p) for p in ("", "1", "2")]]
    assert [(r["p_fake"], r["verdict"]) for r in saved[:2]] == [("", ""), ("", "")]
    for r in saved[2:]:  # 0.5 uncalibrated: the verdict column says which side of it
        assert r["verdict"] == ("fake" if float(r["p_fake"]) > 0.5 else "real")
    for r in saved[2:4]:
        line = next(line for line in printed.out.splitlines() if line.startswith(r["file"]))
        assert f"p_fake {float(r['p_fake']):.4f}" in line
    persons = [sorted((tmp_path / "crops" / "two" / f"person{k}").glob("*.png")) for k in (1, 2)]
    assert [len(c) for c in persons] == [4, 4]  # the file's score is its largest person's
    assert float(saved[3]["p_fake"]) == pytest.approx(direct_p_fake(tiny_ckpt, persons[0]).mean(), abs=1e-5)
    assert float(saved[5]["p_fake"]) == pytest.approx(direct_p_fake(tiny_ckpt, persons[1]).mean(), abs=1e-5)


@pytest.fixture
def calibrated(tmp_path, tiny_ckpt, make_tree) -> SimpleNamespace:
    """A copy of the tiny checkpoint and an FF++ val split of 2 real and 8 fake videos, calibrated."""
    ckpt = Path(shutil.copy(tiny_ckpt, tmp_path / "best.pt"))
    data = make_tree(tmp_path / "data", splits=("val",), videos_per_source=2, frames=(0, 3), size=64)
    flags = ["--checkpoint", str(ckpt), "--device", "cpu", "--workers", "0"]
    assert evaluate.main([*FP32, "--calibrate", "--data", str(data), *flags]) == []
    return SimpleNamespace(ckpt=ckpt, data=data, flags=flags)


def test_calibrate_then_verdicts_rank_against_a_small_reference(calibrated, tmp_path, capsys):
    videos = layouts.load_videos(calibrated.data, "ff++", "val")  # the reference: the val videos' scores
    means = [direct_p_fake(calibrated.ckpt, v.frames).mean() for v in videos]
    reference = calibration.load_reference(calibrated.ckpt)
    for scores, label in ((reference.real, 0), (reference.fake, 1)):
        expect = sorted(m for m, v in zip(means, videos) if v.label == label)
        assert scores.tolist() == pytest.approx(expect, abs=1e-6)
    image, out = face_image(tmp_path), tmp_path / "out"
    capsys.readouterr()
    rows = evaluate.main([*FP32, "--image", str(image), "--out", str(out), *calibrated.flags])
    printed = capsys.readouterr().out
    threshold = calibration.Threshold(calibration.eer_threshold(reference), "equal error rate on FF++ val")
    verdict = calibration.judge(rows[0]["p_fake"], threshold, reference)
    assert f"{image}: {verdict.line()}; 1/1 frames with a face" in printed.splitlines()
    assert "small reference" in verdict.line()  # 2 real videos
    saved = next(csv.DictReader(open(out / "predictions.csv")))
    assert (saved["threshold"], saved["rank"], saved["verdict"]) == \
        (f"{threshold.value:.6f}", f"{verdict.real_below:.6f}", "fake" if verdict.fake else "real")
    # a number below every real reference score says that it calls all of them fake
    evaluate.main([*FP32, "--image", str(image), "--threshold", f"{reference.real[0] / 2:.4f}",
                   *calibrated.flags])
    assert "it calls 100.0% of the 2 FF++ val real videos fake" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_ckpt, make_split) -> SimpleNamespace:
    """Every kind of bad file once: checkpoints, data, a BPE file, a run without a log, references."""
    d = tmp_path_factory.mktemp("bad")
    good = tiny_ckpt.read_bytes()
    (d / "cut.pt").write_bytes(good[: len(good) // 2])
    (d / "model.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    detector = clip_vit.build_detector("tiny")  # LN-tuning: the frozen rest must be its CLIP
    clip_vit.set_trainable(detector, "ln")
    checkpoint.save_checkpoint(d / "ln.pt", detector, {"clip": "tiny", "norm": True})
    other_clip = clip_vit.tiny_visual(seed=5).state_dict()
    torch.save({f"visual.{k}": v for k, v in other_clip.items()}, d / "clip.pt")
    make_split(d / "data", "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "c", [0, 2])])
    make_split(d / "data", "dfdc", [("real", 0, "x", [0])])
    make_split(d / "crop", "cdfv2", [("Celeb-real", 0, "a", [0]), ("Celeb-synthesis", 1, "c", [0, 2])])
    (d / "crop" / "cdfv2" / "test" / "Celeb-synthesis" / "c" / "2.png").write_bytes(b"\x89PNG cut short")
    (d / "index" / "cdfv2" / "test").mkdir(parents=True)
    (d / "index" / "cdfv2" / "test" / "index.csv").write_text(",".join(layouts.INDEX_FIELDS)
                                                              + "\nb,x,2,1,x,b\n")
    (d / "bpe.gz").write_text("not gzip")
    (d / "run").mkdir()
    (d / "noval").mkdir()
    (d / "noval" / "log.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "epoch_done": True}) + "\n")
    (d / "badlog").mkdir()
    (d / "badlog" / "log.jsonl").write_text('{"step": 1}\n{"step": 2, "loss"\n')
    (d / "taken").write_text("a file where a folder should be")
    (d / "face.png").write_bytes(files.png_bytes(np.zeros((32, 32, 3), np.uint8)))
    (d / "out").mkdir()
    (d / "out" / "predictions.csv").write_text("an earlier run's\n")
    stored = d / "stored.pt"  # a checkpoint whose reference has 2 real videos
    torch.save({**checkpoint.load_checkpoint(tiny_ckpt), calibration.KEY: calibration.reference_entry(
        calibration.build_reference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]))}, stored)
    shutil.copy(tiny_ckpt, d / "damaged.pt")
    calibration.reference_path(d / "damaged.pt").write_text("{not json")
    shutil.copy(tiny_ckpt, d / "mine.pt")  # a reference made for it, copied beside another checkpoint
    calibration.calibrate(calibration.build_reference([0, 1], [0.2, 0.7]), d / "mine.pt")
    write_ckpt(d / "other.pt", {"clip": "tiny", "norm": True}, seed=3)
    shutil.copy(calibration.reference_path(d / "mine.pt"), calibration.reference_path(d / "other.pt"))
    return d


C = "{ckpt}"  # the tiny checkpoint
D = "{d}/data"  # a cdfv2 split, and a dfdc split of one class
CASES = [  # (argv, exit status, the flag or file the one line names); {d}: the bad fixture's folder
    (["--batch-size", "0"], 2, "--batch-size"), (["--workers", "-1"], 2, "--workers"),
    (["--device", "gpu"], 2, "--device"), (["--video", "v.mp4", "--frames", "some"], 2, "--frames"),
    (["--image", "x", "--threshold", "1.5"], 2, "--threshold"), (["--threshold", "fpr=1"], 2, "--threshold"),
    (["--dataset", "cdfv2", "--perturb", "sharp=2"], 2, "--perturb"),
    (["--perturb", "blur=1,1"], 2, "--perturb"),
    (["--video", "v.mp4", "--perturb"], 2, "--perturb"), (["--dataset", "nope"], 2, "--dataset"),
    (["--compare", C, C, "--dataset", "cdfv2"], 2, "--compare"),
    (["--compare", "a.pt", "b.pt"], 2, "--compare"),
    (["--compare", "a.pt", "b.pt", "--dataset", "cdfv2", "--zero-shot"], 2, "--compare"),
    (["--compare", "a.pt", "b.pt", "--video", "v.mp4"], 2, "--video"),
    (["--zero-shot", "--checkpoint", C], 2, "--zero-shot"),
    (["--zero-shot", "--prompts", "", "fake"], 2, "--prompts"), (["--report", "r"], 2, "--report"),
    (["--image", "x", "--report", "r", "--zero-shot"], 2, "--report"),
    (["--video", "x.mp4", "--report", "r", "--compile"], 2, "--compile"),
    (["--input", "{d}", "--report", "{d}/r"], 2, "--report"),
    (["--input", "{d}", "--save-crops", "{d}/c"], 2, "--save-crops"),
    (["--calibrate", "--zero-shot"], 2, "--calibrate"),
    (["--calibrate", "--dataset", "cdfv2"], 2, "--calibrate"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}/nope.pt"], 1, "{d}/nope.pt"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}"], 1, "{d}"),
    (["--dataset", "cdfv2", "--data", D, "--checkpoint", "{d}/cut.pt"], 1, "{d}/cut.pt"),
    (["--dataset", "cdfv2", "--data", D, "--checkpoint", "{d}/model.ckpt"], 1, "{d}/model.ckpt"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}/ln.pt", "--clip", "{d}/clip.pt"], 1, "{d}/ln.pt"),
    (["--video", "{d}", "--checkpoint", C], 1, "{d}"),
    (["--video", "{d}/no.mp4", "--checkpoint", C], 1, "no.mp4"),
    (["--dataset", "cdfv2", "--data", "{d}/nothing", "--checkpoint", C], 1, "cdfv2/test/index.csv"),
    (["--dataset", "ff++-c40", "--data", D, "--checkpoint", C], 1, "ff++-c40/test/index.csv"),
    (["--dataset", "cdfv2", "--data", "{d}/index", "--checkpoint", C], 1, "{d}/index/cdfv2/test/index.csv"),
    (["--dataset", "cdfv2", "--data", "{d}/crop", "--checkpoint", C], 1, "Celeb-synthesis/c/2.png"),
    (["--dataset", "cdfv2", "--data", D, "--zero-shot", "--clip", "tiny", "--bpe", "{d}/bpe.gz"], 1,
     "{d}/bpe.gz"),
    (["--dataset", "cdfv2", "--data", D, "--checkpoint", C, "--perturb", "resize=64"], 1, "resize=64"),
    (["--compare", C, "{d}/nope.pt", "--dataset", "cdfv2", "--data", D], 1, "{d}/nope.pt"),
    (["--compare", C, "{d}/ln.pt", "--dataset", "dfdc", "--data", D], 1, "{d}/data/dfdc/test"),
    (["--calibrate", "--data", "{d}/nothing", "--checkpoint", C], 1, "ff++/val/index.csv"),
    (["--image", "{d}/face.png", "--checkpoint", C, "--threshold", "eer"], 1, "--threshold"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}/stored.pt", "--threshold", "fpr=0.5"], 1,
     "--threshold"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}/damaged.pt"], 1, "{d}/damaged.pt.reference.json"),
    (["--image", "{d}/face.png", "--checkpoint", "{d}/other.pt"], 1, "{d}/other.pt.reference.json"),
    (["--image", "{d}/face.png", "--checkpoint", C, "--report", "{d}/taken/r"], 1, "{d}/taken/r"),
    (["--curves", "{d}/run"], 1, "{d}/run"), (["--curves", "{d}/noval"], 1, "{d}/noval/log.jsonl"),
    (["--curves", "{d}/badlog"], 1, "{d}/badlog/log.jsonl"),
]


@pytest.mark.parametrize("argv, status, names", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_naming_the_flag_or_file(argv, status, names, bad, tiny_ckpt, capsys):
    fill = {"d": bad, "ckpt": tiny_ckpt}  # the folder and file names the message must name
    before = snapshot(bad / "out")
    with pytest.raises(SystemExit) as e:
        evaluate.main([*FP32, *[a.format(**fill) for a in argv], "--out", str(bad / "out"),
                       "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [e.value.code] if isinstance(e.value.code, str) else err.strip().splitlines()[-1:]
    assert (1 if isinstance(e.value.code, str) else e.value.code) == status
    assert len(lines) == 1 and "\n" not in lines[0] and names.format(**fill) in lines[0], lines
    assert snapshot(bad / "out") == before  # nothing already written lost


def test_the_real_command_line_exits_1_with_one_line(bad):
    r, = run_cli(["--image", bad / "face.png", "--checkpoint", bad / "cut.pt", "--device", "cpu"])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1 and "cut.pt" in errors[0]


def test_torchrun_refuses_single_process_modes(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["--video", "v.mp4"], ["--curves", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, *argv, "--device", "cpu"])
        assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_full_disk_is_one_line_and_keeps_the_earlier_file(split, tmp_path, tiny_ckpt, monkeypatch):
    out, real = tmp_path / "out", files.atomic_write
    evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split),
                   "--out", str(out), "--workers", "0"])
    for name in ("videos.csv", "roc.png", "cdfv2-summary.json"):
        target = next(out.rglob(name))
        before = target.read_bytes()

        def full(path, content, name=name):
            if Path(path).name == name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, content)
        monkeypatch.setattr(files, "atomic_write", full)
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split),
                           "--out", str(out), "--workers", "0"])
        assert name in str(e.value) and "\n" not in str(e.value) and target.read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_evaluate_leaves_no_loader_workers(make_split, tmp_path, tiny_ckpt):
    data = tmp_path / "data"  # enough crops that the run is still scoring when killed
    make_split(data, "cdfv2", [("Celeb-real", 0, "r", range(200)), ("Celeb-synthesis", 1, "f", range(200))])
    p = subprocess.Popen([sys.executable, "evaluate.py", *FP32, "--dataset", "cdfv2", "--checkpoint",
                          str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "out"),
                          "--workers", "2", "--batch-size", "2", "--device", "cpu"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 120, []
        while len(workers) < 2 and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            workers = U.live_children(p.pid)
        assert len(workers) == 2, "the DataLoader workers never started"
        U.kill_and_wait(p, workers)
        assert not [w for w in workers if U.alive(w)], "loader workers outlived the killed evaluate.py"
    finally:
        U.kill_all(p, workers)


# ----------------------------------------------------------------------------- --curves, torchrun

def test_curves_figure_and_best_per_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    for name, aurocs, per_epoch in (("ln", [0.80, 0.86, 0.84], 100), ("full", [None, 0.90, 0.95, 0.95], 50)):
        (runs / name).mkdir(parents=True)
        (runs / name / "log.jsonl").write_text("".join(json.dumps({
            "step": (epoch + 1) * per_epoch, "epoch": epoch, "epoch_done": True,
            "val_video_auroc": value}) + "\n"
            for epoch, value in enumerate(aurocs)))
    curves = evaluate.main([*FP32, "--curves", str(runs / "ln"), str(runs / "full"), "--out", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{runs / 'ln'}: best val video AUROC 86.00% at step 200 (epoch 1)")
    # the first of two equals
    assert printed[1].startswith(f"{runs / 'full'}: best val video AUROC 95.00% at step 150 (epoch 2)")
    assert curves[0].auroc == [0.80, 0.86, 0.84] and curves[1].steps == [100, 150, 200]
    assert cv2.imread(str(tmp_path / "curves.png")).shape[0] > 300


def test_torchrun_two_cpu_ranks_same_outputs_as_one_process(make_split, tmp_path, tiny_ckpt):
    data = tmp_path / "data"  # frame counts that do not split evenly over 2 ranks
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0, 1, 2]), ("Celeb-real", 0, "b", [0]),
                               ("Celeb-real", 0, "e", [3, 4]), ("Celeb-synthesis", 1, "c", [0, 2]),
                               ("Celeb-synthesis", 1, "d", [5, 6, 7, 8])])
    common = ["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data),
              "--workers", "0", "--device", "cpu", "--batch-size", "3", "--perturb", "jpeg=50", "noise=0.1"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port="
                        f"{U.free_port()}", "evaluate.py", *FP32, *common, "--out", str(tmp_path / "multi")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| CDFv2 | video |") == 1  # rank 0 prints, rank 1 does not
    evaluate.main([*FP32, *common, "--out", str(tmp_path / "single")])
    one, two = (json.load(open(tmp_path / f / "cdfv2" / "metrics.json")) for f in ("single", "multi"))
    for name in ("videos.csv", "robustness.csv"):  # 6 decimals: 1e-6 plus the half unit each rounding may add
        a, b = (list(csv.DictReader(open(tmp_path / f / "cdfv2" / name))) for f in ("single", "multi"))
        assert [r["video_id"] for r in a] == [r["video_id"] for r in b] == ["a", "b", "e", "c", "d"]
        for key in ("p_fake",) if name == "videos.csv" else ("none", "jpeg=50", "noise=0.1"):
            assert [float(r[key]) for r in a] == pytest.approx([float(r[key]) for r in b], abs=2e-6)
    for level in ("video", "frame"):
        assert one[level]["auroc"] == two[level]["auroc"] and one[level]["n"] == two[level]["n"]
        for key in ("ap", "eer", "acc"):
            assert one[level][key] == pytest.approx(two[level][key], abs=1e-6)
    aurocs = [[r["video"]["auroc"] for r in m["robustness"]["rows"]] for m in (one, two)]
    assert aurocs[0] == aurocs[1]
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["cdfv2", "cdfv2-summary.json",
                                                                      "cdfv2-summary.md"]
