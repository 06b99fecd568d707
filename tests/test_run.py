"""util/run.py: a run folder's files, the --resume command its errors name, RNG states and the meter."""
import argparse
import errno
import json
import os
import random

import numpy as np
import pytest
import torch

import clip_vit
from util import checkpoint
from util.run import (Meter, NonFiniteLoss, RunError, RunFolder, read_config, resumed_config, rng_state,
                      set_rng_state, trim_log)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = rng_state()
    first = draws()
    set_rng_state(state)
    assert draws() == first


def test_rng_state_survives_weights_only_loading(tmp_path):
    state = rng_state()
    first = draws()
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == first


def test_trim_log_drops_later_lines_and_a_cut_short_last_one(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    trim_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    trim_log(tmp_path / "none.jsonl", 2)  # no log yet: nothing to do
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunError, match=f"{log} line 2 is not JSON; delete that line and resume again"):
        trim_log(log, 2)


def test_resume_commands_and_a_new_run_never_over_an_old_one(tmp_path):
    assert RunFolder(tmp_path).resume_command() == f"python train.py --resume {tmp_path}"
    assert RunFolder(tmp_path, world=4).resume_command() == f"torchrun --nproc_per_node=4 train.py --resume {tmp_path}"
    RunFolder(tmp_path).check_new()
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(RunError, match=f"{tmp_path} already holds a run: pass --resume {tmp_path} or another --name"):
        RunFolder(tmp_path).check_new()


def test_files_of_a_run_and_last_pt_resumes(tmp_path):
    folder, detector = RunFolder(tmp_path / "run"), clip_vit.build_detector("tiny")
    folder.write_config({"clip": "tiny", "epochs": 2}, step=0)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"clip": "tiny", "epochs": 2}
    folder.log({"step": 1, "loss": 0.5})
    folder.log({"step": 2, "loss": 0.25})
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [1, 2]
    config = {"clip": "tiny", "normalize": True}
    folder.save("last.pt", detector, config, step=7, optimizer={}, rng=rng_state(), steps_per_epoch=3,
                best_val_video_auroc=None)
    assert folder.last_step == 7
    again = RunFolder(tmp_path / "run")
    ckpt = again.load_last()
    assert ckpt["step"] == 7 and again.last_step == 7 and ckpt["config"] == config
    folder.save("best.pt", detector, config, step=7)  # a finished model: not what --resume takes
    (tmp_path / "run" / "last.pt").write_bytes((tmp_path / "run" / "best.pt").read_bytes())
    with pytest.raises(RunError, match=r"last.pt is truncated or not a checkpoint of train.py; copy back a good"):
        again.load_last()
    with pytest.raises(RunError, match="no last.pt there"):
        RunFolder(tmp_path / "nothing").load_last()


def test_only_rank_zero_writes(tmp_path):
    folder = RunFolder(tmp_path / "run", world=2, main=False)
    folder.write_config({}, 0)
    folder.log({"step": 1})
    folder.save("last.pt", clip_vit.build_detector("tiny"), {"clip": "tiny", "normalize": True}, step=1)
    assert not (tmp_path / "run").exists() and folder.last_step == 1  # every rank knows the step of last.pt


def test_a_failed_write_names_the_file_and_the_resume_command(tmp_path, monkeypatch):
    def no_space(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", no_space)
    folder = RunFolder(tmp_path, world=2)
    with pytest.raises(OSError) as e:
        folder.save("last.pt", clip_vit.build_detector("tiny"), {"clip": "tiny", "normalize": True}, step=1)
    assert str(e.value) == (f"cannot write {tmp_path / 'last.pt'}: No space left on device; make room (or fix the "
                            f"permission), then continue with `torchrun --nproc_per_node=2 train.py --resume "
                            f"{tmp_path}` (files are replaced whole: the previous checkpoints are intact)")


def test_the_messages_of_a_stopped_and_a_diverged_run(tmp_path):
    folder = RunFolder(tmp_path)
    stopped = folder.interrupted(15, 4, 10)
    assert (stopped.status, stopped.main) == (143, True)
    assert str(stopped) == (f"stopped by SIGTERM at step 4/10; {tmp_path / 'last.pt'} holds it. "
                            f"Continue with: python train.py --resume {tmp_path}")
    assert "Last good checkpoint: none yet" in str(folder.diverged(NonFiniteLoss(float("nan")), 1, 0))
    folder.last_step = 3
    assert str(folder.diverged(NonFiniteLoss(float("inf")), 5, 1)) == (
        f"loss is inf at step 5 (epoch 1); stopping before the update. Last good checkpoint: "
        f"{tmp_path / 'last.pt'} (step 3); continue with `python train.py --resume {tmp_path}` (e.g. with a lower --lr)")


def test_resumed_config_is_the_saved_one_less_the_run_control(tmp_path):
    parser = argparse.ArgumentParser()
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 3, "resume": "old", "stop_after": 2}))
    assert resumed_config(parser, {}, {"resume", "stop_after"}) is None  # no --resume
    values, where = resumed_config(parser, {"resume": str(tmp_path)}, {"resume", "stop_after"})
    assert values == {"epochs": 3} and where == "argument --resume: config.json"
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SystemExit):
        read_config(parser, tmp_path)


def test_meter_averages_the_terms_between_records():
    meter = Meter()
    meter.add({"loss": torch.tensor(1.0), "ce": torch.tensor(0.5)}, 8)
    meter.add({"loss": torch.tensor(3.0), "ce": torch.tensor(1.5)}, 8)
    record = meter.record()
    assert (record["loss"], record["ce"]) == (2.0, 1.0) and record["images_per_s"] > 0
    meter.add({"loss": torch.tensor(5.0)}, 4)
    assert meter.record()["loss"] == 5.0  # a record starts the next average
