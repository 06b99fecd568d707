"""Tests of evaluate.py: metrics, video aggregation, benchmark outputs, scoring single files,
Figure 1; and through its real command line: every class of bad input ends in one line naming
the problem (exit 1; argparse's exit 2 for flags), no traceback, finished outputs untouched;
killed runs leave no loader workers; torchrun's ranks give the single process's numbers.

Each subprocess costs a torch import (~2-3 s), so independent cases start together."""

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
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import _video_utils as U
import clip_vit
from data import compute_metrics, video_scores
import evaluate
from util import calibration, checkpoint, files, layouts, perturb, stats
from util.tokenizer import Tokenizer

# the tests compare p_fake with fp32 references: auto would take bf16 on a CPU with AMX
FP32 = ["--precision", "fp32"]

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argvs, env=None, timeout=300) -> list[SimpleNamespace]:
    """`python evaluate.py ARGS` for each argument list, all at once; (returncode, stdout, stderr)."""
    procs = [subprocess.Popen([sys.executable, "evaluate.py", *FP32, *map(str, argv)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for argv in argvs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(SimpleNamespace(returncode=p.returncode, stdout=out, stderr=err))
    return results


def assert_one_line_error(r, *texts, status=1) -> str:
    """Exit status, no traceback, and one error line holding every text."""
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
    for text in texts:
        assert text in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def split(make_split, tmp_path) -> Path:
    """A small cdfv2 test split; returns the --data folder."""
    data = tmp_path / "data"
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0, 1]), ("Celeb-real", 0, "b", [0]),
                               ("Celeb-synthesis", 1, "c", [0, 2]), ("Celeb-synthesis", 1, "d", [5])])
    return data


@pytest.fixture
def finished(tmp_path) -> Path:
    """An --out folder holding a finished earlier run's outputs, which a failure must not touch."""
    out = tmp_path / "out"
    (out / "cdfv2").mkdir(parents=True)
    (out / "cdfv2" / "metrics.json").write_text('{"earlier": "run"}\n')
    (out / "cdfv2" / "videos.csv").write_text("video_id,p_fake\nx,0.5\n")
    (out / "cdfv2-summary.md").write_text("| earlier |\n")
    return out


# ----------------------------------------------------------------------------- metrics

def test_eer_hand_computed_interpolated():
    # labels 0 0 1 1, scores .2 .5 .5 .8. Thresholds from high to low:
    #   > .8: FPR 0, FNR 1;  .8: FPR 0, FNR .5;  .5 (one real and one fake tie): FPR .5, FNR 0.
    # The segment (0, .5) -> (.5, 0) crosses FPR = FNR halfway: EER = .25.
    # AUROC: fake > real in 3 of 4 pairs, one tie counts 1/2 -> 3.5 / 4.
    m = compute_metrics([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8])
    assert m["eer"] == pytest.approx(0.25)
    assert m["auroc"] == pytest.approx(0.875)
    assert m["acc"] == pytest.approx(0.75)  # .5 is not > .5: the tied fake counts as real
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_eer_hand_computed_vertical_segment():
    # labels 0 0 0 1 1, scores .1 .2 .7 .6 .9: at threshold .7 FPR = 1/3, FNR = 1/2; at .6
    # FPR = 1/3, FNR = 0. FNR falls through 1/3 while FPR stays 1/3: EER = 1/3.
    m = compute_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.7, 0.6, 0.9])
    assert m["eer"] == pytest.approx(1 / 3)
    # perfect separation: EER 0; inverted: EER 1
    assert compute_metrics([0, 1], [0.1, 0.9])["eer"] == pytest.approx(0.0)
    assert compute_metrics([0, 1], [0.9, 0.1])["eer"] == pytest.approx(1.0)


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    for n in (7, 50, 1000):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.clip(0.3 * labels + rng.normal(0.4, 0.3, n), 0, 1).round(2)  # ties too
        m = compute_metrics(labels, scores)
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
    m = compute_metrics([1, 1, 1], [0.9, 0.4, 0.7])
    assert m["auroc"] is None and m["eer"] is None and m["ap"] is None
    assert "only fake" in m["undefined"]
    assert m["acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="length"):
        compute_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        compute_metrics([0, 2], [0.5, 0.5])


def test_video_aggregation_is_mean_of_frames():
    keys = ["a", "b", "a", "c", "a", "b"]
    scores = [0.1, 0.5, 0.3, 0.9, 0.2, 0.7]
    agg = video_scores(keys, scores)
    assert list(agg) == ["a", "b", "c"]
    assert agg["a"] == pytest.approx(0.2) and agg["b"] == pytest.approx(0.6)
    assert agg["c"] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- benchmarks

def direct_p_fake(ckpt: Path, crops: list) -> np.ndarray:
    """p_fake of crop files (or RGB arrays) computed without evaluate.py's loader."""
    det = clip_vit.load_detector(str(ckpt)).eval()
    tf = clip_vit.image_transform(224)
    rgb = [f if isinstance(f, np.ndarray) else cv2.imread(str(f))[:, :, ::-1].copy() for f in crops]
    x = torch.stack([tf(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)) for a in rgb])
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
    evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data),
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
    expect = compute_metrics(labels, scores)
    for key in ("auroc", "ap", "eer", "acc"):
        assert res["video"][key] == pytest.approx(expect[key], abs=1e-5)
    assert (res["video"]["n"], res["video"]["n_real"], res["video"]["n_fake"]) == (5, 2, 3)
    assert (res["frame"]["n"], res["frame"]["n_real"], res["frame"]["n_fake"]) == (11, 5, 6)
    assert res["model"] == "tiny/best.pt"
    # no reference stored with this checkpoint: the table's threshold is 0.5, said to be uncalibrated;
    # TPR at 1% / 5% FPR of 2 real videos: the share of fakes above the larger real score
    assert res["threshold"]["value"] == 0.5 and "uncalibrated" in res["threshold"]["how"]
    assert res["video"]["acc_ref"] == pytest.approx(expect["acc"])
    real, fake = [s for s, l in zip(scores, labels) if l == 0], [s for s, l in zip(scores, labels) if l == 1]
    for key in ("tpr@1%fpr", "tpr@5%fpr"):
        assert res["video"][key] == pytest.approx(sum(f > max(real) for f in fake) / len(fake))

    # the printed Markdown table carries the same numbers
    line = next(l for l in printed.splitlines() if l.startswith("| CDFv2 | video |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:5] == ["5", "2", "3"]
    lo, hi = res["video"]["auroc_ci"]
    assert cells[5] == f"{100 * expect['auroc']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
    assert cells[7] == f"{100 * expect['eer']:.2f}"
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
    evaluate.main([*FP32, "--dataset", "all", "--data", str(data), "--runs", str(runs), "--out", str(out),
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
    cdf, (lo, hi) = summary["results"]["cdfv2"]["video"]["auroc"], summary["results"]["cdfv2"]["video"]["auroc_ci"]
    assert cells[1:7] == [f"{100 * cdf:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]", "missing", "n/a", "missing",
                          "missing", f"{100 * cdf:.2f} (1/5)"]
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
            evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data)])
        msg = str(e.value)
        assert "cdfv2/test/index.csv" in msg and "python preprocess.py --dataset cdfv2" in msg
    with pytest.raises(SystemExit, match="preprocess.py --dataset ff\\+\\+ --compression c40 "):
        evaluate.main([*FP32, "--dataset", "ff++-c40", "--checkpoint", str(tiny_ckpt), "--data", str(tmp_path)])


# ----------------------------------------------------------------------------- the researcher's report

FULL = {"clip": "tiny", "normalize": True, "norm": True, "tuning": "ln", "uniformity": 0.5, "alignment": 0.1,
        "slerp": True}
LN_NORM = {**FULL, "uniformity": 0, "alignment": 0, "slerp": False}  # the paper's "LN-tuning + L2 norm"


def write_ckpt(path: Path, config: dict, seed: int = 1) -> Path:
    """A tiny detector whose random head makes p_fake depend on the image, saved with `config`."""
    detector = clip_vit.build_detector("tiny")
    with torch.no_grad():
        detector.head.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(seed))
    checkpoint.save_checkpoint(path, detector, config)
    return path


