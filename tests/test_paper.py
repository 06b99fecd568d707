"""Tests for util/paper.py: the paper's table as data and which row a checkpoint config is."""
from __future__ import annotations

import pytest

import clip_vit
from util.checkpoint import save_checkpoint
from util.paper import AUTHORS_ROW, DATASETS, TABLE, beside, checkpoint_row, config_text, paper_row, paper_value

FULL = {"tuning": "ln", "norm": True, "uniformity": 0.5, "alignment": 0.1, "slerp": True}


def test_table_as_published():
    assert DATASETS == ("cdfv2", "dfd", "dfdc", "ffiw", "dsv1")
    assert list(TABLE) == ["linear probe (frozen CLIP)", "LN-tuning", "LN-tuning + L2 norm",
                           "full (LN + norm + UnAl + slerp)"]
    assert TABLE["linear probe (frozen CLIP)"] == (78.13, 88.15, 73.62, 79.28, 63.65)
    assert TABLE["LN-tuning"] == (94.88, 96.83, 86.41, 92.24, 83.57)
    assert TABLE["LN-tuning + L2 norm"] == (96.21, 98.18, 87.82, 92.72, 88.81)
    assert TABLE["full (LN + norm + UnAl + slerp)"] == (96.62, 98.00, 87.15, 91.52, 92.01)
    assert AUTHORS_ROW == "full (LN + norm + UnAl + slerp)"


def test_each_row_from_its_config():
    off = {"uniformity": 0, "alignment": 0.0, "slerp": False}
    assert paper_row({"tuning": "linear-probe", "norm": False, **off}) == "linear probe (frozen CLIP)"
    assert paper_row({"tuning": "ln", "norm": False, **off}) == "LN-tuning"
    assert paper_row({"tuning": "ln", "norm": True, **off}) == "LN-tuning + L2 norm"
    assert paper_row(FULL) == "full (LN + norm + UnAl + slerp)"
    # train.py writes both norm and normalize; older configs only normalize
    assert paper_row({**FULL, "normalize": True}) == AUTHORS_ROW
    legacy = {k: v for k, v in FULL.items() if k != "norm"}
    assert paper_row({**legacy, "normalize": True}) == AUTHORS_ROW
    assert paper_row({**legacy, "normalize": False}) is None


@pytest.mark.parametrize("change", [
    {"tuning": "full"}, {"slerp": False}, {"uniformity": 0}, {"alignment": 0}, {"norm": False},
    {"tuning": "linear-probe"},
])
def test_other_variants_match_no_row(change):
    assert paper_row({**FULL, **change}) is None


def test_linear_probe_with_extras_matches_no_row():
    off = {"uniformity": 0, "alignment": 0, "slerp": False}
    assert paper_row({"tuning": "linear-probe", "norm": True, **off}) is None
    assert paper_row({"tuning": "linear-probe", "norm": False, **off, "slerp": True}) is None
    assert paper_row({"tuning": "ln", "norm": True, "uniformity": 0.5, "alignment": 0, "slerp": False}) is None


@pytest.mark.parametrize("key", ["tuning", "norm", "uniformity", "alignment", "slerp"])
def test_a_config_missing_a_key_matches_no_row(key):
    assert paper_row({k: v for k, v in FULL.items() if k != key}) is None


def test_paper_value():
    assert paper_value("LN-tuning", "dfdc") == 86.41
    assert paper_value(AUTHORS_ROW, "dsv1") == 92.01
    assert paper_value("linear probe (frozen CLIP)", "cdfv2") == 78.13
    assert paper_value(None, "cdfv2") is None
    assert paper_value(AUTHORS_ROW, "ff++") is None and paper_value(AUTHORS_ROW, "folder") is None
    with pytest.raises(KeyError):
        paper_value("no such row", "cdfv2")


def test_config_text():
    assert config_text(FULL) == "tuning ln, norm on, uniformity 0.5, alignment 0.1, slerp on"
    assert config_text({"clip": "tiny", "normalize": True}) == \
        "tuning ?, norm on, uniformity ?, alignment ?, slerp ?"


def test_checkpoint_row(tmp_path):
    detector = clip_vit.build_detector("tiny")
    for name, config in (("full", FULL), ("ln", {**FULL, "norm": False, "uniformity": 0, "alignment": 0,
                                                  "slerp": False}), ("old", {"normalize": True})):
        save_checkpoint(tmp_path / f"{name}.pt", detector, {"clip": "tiny", **config})
    assert checkpoint_row(str(tmp_path / "full.pt")) == (AUTHORS_ROW, "from its config")
    assert checkpoint_row(str(tmp_path / "ln.pt")) == ("LN-tuning", "from its config")
    assert checkpoint_row(str(tmp_path / "old.pt")) == \
        (None, "its config (tuning ?, norm on, uniformity ?, alignment ?, slerp ?) matches no row of the paper's table")
    assert checkpoint_row("authors") == (AUTHORS_ROW, "the authors' released checkpoint")
    (tmp_path / "model.ckpt").write_bytes(b"a file evaluate.py loaded as the authors' format")
    assert checkpoint_row(str(tmp_path / "model.ckpt")) == (AUTHORS_ROW, "the authors' checkpoint format")


def test_beside():
    # measured 95.91 [94.70, 97.02] on CDFv2 against the full method's 96.62: inside, -0.71 points
    b = beside(AUTHORS_ROW, "cdfv2", 0.9591, (0.9470, 0.9702))
    assert b["paper"] == 96.62 and b["diff"] == pytest.approx(-0.71) and b["inside_ci"] is True
    assert beside(AUTHORS_ROW, "cdfv2", 0.9591, (0.9470, 0.9650))["inside_ci"] is False
    assert beside(AUTHORS_ROW, "cdfv2", 0.9662, (0.9662, 0.9662))["inside_ci"] is True  # the edge counts
    assert beside(None, "cdfv2", 0.9591, (0.9470, 0.9702)) is None          # no row: no paper number
    assert beside(AUTHORS_ROW, "ff++", 0.99, (0.98, 1.0)) is None           # no column
    assert beside(AUTHORS_ROW, "cdfv2", None, None) is None                 # one class: nothing measured
