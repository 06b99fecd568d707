"""util/results.py: which row of the paper's table a checkpoint is and how its recipe departs from
the published one, the paper's number beside a measured one, and the tables from results written
by hand (the files are tested end to end in tests/test_evaluate.py)."""
from __future__ import annotations

import dataclasses

import pytest

import clip_vit
import train
from util import results as R
from util.checkpoint import save_checkpoint

FULL = {"tuning": "ln", "norm": True, "uniformity": 0.5, "alignment": 0.1, "slerp": True}
RECIPE = dataclasses.asdict(train.TrainConfig())  # train.py's defaults are the published recipe
OFF = {"uniformity": 0, "alignment": 0.0, "slerp": False}


def metrics(auroc, lo=None, hi=None, n=(10, 4, 6)) -> dict:
    return {"n": n[0], "n_real": n[1], "n_fake": n[2], "auroc": auroc, "ap": 0.5, "eer": 0.25, "acc": 0.75,
            "auroc_ci": None if auroc is None else [lo, hi]}


def result(dataset, auroc, lo, hi) -> dict:
    return {"dataset": dataset, "split": "test", "video": metrics(auroc, lo, hi),
            "frame": metrics(auroc, lo, hi, n=(30, 12, 18))}


@pytest.mark.parametrize("config, row", [
    ({"tuning": "linear-probe", "norm": False, **OFF}, "linear probe (frozen CLIP)"),
    ({"tuning": "ln", "norm": False, **OFF}, "LN-tuning"),
    ({"tuning": "ln", "norm": True, **OFF}, "LN-tuning + L2 norm"),
    (FULL, R.FULL), ({**FULL, "uniformity": 0.3}, R.FULL), ({**{k: v for k, v in FULL.items() if k != "norm"},
                                                             "normalize": True}, R.FULL),  # older configs
    ({**FULL, "tuning": "full"}, None), ({**FULL, "slerp": False}, None), ({**FULL, "alignment": 0}, None),
    ({"tuning": "linear-probe", "norm": 1, **OFF}, None),
    ({"tuning": "ln", "norm": 1, **OFF, "slerp": 1}, None),
    ({k: v for k, v in FULL.items() if k != "slerp"}, None)])
def test_the_row_is_named_by_the_objective(config, row):
    assert R.paper_row(config) == row


def test_every_departure_from_the_published_recipe_is_listed(tmp_path):
    assert R.departures(RECIPE, R.FULL) == []
    changed = {**RECIPE, "clip": "tiny", "epochs": 2, "uniformity": 0.3, "dataset": "ff++-c40", "frames": 8,
               "batch_size": 16, "lr": 1e-4, "min_lr": 1e-5, "sources": ["youtube", "Deepfakes"]}
    listed = R.departures(changed, R.FULL)
    assert [d.split()[0] for d in listed] == ["clip", "dataset", "sources", "frames", "batch_size", "epochs",
                                              "lr", "min_lr", "uniformity"]
    assert listed[0] == "clip tiny (ViT-L/14)"
    assert "epochs 2 (10)" in listed and "uniformity 0.3 (0.5)" in listed
    ln = {**RECIPE, **OFF, "norm": False}  # a row without the losses: their weights are its objective
    assert R.departures(ln, "LN-tuning") == [] and R.departures({}, "LN-tuning")[0] == "clip ? (ViT-L/14)"
    detector = clip_vit.build_detector("tiny")
    for name, config in (("recipe", RECIPE), ("changed", changed), ("old", {"normalize": True})):
        save_checkpoint(tmp_path / f"{name}.pt", detector, config)
    assert R.paper_row_of(str(tmp_path / "recipe.pt")) == {"row": R.FULL, "why": "from its config",
                                                           "departures": []}
    assert R.paper_row_of(str(tmp_path / "changed.pt"))["departures"] == listed
    assert R.paper_row_of(str(tmp_path / "old.pt"))["row"] is None
    assert R.paper_row_of("authors")["row"] == R.FULL and R.paper_row_of("authors")["departures"] == []
    (tmp_path / "model.ckpt").write_bytes(b"the authors' format")
    assert R.paper_row_of(str(tmp_path / "model.ckpt"))["row"] == R.FULL