@pytest.fixture
def report_split(make_split, tmp_path) -> Path:
    """A cdfv2 test split of 7 real and 7 fake videos of 1-3 frames; returns the --data folder."""
    data = tmp_path / "data"
    make_split(data, "cdfv2", [("Celeb-real", 0, f"r{k}", range(1 + k % 3)) for k in range(7)]
               + [("Celeb-synthesis", 1, f"f{k}", range(1 + (k + 1) % 3)) for k in range(7)])
    return data


def split_truth(data: Path, ckpt: Path, change=lambda rgb, key: rgb) -> SimpleNamespace:
    """Labels, p_fake and each frame's video of the cdfv2 split computed directly from index.csv and
    the crops, each crop (RGB) passed through change(rgb, its path under the split) first."""
    split = data / "cdfv2" / "test"
    rows = list(csv.DictReader(open(split / "index.csv")))
    frames = [sorted((split / r["path"]).glob("*.png"), key=lambda p: int(p.stem)) for r in rows]
    crops = [change(cv2.imread(str(f))[:, :, ::-1].copy(), f"{r['path']}/{f.name}") for r, fs in zip(rows, frames)
             for f in fs]
    frame_p = direct_p_fake(ckpt, crops)
    videos = [r["path"] for r, fs in zip(rows, frames) for _ in fs]
    per_video = video_scores(videos, frame_p)
    return SimpleNamespace(labels=np.array([int(r["label"]) for r in rows]),
                           video_p=np.array([per_video[r["path"]] for r in rows]), frame_p=frame_p, videos=videos,
                           frame_labels=np.array([int(r["label"]) for r, fs in zip(rows, frames) for _ in fs]))


def cell(auroc: float, ci) -> str:
    return f"{100 * auroc:.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def test_intervals_and_the_paper_row_beside_for_the_full_method(report_split, tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "runs" / "full" / "best.pt", FULL)
    out = tmp_path / "out"
    summary = evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(ckpt), "--data", str(report_split),
                             "--out", str(out), "--workers", "0"])
    printed = capsys.readouterr().out
    m = json.load(open(out / "cdfv2" / "metrics.json"))
    t = split_truth(report_split, ckpt)
    assert m["video"]["auroc"] == pytest.approx(roc_auc_score(t.labels, t.video_p), abs=1e-12)
    # the intervals: 2,000 class-stratified resamples of seed 0; frames: whole videos resampled
    assert m["video"]["auroc_ci"] == pytest.approx(stats.bootstrap_auroc_ci(t.labels, t.video_p, n_boot=2000, seed=0))
    frame_ci = stats.bootstrap_auroc_ci(t.frame_labels, t.frame_p, t.videos, n_boot=2000, seed=0)
    assert m["frame"]["auroc_ci"] == pytest.approx(frame_ci)
    assert frame_ci != pytest.approx(stats.bootstrap_auroc_ci(t.frame_labels, t.frame_p, n_boot=2000, seed=0))
    for level in ("video", "frame"):
        lo, hi = m[level]["auroc_ci"]
        assert lo < m[level]["auroc"] < hi
        counts = " | ".join(str(m[level][k]) for k in ("n", "n_real", "n_fake"))
        assert f"| CDFv2 | {level} | {counts} | {cell(m[level]['auroc'], m[level]['auroc_ci'])} |" in printed
    # the paper's row, its number, the difference and whether it lies in the interval
    auroc, (lo, hi) = m["video"]["auroc"], m["video"]["auroc_ci"]
    inside = "yes" if round(100 * lo, 2) <= 96.62 <= round(100 * hi, 2) else "no"
    assert "The paper's row for full/best.pt: full (LN + norm + UnAl + slerp) (from its config)." in printed
    assert f"| CDFv2 | {cell(auroc, (lo, hi))} | 96.62 | {100 * auroc - 96.62:+.2f} | {inside} |" in printed
    assert summary["paper"]["row"] == "full (LN + norm + UnAl + slerp)"
    assert summary["paper"]["datasets"]["cdfv2"] == pytest.approx(
        {"paper": 96.62, "diff": 100 * auroc - 96.62, "inside_ci": inside == "yes"})
    assert json.load(open(out / "cdfv2-summary.json"))["paper"] == summary["paper"]
    assert (out / "cdfv2-summary.md").read_text().strip() in printed


