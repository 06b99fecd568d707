"""train.py on tiny synthetic crops with the tiny random ViT (CPU, fp32): the recipe, the step, exact
resume and torchrun; and its command line on bad input and on interruptions: one line naming the
problem, no traceback, the right exit status, and a run folder that is still whole (and resumable)
after."""
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
import torch.nn as nn

import _video_utils as U
import clip_vit
import train
import util.run
from util import calibration, checkpoint
from util.layouts import load_videos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory, make_tree) -> Path:
    """20 frames: 3 steps per epoch at batch 8, the last one a partial batch of 4."""
    return make_tree(tmp_path_factory.mktemp("small"), videos_per_source=2, frames=(0, 5), size=64, seed=1)


def run(tree: Path, out: Path, *args: str) -> nn.Module:
    return train.main(["--data", str(tree), "--out", str(out), *args])


def test_defaults_are_the_published_recipe_and_flags_override():
    cfg = train.parse_args([])
    assert (cfg.lr, cfg.min_lr, cfg.beta1, cfg.beta2, cfg.weight_decay) == (8e-5, 5e-5, 0.9, 0.999, 0.0)
    assert (cfg.batch_size, cfg.epochs, cfg.seed, cfg.frames) == (128, 10, 42, 32)
    assert (cfg.uniformity, cfg.alignment, cfg.slerp, cfg.norm, cfg.tuning, cfg.clip) == (0.5, 0.1, True, True, "ln", "ViT-L/14")
    assert cfg.sources == ["youtube", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"] and not cfg.balanced
    cfg = train.parse_args(["--tuning", "linear-probe", "--no-norm", "--uniformity", "0", "--alignment", "0",
                            "--no-slerp", "--sources", "youtube", "FaceSwap", "--batch-size", "64"])
    assert (cfg.tuning, cfg.norm, cfg.uniformity, cfg.alignment, cfg.slerp) == ("linear-probe", False, 0.0, 0.0, False)
    assert cfg.sources == ["youtube", "FaceSwap"] and cfg.batch_size == 64
    with pytest.raises(SystemExit):
        train.parse_args(["--tuning", "lora"])
    # cosine per step from lr to min_lr, no warm-up
    assert train.get_lr(0, 100, cfg) == cfg.lr and train.get_lr(99, 100, cfg) == pytest.approx(cfg.min_lr)


def test_no_data_names_the_preprocess_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `python train.py` with no arguments, no data/ here
    with pytest.raises(SystemExit, match=r"python preprocess.py --dataset ff\+\+ --root datasets/FaceForensics\+\+"):
        train.main([])


def fixed_batch(tree: Path):
    import data
    ds = data.FrameDataset(load_videos(tree), data.eval_transform())
    images, labels, _ = next(iter(data.make_loader(ds, 40)))
    return images, labels


def test_ln_tuning_learns_and_changes_only_layernorms_and_head(train_tree, fast_flags, tmp_path, monkeypatch):
    cfg = train.parse_args(fast_flags)
    start = clip_vit.build_detector("tiny")
    images, labels = fixed_batch(train_tree)

    def objective(detector):
        with torch.no_grad():
            features = detector.features(images)
            return train.objective(features, detector.head(features), labels, cfg)[0].item()

    torch.manual_seed(cfg.seed)  # the head train.py starts from
    start.head.reset_parameters()
    before = objective(start)
    hashed, base_sha256 = [], checkpoint.base_sha256
    monkeypatch.setattr(checkpoint, "base_sha256", lambda *a: hashed.append(1) or base_sha256(*a))
    trained = run(train_tree, tmp_path, *fast_flags, "--epochs", "2", "--no-val", "--name", "ln")
    assert len(hashed) == 1  # the frozen weights are hashed once per run, not at every save
    monkeypatch.undo()
    assert objective(trained) < before - 0.05, (before, objective(trained))

    start_sd, end_sd = start.state_dict(), trained.state_dict()
    ln_names = {f"{n}.{p}" for n, m in start.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    assert len(ln_names) == 2 * (2 + 2 * 2)  # ln_pre, ln_post, ln_1/ln_2 of 2 blocks
    for name, tensor in end_sd.items():
        if name in ln_names or name.startswith("head."):
            assert not torch.equal(tensor, start_sd[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, start_sd[name]), f"frozen {name} changed"
    run_dir = tmp_path / "ln"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "log.jsonl", "last.pt", "best.pt"}
    assert json.loads((run_dir / "config.json").read_text())["clip"] == "tiny"
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert set(ckpt["state_dict"]) == ln_names | {"head.weight", "head.bias"}
    assert ckpt["step"] == 10 and ckpt["config"]["normalize"] is True
    reloaded = clip_vit.load_detector(run_dir / "best.pt")  # evaluate.py's way in
    assert all(torch.equal(v, end_sd[k]) for k, v in reloaded.state_dict().items())


def test_bf16_run_records_its_precision_and_resumes_bitwise(small, fast_flags, tmp_path, capsys):
    """bf16 autocast on the CPU (native or not: the arithmetic is the same): config.json and every
    checkpoint record the precision, --resume keeps it without being told, and the resumed run
    ends with bitwise the weights of the uninterrupted one."""
    bf16 = (*fast_flags, "--precision", "bf16", "--epochs", "2")
    run(small, tmp_path, *bf16, "--name", "full")
    assert "precision bf16 (asked for" in capsys.readouterr().out.splitlines()[0]  # the first line
    run(small, tmp_path, *bf16, "--name", "cut", "--stop-after", "4")
    train.main(["--resume", str(tmp_path / "cut")])
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["precision"] == "bf16"
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("full", "cut"))
    assert a["config"]["precision"] == b["config"]["precision"] == "bf16" and a["step"] == b["step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # auto is recorded as what it resolved to, so that a resume elsewhere computes the same way
    run(small, tmp_path, *fast_flags, "--precision", "auto", "--epochs", "1", "--name", "auto", "--stop-after", "1")
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["precision"] in ("fp32", "bf16")


def test_interrupted_and_resumed_run_is_bitwise_identical(small, fast_flags, tmp_path):
    run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "full")
    with pytest.raises(SystemExit, match="already holds a run"):
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "full")

    def log(run_name):
        lines = [json.loads(l) for l in (tmp_path / run_name / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in lines]

    for cut in (4, 3):  # in the middle of epoch 1; exactly at the end of epoch 0
        name = f"cut{cut}"
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", name, "--stop-after", str(cut))
        stopped = torch.load(tmp_path / name / "last.pt", weights_only=True)
        assert stopped["step"] == cut
        # the val videos' scores belong to the weights that scored them: only at an epoch's end (3 steps)
        assert (calibration.KEY in stopped) == (cut == 3)
        train.main(["--resume", str(tmp_path / name)])  # config.json holds the rest
        for file in ("last.pt", "best.pt"):
            a = torch.load(tmp_path / "full" / file, weights_only=True)
            b = torch.load(tmp_path / name / file, weights_only=True)
            assert a["step"] == b["step"] and a[calibration.KEY] == b[calibration.KEY]
            for k in a["state_dict"]:
                assert torch.equal(a["state_dict"][k], b["state_dict"][k]), (cut, file, k)
        a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True)["optimizer"]["state"] for r in ("full", name))
        assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
        assert log("full") == log(name)  # every logged loss, lr and val AUROC the same


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(small, fast_flags, tmp_path, monkeypatch):
    calls = []
    objective = train.objective

    def poisoned(features, logits, labels, cfg):
        loss, parts = objective(features, logits, labels, cfg)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 4 else loss), parts

    monkeypatch.setattr(train, "objective", poisoned)
    # the 4th step's loss is NaN; last.pt was saved after step 2 (--save-every) and 3 (epoch end)
    with pytest.raises(SystemExit, match=r"loss is nan at step 4 .*Last good checkpoint: .*last.pt \(step 3\)"):
        run(small, tmp_path, *fast_flags, "--epochs", "2", "--name", "nan", "--save-every", "2", "--no-val")
    ckpt = torch.load(tmp_path / "nan" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


DDP_SCRIPT = """
import os, signal, sys
import torch
import torch.distributed as dist
sys.path.insert(0, {root!r})
import train

dist.init_process_group("gloo")  # once for the three runs: train.py uses a process group that is there
rank, out = dist.get_rank(), os.path.dirname(os.path.abspath(__file__))
detector = train.main(sys.argv[1:] + ["--name", "full"])
torch.save(detector.state_dict(), os.path.join(out, f"full{{rank}}.pt"))

objective, calls = train.objective, []
def signalled(*args):  # SIGTERM to rank 1 alone, during the 3rd step's forward
    calls.append(1)
    if rank == 1 and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return objective(*args)
train.objective = signalled
try:
    train.main(sys.argv[1:] + ["--name", "cut"])
except SystemExit as e:
    print(f"rank {{rank}} exit {{e.code}}", flush=True)
train.objective = objective
detector = train.main(["--resume", os.path.join(out, "cut")])
torch.save(detector.state_dict(), os.path.join(out, f"cut{{rank}}.pt"))
dist.destroy_process_group()
"""


def test_torchrun_two_processes_train_the_single_process_recipe_and_stop_and_resume_together(small, fast_flags, tmp_path):
    # 10 frames at batch 3: global batches 3, 3, 3, 1 -> shares 2+1, 2+1, 2+1 and 1+0 (an empty share)
    args = ["--data", str(small), "--out", str(tmp_path), *fast_flags, "--batch-size", "3", "--frames", "1",
            "--epochs", "2", "--no-val"]
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) x batch 2/1, 4 steps/epoch" in result.stdout  # the effective batch stays 3
    # rank 1 alone was signalled; both stopped before the 3rd update, last.pt holds step 2
    assert "rank 0 exit 143" in result.stdout and "rank 1 exit 143" in result.stdout
    assert (f"stopped by SIGTERM at step 2/8; {tmp_path / 'cut' / 'last.pt'} holds it. Continue with: "
            f"torchrun --nproc_per_node=2 train.py --resume {tmp_path / 'cut'}") in result.stderr
    full0, full1, cut0, cut1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True)
                                for r in ("full0", "full1", "cut0", "cut1"))
    for k in full0:  # the processes agree, and the resumed run is exact
        assert torch.equal(full0[k], full1[k]) and torch.equal(full0[k], cut0[k]) and torch.equal(cut0[k], cut1[k]), k
    assert torch.load(tmp_path / "full" / "last.pt", weights_only=True)["step"] == 8
    # one process, the same recipe: the same weights up to the order of float sums
    single = run(small, tmp_path, *args[4:], "--name", "single").state_dict()
    start = clip_vit.build_detector("tiny").state_dict()
    for k in full0:
        assert (full0[k] - single[k]).norm() <= 1e-5 * single[k].norm(), (k, (full0[k] - single[k]).norm())
    assert not torch.equal(single["visual.ln_post.weight"], start["visual.ln_post.weight"])


