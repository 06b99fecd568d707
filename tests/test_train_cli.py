"""train.py's command line on bad input and on interruptions: one line naming the problem, no
traceback, the right exit status, and a run folder that is still whole (and resumable) after."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import _video_utils as U
import clip_vit
from util import layouts
import train
from util import checkpoint

ROOT = Path(train.__file__).resolve().parent


@pytest.fixture(scope="module")
def finished(train_tree, fast_flags, tmp_path_factory) -> Path:
    """A finished one-epoch run (config.json, log.jsonl, last.pt, best.pt)."""
    out = tmp_path_factory.mktemp("runs")
    train.main(["--data", str(train_tree), "--out", str(out), *fast_flags, "--epochs", "1", "--name", "done"])
    return out / "done"


def start(*args: str, **kwargs) -> subprocess.Popen:
    """`python train.py ARGS` in the repository root (one thread: cheaper, and comparable bitwise)."""
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    assert "Traceback" not in err, err[-3000:]
    return process.returncode, out, err


def last_line(err: str) -> str:
    return [line for line in err.strip().splitlines() if line.strip()][-1]


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_bad_flag_values_are_usage_errors_before_any_work(capsys, monkeypatch):
    # through the real command line, all at once (each pays torch's import)
    cases = [(["--device", "gpu"], "argument --device: 'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
             (["--device", "cuda"], "argument --device: cuda: no CUDA GPU on this machine; use --device cpu")]
    if torch.cuda.is_available():
        cases[1] = (["--device", f"cuda:{torch.cuda.device_count()}"], f"this machine has {torch.cuda.device_count()} GPU")
    runs = [start(*flags, "--data", "/nonexistent") for flags, _ in cases]
    for (flags, message), process in zip(cases, runs):
        status, _, err = finish(process)
        assert status == 2 and message in last_line(err), (flags, err)
    # the same checks in-process for the other flags (argparse: exit 2, one line on stderr)
    for flags, message in ((["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
                           (["--workers", "-1"], "--workers: must be at least 0, got -1"),
                           (["--frames", "0"], "--frames: must be at least 1"),
                           (["--epochs", "0"], "--epochs: must be at least 1"),
                           (["--log-every", "0"], "--log-every: must be at least 1"),
                           (["--save-every", "-5"], "--save-every: must be at least 1"),
                           (["--val-batch-size", "0"], "--val-batch-size: must be at least 1"),
                           (["--stop-after", "-1"], "--stop-after: must be at least 0"),
                           (["--uniformity", "-0.5"], "--uniformity: must be at least 0"),
                           (["--batch-size", "x"], "--batch-size: invalid int value: 'x'"),
                           (["--device", "cuda:x"], "--device: 'cuda:x' is not a device")):
        with pytest.raises(SystemExit) as e:
            train.parse_args(flags)
        assert e.value.code == 2 and message in last_line(capsys.readouterr().err), flags
    # any batch of at least one image per process is accepted: shares differ by at most one
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert train.parse_args(["--batch-size", "6"]).batch_size == 6
    with pytest.raises(SystemExit):
        train.parse_args(["--batch-size", "3"])
    assert "--batch-size: 3 is smaller than the 4 processes" in capsys.readouterr().err


def test_bad_resume_folders_name_the_file_and_keep_the_run(finished, tmp_path, capsys):
    missing = tmp_path / "nothing"
    bad_json, truncated, not_ckpt = (tmp_path / n for n in ("bad_json", "truncated", "not_ckpt"))
    for run in (bad_json, truncated, not_ckpt):
        shutil.copytree(finished, run)
    (bad_json / "config.json").write_text('{"clip": "tiny", "epochs": ')  # cut short
    last = (truncated / "last.pt").read_bytes()
    (truncated / "last.pt").write_bytes(last[:len(last) // 2])
    (not_ckpt / "last.pt").write_text("hello\n")
    before = {run: files(run) for run in (bad_json, truncated, not_ckpt)}
    cases = [(bad_json, 2, f"argument --resume: {bad_json / 'config.json'} is truncated or not JSON"),
             (truncated, 1, f"error: --resume {truncated}: {truncated / 'last.pt'} is truncated or not a checkpoint")]
    runs = [start("--resume", str(run)) for run, _, _ in cases]
    for (run, code, message), process in zip(cases, runs):
        status, _, err = finish(process)
        assert status == code and message in last_line(err), (run, err)
    assert "copy back a good last.pt, or start a new run with another --name" in err
    with pytest.raises(SystemExit) as e:  # in-process from here
        train.main(["--resume", str(missing)])
    assert e.value.code == 2
    assert f"argument --resume: no {missing / 'config.json'} (expected a run folder of train.py)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"^error: --resume {not_ckpt}: {not_ckpt / 'last.pt'} is truncated or not "):
        train.main(["--resume", str(not_ckpt)])  # a text file: the same message
    for run, saved in before.items():
        assert files(run) == saved, run  # nothing written, nothing removed


def test_config_json_values_pass_the_flag_checks(finished, tmp_path, capsys):
    run = shutil.copytree(finished, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "device": "gpu"}))
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--resume", str(run)])
    assert e.value.code == 2
    assert "config.json has device = 'gpu': 'gpu' is not a device" in capsys.readouterr().err
    assert train.parse_args(["--resume", str(run), "--device", "cpu"]).device == "cpu"  # the way out it names


@pytest.fixture
def one_thread():
    """In-process runs bitwise comparable with the subprocesses (OMP_NUM_THREADS=1): the float
    sums of a kernel depend on the number of threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigterm_writes_last_pt_and_the_resumed_run_is_bitwise_identical(train_tree, fast_flags, tmp_path, one_thread):
    args = ["--data", str(train_tree), "--out", str(tmp_path), *fast_flags, "--epochs", "2", "--no-val"]
    # with loader workers, in a process group of its own: the signal reaches the workers too (as a
    # cluster's SIGTERM does); they ignore it and train.py stops cleanly
    process = start(*args, "--name", "cut", "--workers", "2", start_new_session=True)
    log = tmp_path / "cut" / "log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and log.read_text().strip()) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    status, _, err = finish(process)
    step = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"]
    assert status == 128 + signal.SIGTERM and 1 <= step < 10, (status, step, err[-2000:])
    assert last_line(err) == (f"stopped by SIGTERM at step {step}/10; {tmp_path / 'cut' / 'last.pt'} holds it. "
                              f"Continue with: python train.py --resume {tmp_path / 'cut'}")
    train.main(["--resume", str(tmp_path / "cut")])
    train.main([*args, "--name", "full"])
    a, b = weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "best.pt").is_file()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_loader_workers_exit_when_train_py_is_killed(train_tree, fast_flags, tmp_path):
    process = start("--data", str(train_tree), "--out", str(tmp_path), *fast_flags, "--workers", "2",
                    "--epochs", "500", "--no-val", "--name", "killed",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, workers = tmp_path / "killed" / "log.jsonl", []
    try:
        deadline = time.time() + 120
        while not (log.is_file() and log.read_text().strip()) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        workers = U.live_children(process.pid)
        assert len(workers) >= 2 and process.poll() is None, workers
        U.kill_and_wait(process, workers)
        assert not [w for w in workers if U.alive(w)], "loader workers outlived the killed train.py"
    finally:
        U.kill_all(process, workers)


def test_validation_that_cannot_rank_still_writes_best_pt_and_says_why(make_tree, fast_flags, tmp_path):
    no_val = make_tree(tmp_path / "train_only", splits=("train",), videos_per_source=1, frames=(0, 3), size=64)
    one = make_tree(tmp_path / "one", videos_per_source=1, frames=(0, 3), size=64)
    common = ["--out", str(tmp_path), *fast_flags, "--epochs", "1"]
    runs = {"one_class": start("--data", str(one), "--sources", "Deepfakes", "FaceSwap",
                               "--name", "one_class", *common),
            "no_val": start("--data", str(no_val), "--name", "no_val", *common)}
    why = {"one_class": "only fake videos in the val split",
           "no_val": f"no val split ({no_val / 'ff++' / 'val' / 'index.csv'} not found)"}
    for name, process in runs.items():
        status, out, err = finish(process)
        assert status == 0, err[-2000:]
        note = f"val AUROC undefined: {why[name]}; best.pt = latest epoch"
        assert f"epoch 0: {note}" in out
        epoch = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()][-1]
        assert epoch["epoch_done"] and epoch["val"] == note
        best, last = (torch.load(tmp_path / name / f, weights_only=True) for f in ("best.pt", "last.pt"))
        assert best["step"] == last["step"] == epoch["step"]
        assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())