def test_a_config_of_no_row_says_so_and_the_paper_columns_show_a_row(report_split, tmp_path, tiny_ckpt, capsys):
    summary = evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(report_split),
                             "--out", str(tmp_path / "none"), "--workers", "0"])
    printed = capsys.readouterr().out
    assert ("The paper's row for tiny/best.pt: none: its config (tuning ?, norm on, uniformity ?, alignment ?, "
            "slerp ?) matches no row of the paper's table; no paper number to compare.") in printed
    assert "96.62" not in printed and "| paper" not in printed
    assert summary["paper"] == {"row": None, "why": summary["paper"]["why"], "datasets": {}}
    # --dataset all: the paper's row beneath the measured one in the paper's columns
    ckpt = write_ckpt(tmp_path / "runs" / "ln-norm" / "best.pt", LN_NORM)
    summary = evaluate.main([*FP32, "--dataset", "all", "--checkpoint", str(ckpt), "--data", str(report_split),
                             "--out", str(tmp_path / "all"), "--workers", "0"])
    video = summary["results"]["cdfv2"]["video"]
    lines = capsys.readouterr().out.splitlines()
    assert f"| ln-norm/best.pt | {cell(video['auroc'], video['auroc_ci'])} | missing | missing | missing | missing | " \
           f"{100 * video['auroc']:.2f} (1/5) |" in lines
    assert "| paper: LN-tuning + L2 norm | 96.21 | 98.18 | 87.82 | 92.72 | 88.81 | 96.21 (1/5) |" in lines
    assert summary["paper"]["datasets"]["cdfv2"]["paper"] == 96.21


