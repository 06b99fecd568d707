"""Tests for util/results.py: the Markdown of each report from results written by hand (the files
are tested end to end in tests/test_evaluate.py)."""
from __future__ import annotations

import pytest

from util import results
from util.paper import AUTHORS_ROW, beside


def metrics(auroc, lo=None, hi=None, n=(10, 4, 6)) -> dict:
    return {"n": n[0], "n_real": n[1], "n_fake": n[2], "auroc": auroc, "ap": 0.5, "eer": 0.25, "acc": 0.75,
            "auroc_ci": None if auroc is None else [lo, hi]}


def result(dataset, auroc, lo, hi, **extra) -> dict:
    return {"dataset": dataset, "split": "test", "video": metrics(auroc, lo, hi),
            "frame": metrics(auroc, lo, hi, n=(30, 12, 18)), **extra}


def test_cells():
    assert results.auroc_cell(metrics(0.95912, 0.94704, 0.97016)) == "95.91 [94.70, 97.02]"
    assert results.auroc_cell(metrics(None)) == "n/a"
    assert [results.points(x) for x in (0.0041, -0.003, -0.0)] == ["+0.41", "-0.30", "+0.00"]
    assert [results.p_value(p) for p in (0.2412, 1.0, 0.00123, 3e-7)] == ["p = 0.24", "p = 1", "p = 0.0012",
                                                                          "p < 0.0001"]
    assert results.display("ff++-c40") == "FF++ c40" and results.display("cdfv2") == "CDFv2"


def test_metrics_table_shows_every_auroc_with_its_interval():
    table = results.metrics_table([result("cdfv2", 0.9591, 0.947, 0.9702)])
    assert table.splitlines()[0] == ("| dataset | level | count | real | fake | AUROC [95% CI] | AP | EER | Acc@0.5 "
                                     "| Acc@thr | TPR@1%FPR | TPR@5%FPR |")
    assert "| CDFv2 | video | 10 | 4 | 6 | 95.91 [94.70, 97.02] | 50.00 | 25.00 | 75.00 | n/a | n/a | n/a |" in table
    assert "| CDFv2 | frame | 30 | 12 | 18 | 95.91 [94.70, 97.02] |" in table
    # with the reference's threshold: accuracy at it and the TPR at two false-alarm rates, and where it comes from
    video = metrics(0.9591, 0.947, 0.9702) | {"acc_ref": 0.8, "tpr@1%fpr": 0.5, "tpr@5%fpr": 0.625}
    table = results.metrics_table([result("cdfv2", 0.9591, 0.947, 0.9702, threshold={"value": 0.41, "how": "eer"})
                                   | {"video": video}])
    assert "| 75.00 | 80.00 | 50.00 | 62.50 |" in table and "accuracy at threshold 0.4100 (eer)" in table


def test_paper_table_with_the_paper_row_beneath():
    res = {"cdfv2": result("cdfv2", 0.959, 0.947, 0.9702), "dfdc": result("dfdc", 0.88, 0.86, 0.90)}
    table = results.paper_table(res, "full/best.pt", AUTHORS_ROW, ["dfd"], {"ffiw": "broken"}).splitlines()
    assert "| full/best.pt | 95.90 [94.70, 97.02] | missing | 88.00 [86.00, 90.00] | error | missing | 91.95 (2/5) |" \
        in table
    # the paper's numbers in every column; its mean over the columns measured: (96.62 + 87.15) / 2
    assert f"| paper: {AUTHORS_ROW} | 96.62 | 98.00 | 87.15 | 91.52 | 92.01 | 91.89 (2/5) |" in table
    no_row = results.paper_table(res, "x", None, [], {})
    assert "| paper:" not in no_row


def test_paper_comparison_three_cases():
    res = {"cdfv2": result("cdfv2", 0.9591, 0.947, 0.9702), "ff++": result("ff++", 0.99, 0.98, 1.0)}
    paper = {"row": AUTHORS_ROW, "why": "from its config",
             "datasets": {"cdfv2": beside(AUTHORS_ROW, "cdfv2", 0.9591, (0.947, 0.9702))}}
    text = results.paper_comparison(res, "full/best.pt", paper).splitlines()
    assert text[0] == f"The paper's row for full/best.pt: {AUTHORS_ROW} (from its config)."
    assert text[-1] == "| CDFv2 | 95.91 [94.70, 97.02] | 96.62 | -0.71 | yes |"
    assert results.paper_comparison(res, "x", {**paper, "datasets": {}}).endswith(
        "No dataset evaluated here has an AUROC in the paper's columns (CDFv2, DFD, DFDC, FFIW, DSv1).")
    none = {"row": None, "why": "zero-shot CLIP is no row of the paper's table", "datasets": {}}
    assert results.paper_comparison(res, "zero-shot CLIP tiny", none) == (
        "The paper's row for zero-shot CLIP tiny: none: zero-shot CLIP is no row of the paper's table; "
        "no paper number to compare.")


def test_robustness_table():
    rows = [{"perturbation": "none", "severity": None, "video": metrics(0.95, 0.93, 0.97)},
            {"perturbation": "jpeg", "severity": 50, "video": metrics(0.9412, 0.92, 0.96)},
            {"perturbation": "noise", "severity": 0.05, "video": metrics(0.96, 0.94, 0.98)}]
    lines = results.robustness_table("cdfv2", "test", {"seed": 0, "rows": rows}).splitlines()
    assert lines[0].startswith("CDFv2 test under perturbations of every crop")
    assert lines[2:] == ["| perturbation | video AUROC [95% CI] | change |", "|---|---:|---:|",
                         "| none | 95.00 [93.00, 97.00] | |", "| jpeg=50 | 94.12 [92.00, 96.00] | -0.88 |",
                         "| noise=0.05 | 96.00 [94.00, 98.00] | +1.00 |"]


def test_comparison_table_and_summary():
    c = {"dataset": "cdfv2", "split": "test", "n": 10, "n_real": 4, "n_fake": 6,
         "a": {"model": "runs/full/best.pt", "row": AUTHORS_ROW, **metrics(0.962, 0.95, 0.975)},
         "b": {"model": "runs/ln/best.pt", "row": None, **metrics(0.958, 0.944, 0.97)},
         "diff": 0.004, "ci": (-0.003, 0.011), "p": 0.2412, "bootstrap_ci": (-0.0028, 0.0105)}
    lines = results.comparison_table(c).splitlines()
    assert lines[4:6] == [f"| A | runs/full/best.pt | {AUTHORS_ROW} | 96.20 [95.00, 97.50] |",
                          "| B | runs/ln/best.pt | none | 95.80 [94.40, 97.00] |"]
    assert lines[-1] == ("A - B: +0.40 [-0.30, +1.10] points, p = 0.24 (DeLong's paired test; "
                         "paired bootstrap 95% CI [-0.28, +1.05])")
    res = {"cdfv2": result("cdfv2", 0.9591, 0.947, 0.9702)}
    s = results.benchmark_summary("full/best.pt", "test", res, AUTHORS_ROW, "from its config", [], {},
                                  paper_columns=False, n_boot=2000, seed=0)
    assert s["paper"]["datasets"]["cdfv2"] == pytest.approx({"paper": 96.62, "diff": -0.71, "inside_ci": True})
    assert "| paper:" not in s["table"] and "| CDFv2 | 95.91 [94.70, 97.02] | 96.62 | -0.71 | yes |" in s["table"]
    assert s["intervals"].startswith("95% percentile bootstrap, 2000 class-stratified resamples")
