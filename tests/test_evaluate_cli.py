"""evaluate.py through its real command line: every class of bad input ends in one line naming
the problem (exit 1; argparse's exit 2 for flags), no traceback, finished outputs untouched;
killed runs leave no loader workers; torchrun's ranks give the single process's numbers.

Each subprocess costs a torch import (~2-3 s), so independent cases start together."""

import csv
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import _video_utils as U
import evaluate
from util import layouts
from util import files

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argvs, env=None, timeout=300) -> list[SimpleNamespace]:
    """`python evaluate.py ARGS` for each argument list, all at once; (returncode, stdout, stderr)."""
    procs = [subprocess.Popen([sys.executable, "evaluate.py", *map(str, argv)], cwd=ROOT, text=True,
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
    if not evaluate.torch.cuda.is_available():
        cases.append((["--device", "cuda:5"], "argument --device: cuda:5: no CUDA GPU on this machine"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            evaluate.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_device_index_beyond_the_gpus_refused(monkeypatch, capsys):
    # cuda:5 on a machine with 2 GPUs, and torchrun's rank on GPU LOCAL_RANK
    monkeypatch.setattr(evaluate.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(evaluate.torch.cuda, "device_count", lambda: 2)
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
            evaluate.main(argv + ["--device", "cpu"])
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
    monkeypatch.setattr(evaluate.clip_vit, "load_detector", einval)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split)])
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
            evaluate.main(["--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt), "--data", str(split),
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
    p = subprocess.Popen([sys.executable, "evaluate.py", "--dataset", "cdfv2", "--checkpoint", str(tiny_ckpt),
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
    curves = evaluate.main(["--curves", str(runs / "ln"), str(runs / "full"), "--out", str(tmp_path / "fig")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (f"{runs / 'ln'}: best val video AUROC 86.00% at step 200 (epoch 1); "
                          "3 validation record(s), last 84.00%")
    assert printed[1] == (f"{runs / 'full'}: best val video AUROC 95.00% at step 150 (epoch 2); "
                          "3 validation record(s), last 95.00%; 1 epoch(s) undefined (one class)")
    assert printed[2] == f"written to {tmp_path / 'fig' / 'curves.png'}"
    assert curves[0].auroc == [0.82, 0.86, 0.84] and curves[1].steps == [100, 150, 200]
    img = evaluate.cv2.imread(str(tmp_path / "fig" / "curves.png"))
    assert img is not None and img.shape[0] > 300
    for color in evaluate.COLORS[:2]:  # one line per run, in its colour
        assert (np.abs(img.astype(int) - color).sum(axis=2) < 10).sum() > 100
    evaluate.main(["--curves", str(runs / "ln"), "--x", "epoch"])  # default: the current folder
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
              "--workers", "0", "--device", "cpu", "--batch-size", "3"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={U.free_port()}", "evaluate.py", *common, "--out", str(tmp_path / "multi")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| CDFv2 | video |") == 1  # rank 0 prints, rank 1 does not
    evaluate.main([*common, "--out", str(tmp_path / "single")])

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