def test_vit_l14_checkpoint_is_under_1_mb(tmp_path):
    with torch.device("meta"):
        visual = clip_vit.VisionTransformer(224, 14, 1024, 24, 16, 768)
    visual = visual.to_empty(device="cpu")  # real memory, no random init of 304M weights
    for p in visual.parameters():
        p.data.zero_()
    detector = clip_vit.DeepfakeDetector(visual)
    assert clip_vit.set_trainable(detector, "ln") == 102_400 + 2_050  # 50 LayerNorms (102,400) + Linear(1024, 2)
    path = tmp_path / "best.pt"
    util.run.RunFolder(tmp_path).save("best.pt", detector, train.checkpoint_config(train.TrainConfig()), step=0)
    assert path.stat().st_size < 1_000_000, path.stat().st_size
    ckpt = checkpoint.load_checkpoint(path)  # weights_only=True
    assert sum(t.numel() for t in ckpt["state_dict"].values()) == 104_450
    assert ckpt["config"]["clip"] == "ViT-L/14" and ckpt["config"]["normalize"] is True


@pytest.fixture(scope="module")
def finished(train_tree, fast_flags, tmp_path_factory) -> Path:
    """A finished one-epoch run (config.json, log.jsonl, last.pt, best.pt)."""
    out = tmp_path_factory.mktemp("runs")
    train.main(["--data", str(train_tree), "--out", str(out), *fast_flags, "--epochs", "1", "--name", "done"])
    return out / "done"