def test_beside():
    # measured 95.91 [94.70, 97.02] on CDFv2 against the full method's 96.62: inside, -0.71 points
    b = R.beside(R.FULL, "cdfv2", 0.9591, (0.9470, 0.9702))
    assert b["paper"] == 96.62 and b["diff"] == pytest.approx(-0.71) and b["inside_ci"] is True
    assert R.beside(R.FULL, "cdfv2", 0.9591, (0.9470, 0.9650))["inside_ci"] is False
    assert R.beside(R.FULL, "cdfv2", 0.9662, (0.9662, 0.9662))["inside_ci"] is True  # the edge counts
    assert R.beside(None, "cdfv2", 0.9591, (0.9470, 0.9702)) is None          # no row: no paper number
    assert R.beside(R.FULL, "ff++", 0.99, (0.98, 1.0)) is None                # no column
    assert R.beside(R.FULL, "cdfv2", None, None) is None                      # one class: nothing measured


def test_tables_from_results_by_hand():
    assert R.auroc_cell(metrics(0.95912, 0.94704, 0.97016)) == "95.91 [94.70, 97.02]"
    assert [R.points(x) for x in (0.0041, -0.003, -0.0)] == ["+0.41", "-0.30", "+0.00"]
    assert R.display("ff++-c40") == "FF++ c40"
    res = {"cdfv2": result("cdfv2", 0.959, 0.947, 0.9702), "dfdc": result("dfdc", 0.88, 0.86, 0.90)}
    paper = {"row": R.FULL, "why": "from its config", "departures": ["epochs 2 (10)"]}
    s = R.benchmark_summary("full/best.pt", "test", res, paper, ["dfd"], {"ffiw": "broken"},
                            paper_columns=True, n_boot=2000, seed=0)
    lines = s["table"].splitlines()
    assert "| full/best.pt | 95.90 [94.70, 97.02] | missing | 88.00 [86.00, 90.00] | error | missing | " \
           "91.95 (2/5) |" in lines
    # the paper's numbers in every column, the recipe's departures beside them; the mean over those measured
    assert f"| paper: {R.FULL} (recipe differs: epochs 2 (10)) | 96.62 | 98.00 | 87.15 | 91.52 | 92.01 | " \
           "91.89 (2/5) |" in lines
    assert "| CDFv2 | 95.90 [94.70, 97.02] | 96.62 | -0.72 | yes |" in lines
    assert s["paper"]["reproduction"] is False and s["paper"]["departures"] == ["epochs 2 (10)"]
    same = R.benchmark_summary("x", "test", res, {**paper, "departures": []}, [], {}, False, 2000, 0)
    assert same["paper"]["reproduction"] is True and "recipe differs" not in same["table"]
    none = {"row": None, "why": "zero-shot", "departures": []}
    none = R.benchmark_summary("x", "test", res, none, [], {}, True, 2000, 0)
    assert "| paper:" not in none["table"]
    assert not none["paper"]["datasets"] and not none["paper"]["reproduction"]


def test_robustness_and_comparison_tables():
    rows = [{"perturbation": "none", "severity": None, "video": metrics(0.95, 0.93, 0.97)},
            {"perturbation": "jpeg", "severity": 50, "video": metrics(0.9412, 0.92, 0.96)}]
    lines = R.robustness_table("cdfv2", "test", {"seed": 0, "rows": rows}).splitlines()
    assert lines[-2:] == ["| none | 95.00 [93.00, 97.00] | |", "| jpeg=50 | 94.12 [92.00, 96.00] | -0.88 |"]
    c = {"dataset": "cdfv2", "split": "test", "n": 10, "n_real": 4, "n_fake": 6,
         "a": {"model": "a.pt", "row": R.FULL, "departures": ["clip tiny (ViT-L/14)"],
               **metrics(0.962, .95, .98)},
         "b": {"model": "b.pt", "row": None, "departures": [], **metrics(0.958, 0.944, 0.97)},
         "diff": 0.004, "ci": (-0.003, 0.011), "p": 0.2412, "bootstrap_ci": (-0.0028, 0.0105)}
    lines = R.comparison_table(c).splitlines()
    assert lines[4:6] == [
        f"| A | a.pt | {R.FULL}; recipe differs: clip tiny (ViT-L/14) | 96.20 [95.00, 98.00] |",
        "| B | b.pt | none | 95.80 [94.40, 97.00] |"]
    assert lines[-1].startswith("A - B: +0.40 [-0.30, +1.10] points, p = 0.24")