def test_compare_a_checkpoint_with_its_copy_and_with_another(report_split, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    full, ln_norm = write_ckpt(runs / "full" / "best.pt", FULL), write_ckpt(runs / "ln-norm" / "best.pt", LN_NORM, 2)
    (runs / "copy").mkdir()
    copy = runs / "copy" / "best.pt"
    copy.write_bytes(full.read_bytes())
    monkeypatch.chdir(tmp_path)  # the default --out: eval/compare-<A>-vs-<B>-<dataset>
    common = ["--dataset", "cdfv2", "--data", str(report_split), "--workers", "0"]
    same = evaluate.main([*FP32, "--compare", str(full), str(copy), *common])
    printed = capsys.readouterr().out
    assert same["diff"] == 0 and same["p"] == 1.0 and same["auroc_a"] == same["auroc_b"]
    assert same["ci"][0] <= 0 <= same["ci"][1] and same["bootstrap_ci"][0] <= 0 <= same["bootstrap_ci"][1]
    assert "A - B: +0.00 [+0.00, +0.00] points, p = 1 (DeLong's paired test; paired bootstrap 95% CI " \
           "[+0.00, +0.00])" in printed
    folder = tmp_path / "eval" / "compare-full-best-vs-copy-best-cdfv2"
    assert json.load(open(folder / "compare.json")) == json.loads(json.dumps(same))
    assert (folder / "compare.md").read_text().strip() in printed

    other = evaluate.main([*FP32, "--compare", str(full), str(ln_norm), *common, "--out", str(tmp_path / "other")])
    lines = capsys.readouterr().out.splitlines()
    a, b = split_truth(report_split, full), split_truth(report_split, ln_norm)
    assert other["a"]["auroc"] == pytest.approx(roc_auc_score(a.labels, a.video_p), abs=1e-12)
    assert other["b"]["auroc"] == pytest.approx(roc_auc_score(a.labels, b.video_p), abs=1e-12)
    assert other["diff"] == pytest.approx(other["a"]["auroc"] - other["b"]["auroc"]) and other["diff"] != 0
    expect = stats.paired_comparison(a.labels, a.video_p, b.video_p, n_boot=2000, seed=0)
    for key in ("ci", "p", "bootstrap_ci"):
        assert other[key] == pytest.approx(expect[key]), key
    assert (other["a"]["row"], other["b"]["row"]) == ("full (LN + norm + UnAl + slerp)", "LN-tuning + L2 norm")
    assert f"| B | {ln_norm} | LN-tuning + L2 norm | {cell(other['b']['auroc'], other['b']['auroc_ci'])} |" in lines
    saved = list(csv.DictReader(open(tmp_path / "other" / "compare.csv")))
    assert [float(r["p_fake_b"]) for r in saved] == pytest.approx(b.video_p, abs=1e-5)


def test_perturb_table_plot_and_scores_of_perturbed_crops(report_split, tmp_path, tiny_ckpt, capsys):
    grid = ["jpeg=20", "blur=2", "resize=12", "noise=0.2"]
    common = ["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(report_split), "--workers", "0"]
    evaluate.main([*FP32, *common, "--out", str(tmp_path / "plain")])
    capsys.readouterr()
    evaluate.main([*FP32, *common, "--out", str(tmp_path / "out"), "--perturb", *grid])
    printed = capsys.readouterr().out
    plain = json.load(open(tmp_path / "plain" / "cdfv2" / "metrics.json"))
    m = json.load(open(tmp_path / "out" / "cdfv2" / "metrics.json"))
    rows = m["robustness"]["rows"]
    assert [(r["perturbation"], r["severity"]) for r in rows] == [("none", None), ("jpeg", 20), ("blur", 2),
                                                                  ("resize", 12), ("noise", 0.2)]
    assert rows[0]["video"] == plain["video"] == m["video"]  # the unperturbed row is the plain evaluation
    assert f"| none | {cell(plain['video']['auroc'], plain['video']['auroc_ci'])} | |" in printed
    saved = list(csv.DictReader(open(tmp_path / "out" / "cdfv2" / "robustness.csv")))
    assert list(saved[0]) == ["video_id", "source", "label", "path", "none", *grid]
    assert [float(v["none"]) for v in saved] == pytest.approx(split_truth(report_split, tiny_ckpt).video_p, abs=1e-5)
    changed = 0
    for r in rows[1:]:  # each perturbation applied to every crop directly, noise seeded by the crop's path
        t = split_truth(report_split, tiny_ckpt, lambda rgb, key, r=r: perturb.apply(
            r["perturbation"], r["severity"], rgb, perturb.crop_seed(0, key)))
        label = perturb.label(r["perturbation"], r["severity"])
        assert [float(v[label]) for v in saved] == pytest.approx(t.video_p, abs=1e-5)
        assert r["video"]["auroc"] == pytest.approx(roc_auc_score(t.labels, t.video_p), abs=1e-12)
        assert r["video"]["ap"] == pytest.approx(average_precision_score(t.labels, t.video_p), abs=1e-6)
        assert r["video"]["auroc_ci"] == pytest.approx(stats.bootstrap_auroc_ci(t.labels, t.video_p, n_boot=2000))
        change = f"{100 * (r['video']['auroc'] - plain['video']['auroc']) + 0.0:+.2f}"
        assert f"| {label} | {cell(r['video']['auroc'], r['video']['auroc_ci'])} | {change} |" in printed
        changed += not np.allclose(t.video_p, [float(v["none"]) for v in saved], atol=1e-3)
    assert changed == len(grid)  # every perturbation reaches the scores
    figure = cv2.imread(m["files"]["robustness"])  # what it holds: tests/test_plots.py
    assert m["files"]["robustness"] == str(tmp_path / "out" / "cdfv2" / "robustness.png")
    assert figure is not None and (figure < 250).any(axis=2).mean() > 0.02
    assert evaluate.parse_args(["--dataset", "cdfv2", "--perturb"]).perturb == perturb.DEFAULT_PERTURB


def test_bad_report_flags_one_line(report_split, finished, tmp_path, tiny_ckpt, capsys):
    link = tmp_path / "link.pt"
    link.symlink_to(tiny_ckpt)
    cases = [
        (["--dataset", "cdfv2", "--perturb", "sharpen=2"], "argument --perturb: 'sharpen=2': a perturbation is "
         "NAME=V1,V2,... with NAME one of jpeg, blur, resize, noise"),
        (["--perturb", "jpeg=101"],
         "argument --perturb: 'jpeg=101': jpeg quality must be an integer in 1..100, got 101"),
        (["--perturb", "blur=1,1"], "argument --perturb: 'blur=1,1': blur=1 is given twice"),
        (["--video", "v.mp4", "--perturb"], "--perturb goes with --dataset"),
        (["--compare", str(tiny_ckpt), str(tiny_ckpt), "--dataset", "cdfv2"], "are the same file"),
        (["--compare", str(tiny_ckpt), str(link), "--dataset", "cdfv2"], "are the same file"),
        (["--compare", "a.pt", "b.pt"], "--compare scores both models on one split: give --dataset NAME"),
        (["--compare", "a.pt", "b.pt", "--dataset", "all"], "--compare scores both models on one split"),
        (["--compare", "a.pt", "b.pt", "--dataset", "cdfv2", "--zero-shot"],
         "drop --checkpoint, --zero-shot, --perturb"),
        (["--compare", "a.pt", "b.pt", "--dataset", "cdfv2", "--perturb"], "drop --checkpoint, --zero-shot, --perturb"),
        (["--compare", "a.pt", "b.pt", "--video", "v.mp4"], "give one of --dataset, --video/--image/--input"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.parse_args(argv)
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert e.value.code == 2 and len(errors) == 1 and message in errors[0], (argv, errors)
    # at run time (exit 1): before any scoring, or before any output; the earlier run's files intact
    before = snapshot(finished)
    common = ["--data", str(report_split), "--out", str(finished), "--workers", "0"]
    for argv, message in [
        (["--compare", str(tiny_ckpt), str(tmp_path / "nope.pt"), "--dataset", "cdfv2"],
         f"error: checkpoint {tmp_path / 'nope.pt'} not found"),
        (["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--perturb", "resize=64"],
         "error: resize=64: larger than the 48x48 crop"),
    ]:
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, *argv, *common])
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert snapshot(finished) == before
    r, = run_cli(["--dataset", "cdfv2", "--perturb", "noise=2", "--data", tmp_path])  # the real command line
    assert_one_line_error(r, "argument --perturb: 'noise=2': noise sigma must be a number in (0, 1], got 2", status=2)


# ----------------------------------------------------------------------------- single files

def test_video_with_face_scored_and_without_face_says_so(tmp_path, tiny_ckpt, capsys):
    # two people in every frame: the larger on the left (person 1), a smaller one on the right
    frames = []
    for k in range(4):
        f = U.place_face((640, 360), (180 + 5 * k, 160), 1.8)
        frames.append(U.place_face((640, 360), (500 - 5 * k, 150), 1.05, frame=f))
    two = U.write_video(tmp_path / "two.mp4", frames)
    noface = U.blank_video(tmp_path / "noface.mp4")
    crops = tmp_path / "crops"
    rows = evaluate.main([*FP32, "--video", str(two), "--video", str(noface), "--checkpoint", str(tiny_ckpt),
                          "--save-crops", str(crops), "--out", str(tmp_path / "out"), "--device", "cpu"])
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith(str(two)))
    assert "p_fake" in line and "4/4 frames with a face; 2 people, score of person 1, the largest" in line
    p = rows[0]["p_fake"]
    assert 0.0 <= p <= 1.0 and f"{p:.4f}" in line
    persons = [sorted((crops / "two" / f"person{k}").glob("*.png")) for k in (1, 2)]
    assert [len(c) for c in persons] == [4, 4]  # and they are what was scored
    p_persons = [direct_p_fake(tiny_ckpt, c).mean() for c in persons]
    assert abs(p_persons[0] - p_persons[1]) > 1e-3  # so the file's score tells them apart
    assert p == pytest.approx(p_persons[0], abs=1e-5)
    line = next(l for l in printed.splitlines() if l.startswith(str(noface)))
    assert "no face found" in line and "p_fake" not in line
    assert rows[-1]["p_fake"] is None
    saved = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [(r["person"], r["frames_with_face"]) for r in saved] == [("", "4"), ("1", "4"), ("2", "4"), ("", "0")]
    assert saved[-1]["p_fake"] == "" and saved[-1]["note"] == "no face found"
    # the file's score is its main (largest) person's, and each person's own row says theirs
    assert float(saved[0]["p_fake"]) == pytest.approx(p, abs=1e-6)
    assert float(saved[1]["p_fake"]) == pytest.approx(p, abs=1e-6)
    assert float(saved[2]["p_fake"]) == pytest.approx(p_persons[1], abs=1e-5)


def test_zero_shot_baseline_same_outputs(make_split, tmp_path, capsys):
    import gzip
    bpe = tmp_path / "bpe.txt.gz"  # a tiny BPE vocabulary: the prompts' bytes + a few merges
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("#version: test\nf a\nfa c\nfac e</w>\nr e\n")
    data = tmp_path / "data"
    make_split(data, "dfd", [("actors", 0, "a", [0, 1]), ("actors", 0, "b", [0]),
                             ("DeepFakeDetection", 1, "c", [0]), ("DeepFakeDetection", 1, "d", [3, 6])])
    out = tmp_path / "out"
    evaluate.main([*FP32, "--dataset", "dfd", "--zero-shot", "--clip", "tiny", "--bpe", str(bpe),
                   "--data", str(data), "--out", str(out), "--workers", "0"])
    printed = capsys.readouterr().out
    assert "zero-shot CLIP tiny" in printed
    assert "The paper's row for zero-shot CLIP tiny: none: zero-shot CLIP is no row of the paper's table" in printed
    assert json.load(open(out / "dfd-summary.json"))["paper"]["row"] is None
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
    summary = evaluate.main([*FP32, "--dataset", "all", "--checkpoint", str(tiny_ckpt), "--data", str(data),
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
    assert "The paper's row for tiny/best.pt: none: its config (" in summary["table"]  # not a dataset's error

    # one dataset: the same reasons as a one-line error
    for name, reason in (("ffiw", "holds no <frame>.png crops"), ("dfd", "cannot be read")):
        with pytest.raises(SystemExit, match=reason) as e:
            evaluate.main([*FP32, "--dataset", name, "--checkpoint", str(tiny_ckpt), "--data", str(data),
                           "--out", str(out), "--workers", "0"])
        assert "\n" not in str(e.value)
    (data / "cdfv2" / "test" / "index.csv").write_text("video_id,source\na,Celeb-real\n")
    with pytest.raises(SystemExit, match="not an index written by preprocess.py: expected columns"):
        evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data)])


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
            evaluate.main([*FP32, "--image", str(image), *extra])
        assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="is a folder, not a file: use --input"):
        evaluate.main([*FP32, "--video", str(tmp_path), "--checkpoint", str(tiny_ckpt)])
    with pytest.raises(SystemExit):  # argparse: the crops would be scored as inputs next time
        evaluate.main([*FP32, "--input", str(tmp_path), "--save-crops", str(tmp_path / "crops")])


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
    rows = evaluate.main([*FP32, "--input", str(inputs), "--checkpoint", str(tiny_ckpt), "--out", str(out),
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


# ----------------------------------------------------------------------------- verdicts against a reference

@pytest.fixture
def calibrated(tmp_path, tiny_ckpt, make_tree) -> SimpleNamespace:
    """A copy of the tiny checkpoint (its reference is written beside it) and an FF++ val split:
    2 real and 8 fake videos of 2 crops each."""
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(tiny_ckpt, ckpt)
    data = make_tree(tmp_path / "data", splits=("val",), videos_per_source=2, frames=(0, 3), size=64)
    return SimpleNamespace(ckpt=ckpt, data=data, flags=["--checkpoint", str(ckpt), "--device", "cpu", "--workers", "0"])


def face_image(tmp_path: Path) -> Path:
    from skimage import data as skdata
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def test_calibrate_then_verdicts_state_the_rank_among_the_reference_and_the_threshold(calibrated, face_video,
                                                                                      tmp_path, capsys):
    assert evaluate.main([*FP32, "--calibrate", "--data", str(calibrated.data), *calibrated.flags]) == []
    path = calibration.reference_path(calibrated.ckpt)
    assert f"reference: 2 real and 8 fake FF++ val videos: written to {path}\n" in capsys.readouterr().out
    videos = layouts.load_videos(calibrated.data, "ff++", "val")  # the val videos' scores, as the paper's
    means = [direct_p_fake(calibrated.ckpt, v.frames).mean() for v in videos]
    reference = calibration.load_reference(calibrated.ckpt)
    assert reference.real.tolist() == pytest.approx(sorted(m for m, v in zip(means, videos) if v.label == 0), abs=1e-6)
    assert reference.fake.tolist() == pytest.approx(sorted(m for m, v in zip(means, videos) if v.label == 1), abs=1e-6)

    out = tmp_path / "out"  # later runs use it, and name it
    rows = evaluate.main([*FP32, "--video", str(face_video), "--out", str(out), *calibrated.flags])
    printed = capsys.readouterr().out
    threshold = calibration.Threshold(calibration.eer_threshold(reference), "equal error rate on FF++ val")
    assert (f"reference: 2 real and 8 fake FF++ val videos ({path}); threshold {threshold.value:.4f} "
            f"(equal error rate on FF++ val)") in printed
    verdict = calibration.judge(rows[0]["p_fake"], threshold, reference)
    line = next(l for l in printed.splitlines() if l.startswith(str(face_video)))
    assert line == f"{face_video}: {verdict.line()}; 8/8 frames with a face"
    assert "above " in line and "of the 2 FF++ val real videos; threshold " in line
    saved = list(csv.DictReader(open(out / "predictions.csv")))
    assert list(saved[0]) == ["file", "person", "frames_seen", "frames_with_face", "p_fake", "note",  # as before
                              "threshold", "rank", "p_value"]                                       # at the end
    assert saved[0]["threshold"] == f"{threshold.value:.6f}" and saved[0]["rank"] == f"{verdict.real_below:.6f}"
    assert saved[0]["p_value"] == f"{verdict.p_value:.6f}"

    evaluate.main([*FP32, "--video", str(face_video), "--threshold", "fpr=0.5", *calibrated.flags])
    assert f"threshold {reference.real[0]:.4f} (50% false alarms on the 2 FF++ val real videos)" in \
        capsys.readouterr().out


def test_reference_stored_by_train_py_and_no_reference(tmp_path, tiny_ckpt, capsys):
    """best.pt written by train.py carries its reference; a checkpoint without one says 0.5 is uncalibrated."""
    image = face_image(tmp_path)
    stored = tmp_path / "best.pt"
    ckpt = checkpoint.load_checkpoint(tiny_ckpt)
    torch.save({**ckpt, calibration.KEY: calibration.reference_entry(
        calibration.build_reference([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]))}, stored)
    rows = evaluate.main([*FP32, "--image", str(image), "--checkpoint", str(stored), "--threshold", "0.3", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"reference: 2 real and 2 fake FF++ val videos (stored in {stored}); threshold 0.3000 (given by --threshold)" \
        in printed
    assert "; threshold 0.3000 (given by --threshold); 1/1 frames with a face" in printed
    assert rows[0]["threshold"] == "0.300000" and rows[0]["rank"] != ""
    evaluate.main([*FP32, "--image", str(image), "--checkpoint", str(tiny_ckpt), "--device", "cpu"])
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(str(image)))
    assert line.endswith("threshold 0.5000 (uncalibrated: no reference scores for this checkpoint; make them with "
                         "evaluate.py --calibrate); 1/1 frames with a face")


def test_bad_reference_threshold_and_report_folder_are_one_line(calibrated, tmp_path, capsys):
    image, out = face_image(tmp_path), tmp_path / "out"
    ckpt, fix = calibrated.ckpt, f"python evaluate.py --calibrate --checkpoint {calibrated.ckpt}"
    finished = out / "predictions.csv"
    finished.parent.mkdir()
    finished.write_text("an earlier run's\n")

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, "--image", str(image), "--out", str(out), *calibrated.flags, *argv])
        assert "\n" not in str(e.value) and finished.read_text() == "an earlier run's\n"  # nothing lost
        return str(e.value)

    message = refused("--threshold", "eer")  # no reference yet
    assert message.startswith("error: --threshold eer needs reference scores, and this checkpoint has none")
    evaluate.main([*FP32, "--calibrate", "--data", str(calibrated.data), *calibrated.flags])
    path = calibration.reference_path(ckpt)
    good = path.read_text()
    path.write_text(good[: len(good) // 2])  # damaged
    assert refused().startswith(f"error: {path} is a damaged reference file (") and refused().endswith(fix)
    other = tmp_path / "other.pt"  # a reference made for another model
    checkpoint.save_checkpoint(other, clip_vit.build_detector("tiny"), {"clip": "tiny", "normalize": True})
    path.write_text(good)
    shutil.copy(path, calibration.reference_path(other))
    with pytest.raises(SystemExit, match=f"^error: {calibration.reference_path(other)} was made for another "
                                         f"checkpoint \\('best.pt', SHA-256 .*; delete it and make it again"):
        evaluate.main([*FP32, "--image", str(image), "--checkpoint", str(other), "--device", "cpu"])
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    assert refused("--report", str(blocker / "report")) == f"error: cannot write {blocker / 'report'}: Not a directory"
    with pytest.raises(SystemExit, match="no preprocessed data: .*ff\\+\\+/val/index.csv not found"):
        evaluate.main([*FP32, "--calibrate", "--data", str(tmp_path / "nothing"), *calibrated.flags])
    assert path.read_text() == good  # the reference is kept
    capsys.readouterr()
    cases = [(["--threshold", "1.5"], f"argument --threshold: '1.5' is not {calibration.THRESHOLD_HELP}"),
             (["--threshold", "fpr=1"], "argument --threshold: 'fpr=1' is not a number in [0, 1], 'eer'"),
             (["--frames", "some"], "argument --frames: expected a number (at least 1) or 'all', got 'some'"),
             (["--report", "r", "--zero-shot"], "--report maps where a detector's p_fake comes from"),
             (["--input", str(tmp_path), "--report", str(tmp_path / "r")],
              "--report inside --input: the next run would score its files as videos and images"),
             (["--calibrate", "--dataset", "cdfv2"], "--calibrate stores the reference of a --checkpoint"),
             (["--calibrate", "--zero-shot"], "--calibrate stores the reference of a --checkpoint")]
    for argv, says in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.parse_args(["--image", str(image), *argv] if "--dataset" not in argv else argv)
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and says in error, error
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--report", "r"])
    assert "--report goes with --video/--image/--input" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the report of a file

def test_report_folder_per_file_and_dense_frames(tmp_path, tiny_ckpt, face_video, capsys):
    image, reports = face_image(tmp_path), tmp_path / "reports"
    common = ["--image", str(image), "--checkpoint", str(tiny_ckpt), "--report", str(reports), "--device", "cpu"]
    rows = evaluate.main([*FP32, "--video", str(face_video), "--frames", "3", *common])
    assert sorted(p.name for p in (reports / "face").iterdir()) == ["annotated.mp4", "faces.png", "report.json",
                                                                   "saliency.npz", "timeline.png"]
    assert sorted(p.name for p in (reports / "face~2").iterdir()) == ["faces.png", "report.json", "saliency.npz",
                                                                     "timeline.png"]  # an image: no video
    report = json.loads((reports / "face" / "report.json").read_text())
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(str(face_video)))
    assert line == f"{face_video}: {report['verdict']['line']}; 3/3 frames with a face"
    assert report["frames_seen"] == 3 and [f["frame"] for f in report["persons"][0]["frames"]] == [0, 3, 7]
    assert report["verdict"]["p_fake"] == pytest.approx(rows[0]["p_fake"])
    cap = cv2.VideoCapture(str(reports / "face" / "annotated.mp4"))  # the input's frame count and size
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8 and cap.read()[1].shape == (480, 640, 3)
    cap.release()
    with np.load(reports / "face" / "saliency.npz") as maps:
        assert sorted(maps) == ["person1/frame0", "person1/frame3", "person1/frame7"]
        assert maps["person1/frame3"].shape == (224, 224) and 0 <= maps["person1/frame3"].min()
    evaluate.main([*FP32, "--video", str(face_video), "--frames", "all", *common])
    report = json.loads((reports / "face" / "report.json").read_text())
    assert report["frames_seen"] == 8 and len(report["persons"][0]["frames"]) == 8  # every frame: dense


def test_video_that_cannot_be_re_read_loses_only_its_annotation(tmp_path, tiny_ckpt, face_video, monkeypatch, capsys):
    import preprocess
    video, out = shutil.copy(face_video, tmp_path / "clip.mp4"), tmp_path / "out"
    read = preprocess.read_frames

    def read_then_damage(path, n_frames):
        frames = read(path, n_frames)
        Path(path).write_bytes(b"gone")  # replaced while it was scored
        return frames
    monkeypatch.setattr(preprocess, "read_frames", read_then_damage)
    rows = evaluate.main([*FP32, "--video", str(video), "--checkpoint", str(tiny_ckpt), "--report", str(tmp_path / "r"),
                          "--out", str(out), "--device", "cpu"])
    says = f"{video}: cannot re-read {video} to write annotated.mp4: OpenCV cannot open or decode it now; " \
           f"the rest of the report is written"
    assert says in capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in (tmp_path / "r" / "clip").iterdir()) == ["faces.png", "report.json", "saliency.npz",
                                                                         "timeline.png"]
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 1 and rows[0]["p_fake"] is not None


# ----------------------------------------------------------------------------- flags

def test_bad_flags_refused_at_parse_time(tmp_path):
    cases = {"--batch-size": (["--batch-size", "0"], "must be at least 1, got 0"),
             "--workers": (["--workers", "-1"], "must be at least 0, got -1"),
             "--device": (["--device", "gpu"], "'gpu' is not a device: use auto, cpu, cuda or cuda:N")}
    results = run_cli(*[argv + ["--data", tmp_path] for argv, _ in cases.values()])
    for (flag, (_, message)), r in zip(cases.items(), results):
        line = assert_one_line_error(r, f"argument {flag}: {message}", status=2)
        assert line.startswith("evaluate.py: error: "), line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_more_bad_flags(capsys):
    """The same argparse path as above, in-process (a subprocess costs a torch import)."""
    cases = [(["--video", "v.mp4", "--frames", "-3"], "argument --frames: must be at least 1, got -3"),
             (["--zero-shot", "--prompts", "", "fake"], "argument --prompts: a prompt is empty")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda:5"], "argument --device: cuda:5: no CUDA GPU on this machine"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_device_index_beyond_the_gpus_refused(monkeypatch, capsys):
    # cuda:5 on a machine with 2 GPUs, and torchrun's rank on GPU LOCAL_RANK
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit) as e:
        evaluate.parse_args(["--device", "cuda:5"])
    assert e.value.code == 2
    assert "argument --device: cuda:5: this machine has 2 GPU(s), cuda:0 to cuda:1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert evaluate.parse_args(["--device", "cuda"]).device == "cuda:1"


def test_single_file_modes_refused_under_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["--video", "v.mp4"], ["--curves", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, *argv] + ["--device", "cpu"])
        assert e.value.code == 2
        assert "run in one process: start them with python, not torchrun" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad files