def test_checkpoints_carry_the_val_videos_scores_as_the_reference(finished, train_tree):
    """best.pt and last.pt written after validation hold the val videos' scores of their weights,
    in plain types (weights_only=True loads them): the reference evaluate.py reads a verdict against."""
    import data
    val = load_videos(train_tree, "ff++", "val")
    detector = clip_vit.load_detector(finished / "best.pt")
    video_p = data.video_scores([v.path for v in val for _ in v.frames],
                                data.predict(detector, [f for v in val for f in v.frames], torch.device("cpu")))
    for name in ("best.pt", "last.pt"):
        entry = torch.load(finished / name, weights_only=True)[calibration.KEY]
        assert entry["format"] == calibration.FORMAT and entry["source"] == "FF++ val"
        for part, label in (("real", 0), ("fake", 1)):
            assert entry[part] == pytest.approx(sorted(video_p[v.path] for v in val if v.label == label), abs=1e-6)
    reference = calibration.load_reference(finished / "best.pt")
    assert reference.describe() == f"reference: 2 real and 8 fake FF++ val videos (stored in {finished / 'best.pt'})"


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
    real_append = util.run.append_line

    def half_then_full(path, line):
        with open(path, "a") as fh:
            fh.write(line[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "atomic_write", real_write)
    monkeypatch.setattr(util.run, "append_line", half_then_full)
    with pytest.raises(SystemExit, match=rf"^error: cannot write {run / 'log.jsonl'}: No space left"):
        train.main(["--resume", str(run)])
    monkeypatch.setattr(util.run, "append_line", real_append)
    # on resume the log is rewritten without that line: a full disk then names log.jsonl, not config.json

    def log_fails(path, data):
        if Path(path).name == "log.jsonl":
            with monkeypatch.context() as m:
                m.setattr(os, "fsync", no_space)
                return real_write(path, data)
        return real_write(path, data)

    monkeypatch.setattr(util.run, "atomic_write", log_fails)
    with pytest.raises(SystemExit, match=rf"^error: cannot write {run / 'log.jsonl'}: No space left .*"
                                         rf"`python train.py --resume {run}`"):
        train.main(["--resume", str(run)])
    monkeypatch.setattr(util.run, "atomic_write", real_write)
    train.main(["--resume", str(run)])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 5]  # 5 steps and the epoch line
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 5 and (run / "best.pt").is_file()
