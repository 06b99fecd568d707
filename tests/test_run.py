"""util/run.py: the seed formula, RNG states in a checkpoint, a run folder written by rank 0 only,
and log.jsonl read back."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clip_vit
from util.layouts import DataError
from util.run import RunFolder, mix_seed, read_curve

ROOT = Path(__file__).resolve().parents[1]


def test_mix_seed_is_the_same_in_every_python_run_and_tells_parts_apart():
    code = "from util.run import mix_seed; print(mix_seed(42, 'slerp', 7))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout  # another string hash salt
    assert other == f"{mix_seed(42, 'slerp', 7)}\n"
    seeds = {mix_seed(a, b, c) for a in range(4) for b in range(4) for c in ("order", "slerp", 5)}
    assert len(seeds) == 4 * 4 * 3 and all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 23) != mix_seed(12, 3)


def test_last_pt_restores_the_rng_state_through_weights_only_loading(tmp_path):
    detector = clip_vit.build_detector("tiny")
    optimizer = torch.optim.AdamW(detector.head.parameters())
    config = {"clip": "tiny", "normalize": True}
    folder = RunFolder(tmp_path, detector, optimizer, config)
    folder.start(False, 1)
    torch.manual_seed(1)
    folder.save_last(0, None)
    first = torch.rand(3)
    RunFolder(tmp_path, detector, optimizer, config).start(True, 1)
    assert torch.equal(torch.rand(3), first)


def test_only_rank_zero_writes(tmp_path):
    detector = clip_vit.build_detector("tiny")
    optimizer = torch.optim.AdamW(detector.head.parameters())
    config = {"clip": "tiny", "normalize": True}
    folder = RunFolder(tmp_path / "run", detector, optimizer, config, world=2, main=False)
    folder.start(False, 3)
    folder.log({"step": 1})
    folder.save_last(1, None)
    assert not (tmp_path / "run").exists() and folder.last_step == 1  # every rank knows the step of last.pt
    main = RunFolder(tmp_path / "run", detector, optimizer, config, world=2)
    main.start(False, 3)
    main.save_last(1, None)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"config.json", "last.pt"}


def write_log(run: Path, lines: list) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                                           for line in lines))
    return run


def test_read_curve_takes_the_last_record_of_a_step(tmp_path):
    epoch = {"epoch_done": True}
    run = write_log(tmp_path / "run", [{"step": 1, "loss": 0.5},
                                       {"step": 2, "epoch": 0, "val_video_auroc": 0.7, **epoch},
                                       {"step": 4, "epoch": 1, "val_video_auroc": 0.6, **epoch},
                                       {"step": 4, "epoch": 1, "val_video_auroc": 0.9, **epoch},  # resumed
                                       {"step": 6, "epoch": 2, "val_video_auroc": None, **epoch}])
    curve = read_curve(run)
    assert (curve.steps, curve.epochs, curve.auroc, curve.undefined) == ([2, 4], [0, 1], [0.7, 0.9], 1)
    assert curve.best() == 1


@pytest.mark.parametrize("lines", [[], ['{"step": 1, "lo\n'], ["[1]\n"],
                                   [{"step": "x", "epoch": 0, "val_video_auroc": 0.5, "epoch_done": True}]])
def test_read_curve_names_the_bad_log(tmp_path, lines):
    run = write_log(tmp_path / "run", lines)
    with pytest.raises(DataError) as e:
        read_curve(run)
    assert str(run / "log.jsonl") in str(e.value) and "\n" not in str(e.value)