def test_bad_checkpoints_one_line_naming_the_file(split, finished, tmp_path, tiny_ckpt):
    good = tiny_ckpt.read_bytes()
    bad = {"best.pt": good[: len(good) // 2],   # a copy cut short
           "empty.pt": b"",
           "model.ckpt": np.random.default_rng(0).bytes(4096)}  # not the authors' file at all
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    before = snapshot(finished)
    results = run_cli(*[["--dataset", "cdfv2", "--checkpoint", tmp_path / name, "--data", split,
                         "--out", finished, "--workers", 0] for name in bad])
    for name, r in zip(bad, results):
        line = assert_one_line_error(r, f"cannot load checkpoint {tmp_path / name}")
        assert "Errno" not in line
    assert snapshot(finished) == before


def test_checkpoint_einval_said_as_truncated(split, tmp_path, tiny_ckpt, monkeypatch):
    # torch's zip reader has said only "[Errno 22] Invalid argument" for some cut-off files
    def einval(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(clip_vit, "load_detector", einval)
    with pytest.raises(SystemExit) as e:
        evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split)])
    assert str(e.value) == (f"error: cannot load checkpoint {tiny_ckpt}: the file is truncated or "
                            "corrupt (copy it again, or use the run's last.pt)")


def test_bad_data_and_file_arguments(split, finished, tmp_path, tiny_ckpt):
    broken = tmp_path / "broken"  # index.csv with a bad label on its 3rd line
    (broken / "cdfv2" / "test").mkdir(parents=True)
    (broken / "cdfv2" / "test" / "index.csv").write_text(
        ",".join(layouts.INDEX_FIELDS) + "\na,Celeb-real,0,1,Celeb-real/a,a.mp4\nb,Celeb-real,real,1,x,b.mp4\n")
    (split / "cdfv2" / "test" / "Celeb-synthesis" / "c" / "2.png").write_bytes(b"\x89PNG cut short")
    (tmp_path / "bpe.txt.gz").write_text("not gzip")
    before = snapshot(finished)
    common = ["--out", finished, "--workers", 0]
    index, crop, video, bpe = run_cli(
        ["--dataset", "cdfv2", "--data", broken, "--checkpoint", tiny_ckpt, *common],
        ["--dataset", "cdfv2", "--data", split, "--checkpoint", tiny_ckpt, *common],
        ["--video", tmp_path / "nope.mp4", "--checkpoint", tiny_ckpt, *common],
        ["--dataset", "cdfv2", "--data", split, "--zero-shot", "--clip", "tiny", "--bpe", tmp_path / "bpe.txt.gz",
         *common])
    assert_one_line_error(index, f"{broken / 'cdfv2' / 'test' / 'index.csv'} line 3",
                          "label 0 or 1", "python preprocess.py --dataset cdfv2")
    assert_one_line_error(crop, "cannot be read", "Celeb-synthesis/c/2.png", "re-run preprocess.py")
    assert_one_line_error(video, f"{tmp_path / 'nope.mp4'}: file not found")
    assert_one_line_error(bpe, f"cannot read --bpe {tmp_path / 'bpe.txt.gz'} (expected CLIP's bpe_simple_vocab",
                          "Not a gzipped file")
    assert snapshot(finished) == before