def test_full_disk_is_one_line_naming_the_file_and_the_run_resumes(train_tree, fast_flags, tmp_path, monkeypatch):
    args = ["--data", str(train_tree), "--out", str(tmp_path), *fast_flags, "--epochs", "1", "--no-val",
            "--save-every", "2", "--name", "full"]
    run = tmp_path / "full"
    real_write, writes = checkpoint.atomic_write, []

    def no_space(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def second_last_pt_fails(path, data):  # the real atomic write, its fsync failing
        writes.append(Path(path).name)
        with monkeypatch.context() as m:
            if writes.count("last.pt") == 2:
                m.setattr(os, "fsync", no_space)
            return real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", second_last_pt_fails)
    with pytest.raises(SystemExit, match=rf"^error: cannot write {run / 'last.pt'}: No space left on device; "
                                         rf"make room .*python train.py --resume {run}`"):
        train.main(args)
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2  # the step-2 file, whole
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "last.pt", "log.jsonl"]  # no temporary left

    # a log line cut short by a full disk: named, and dropped on resume
    real_append = train.append_line

    def half_then_full(path, line):
        with open(path, "a") as fh:
            fh.write(line[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "atomic_write", real_write)
    monkeypatch.setattr(train, "append_line", half_then_full)
    with pytest.raises(SystemExit, match=rf"^error: cannot write {run / 'log.jsonl'}: No space left"):
        train.main(["--resume", str(run)])
    monkeypatch.setattr(train, "append_line", real_append)
    # on resume the log is rewritten without that line: a full disk then names log.jsonl, not config.json

    def log_fails(path, data):
        if Path(path).name == "log.jsonl":
            with monkeypatch.context() as m:
                m.setattr(os, "fsync", no_space)
                return real_write(path, data)
        return real_write(path, data)

    monkeypatch.setattr(train, "atomic_write", log_fails)
    with pytest.raises(SystemExit, match=rf"^error: cannot write {run / 'log.jsonl'}: No space left .*"
                                         rf"`python train.py --resume {run}`"):
        train.main(["--resume", str(run)])
    monkeypatch.setattr(train, "atomic_write", real_write)
    train.main(["--resume", str(run)])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 5]  # 5 steps and the epoch line
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 5 and (run / "best.pt").is_file()