# ----------------------------------------------------------------------------- full disk

def test_full_disk_while_writing_outputs(split, finished, tiny_ckpt, monkeypatch):
    """Every output goes through atomic_write: ENOSPC on any of them is one line, and the
    earlier run's file of that name stays whole."""
    real = files.atomic_write
    for name in ("videos.csv", "roc.png", "metrics.json", "cdfv2-summary.md", "cdfv2-summary.json"):
        target = next(iter(finished.rglob(name)), None)
        before = target.read_bytes() if target else None

        def full(path, content, name=name):
            if Path(path).name == name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, content)
        monkeypatch.setattr(files, "atomic_write", full)
        with pytest.raises(SystemExit) as e:
            evaluate.main([*FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split),
                           "--out", str(finished), "--workers", "0"])
        message = str(e.value)
        assert message.startswith("error: cannot write ") and name in message and "\n" not in message
        assert "No space left on device; free some disk space and re-run" in message
        if target:
            assert target.read_bytes() == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_predictions_csv_row_by_row(tmp_path, tiny_ckpt):
    image = tmp_path / "face.png"
    image.write_bytes(files.png_bytes(np.zeros((32, 32, 3), np.uint8)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").symlink_to("/dev/full")  # every write: ENOSPC
    r, = run_cli(["--image", image, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu"])
    assert_one_line_error(r, f"cannot write {out / 'predictions.csv'}: No space left on device")


# ----------------------------------------------------------------------------- killed run

@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_evaluate_leaves_no_loader_workers(make_split, tmp_path, tiny_ckpt):
    data = tmp_path / "data"  # enough crops that the run is still scoring when killed
    make_split(data, "cdfv2", [("Celeb-real", 0, f"r{k}", range(100)) for k in range(4)]
               + [("Celeb-synthesis", 1, f"f{k}", range(100)) for k in range(4)])
    p = subprocess.Popen([sys.executable, "evaluate.py", *FP32, "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt),
                          "--data", str(data), "--out", str(tmp_path / "out"), "--workers", "2",
                          "--batch-size", "2", "--device", "cpu"],
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


# ----------------------------------------------------------------------------- --curves

def write_log(run: Path, aurocs: list, steps_per_epoch: int = 100, extra: str = "") -> None:
    """A train.py-like log.jsonl: step logs, then per epoch an epoch-end record."""
    run.mkdir(parents=True)
    lines, best = [], None
    for epoch, value in enumerate(aurocs):
        step = (epoch + 1) * steps_per_epoch
        lines.append(json.dumps({"step": step - 50, "loss": 0.3, "lr": 1e-4}))
        if value is not None and (best is None or value > best):
            best = value
        lines.append(json.dumps({"step": step, "epoch": epoch, "epoch_done": True,
                                 "val_video_auroc": value, "best_val_video_auroc": best}))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n" + extra)


def test_curves_figure_and_best_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    write_log(runs / "ln", [0.80, 0.86, 0.84])
    write_log(runs / "full", [None, 0.90, 0.95, 0.95], steps_per_epoch=50)  # a tie keeps the first
    # a resumed run logs step 100 again: the later record counts
    with open(runs / "ln" / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 100, "epoch": 0, "epoch_done": True, "val_video_auroc": 0.82}) + "\n")
    curves = evaluate.main([*FP32, "--curves", str(runs / "ln"), str(runs / "full"), "--out", str(tmp_path / "fig")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"{runs / 'ln'}: best val video AUROC 86.00% at step 200 (epoch 1); "
                          "3 validation record(s), last 84.00%")
    assert printed[1] == (f"{runs / 'full'}: best val video AUROC 95.00% at step 150 (epoch 2); "
                          "3 validation record(s), last 95.00%; 1 epoch(s) undefined (one class)")
    assert printed[2] == f"written to {tmp_path / 'fig' / 'curves.png'}"
    assert curves[0].auroc == [0.82, 0.86, 0.84] and curves[1].steps == [100, 150, 200]
    img = cv2.imread(str(tmp_path / "fig" / "curves.png"))  # what it holds: tests/test_plots.py
    assert img is not None and img.shape[0] > 300
    evaluate.main([*FP32, "--curves", str(runs / "ln"), "--x", "epoch"])  # default: the current folder
    assert "written to curves.png" in capsys.readouterr().out
    assert (tmp_path / "curves.png").is_file()


def test_curves_bad_logs_one_line_each(tmp_path):
    runs = tmp_path / "runs"
    (runs / "empty").mkdir(parents=True)
    write_log(runs / "noval", [])
    with open(runs / "noval" / "log.jsonl", "a") as fh:  # trained with --no-val
        fh.write(json.dumps({"step": 100, "epoch": 0, "epoch_done": True}) + "\n")
    write_log(runs / "bad", [0.8], extra='{"step": 150, "loss": 0.2\n')  # cut-off line 3
    write_log(runs / "good", [0.8, 0.9])
    (tmp_path / "curves.png").write_bytes(b"earlier figure")
    cases = {"empty": f"--curves {runs / 'empty'}: no log.jsonl in it",
             "noval": f"{runs / 'noval' / 'log.jsonl'}: no validation records",
             "bad": f"{runs / 'bad' / 'log.jsonl'} line 3: not a JSON object"}
    results = run_cli(*[["--curves", runs / "good", runs / name, "--out", tmp_path] for name in cases])
    for message, r in zip(cases.values(), results):
        assert_one_line_error(r, message)
    assert (tmp_path / "curves.png").read_bytes() == b"earlier figure"


# ----------------------------------------------------------------------------- torchrun

def test_torchrun_two_cpu_ranks_same_outputs_as_one_process(make_split, tmp_path, tiny_ckpt):
    data = tmp_path / "data"  # frame counts that do not split evenly over 2 ranks
    make_split(data, "cdfv2", [("Celeb-real", 0, "a", [0, 1, 2]), ("Celeb-real", 0, "b", [0]),
                               ("Celeb-real", 0, "e", [3, 4]), ("Celeb-synthesis", 1, "c", [0, 2]),
                               ("Celeb-synthesis", 1, "d", [5, 6, 7, 8])])
    common = ["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(data),
              "--workers", "0", "--device", "cpu", "--batch-size", "3", "--perturb", "jpeg=50", "noise=0.1"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={U.free_port()}", "evaluate.py", *FP32, *common, "--out", str(tmp_path / "multi")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| CDFv2 | video |") == 1  # rank 0 prints, rank 1 does not
    evaluate.main([*FP32, *common, "--out", str(tmp_path / "single")])

    def outputs(folder: Path):
        rows = list(csv.DictReader(open(folder / "cdfv2" / "videos.csv")))
        return rows, json.load(open(folder / "cdfv2" / "metrics.json"))
    (one, m1), (two, m2) = outputs(tmp_path / "single"), outputs(tmp_path / "multi")
    assert [r["video_id"] for r in one] == [r["video_id"] for r in two] == ["a", "b", "e", "c", "d"]
    # videos.csv writes p_fake to 6 decimals: two runs 1e-7 apart can round to neighbouring last
    # digits, so the 1e-6 claim on the scores is 1e-6 plus the half unit the rounding may add to each
    for a, b in zip(one, two):
        assert float(a["p_fake"]) == pytest.approx(float(b["p_fake"]), abs=1e-6 + 2 * 0.5e-6)
    for level in ("video", "frame"):
        assert m1[level]["auroc"] == m2[level]["auroc"] and m1[level]["n"] == m2[level]["n"]
        for key in ("ap", "eer", "acc"):
            assert m1[level][key] == pytest.approx(m2[level][key], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == \
        ["cdfv2", "cdfv2-summary.json", "cdfv2-summary.md"]
    assert (tmp_path / "multi" / "cdfv2" / "roc.png").is_file()
    # --perturb: the crops shared over the ranks, each perturbed as in one process (noise by its path)
    perturbed = [list(csv.DictReader(open(folder / "cdfv2" / "robustness.csv"))) for folder in
                 (tmp_path / "single", tmp_path / "multi")]
    for a, b in zip(*perturbed):
        for key in ("jpeg=50", "noise=0.1"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6 + 2 * 0.5e-6)
    assert [r["video"]["auroc"] for r in m1["robustness"]["rows"]] == \
        [r["video"]["auroc"] for r in m2["robustness"]["rows"]]
